"""Advanced → Context planes: a 2D model of a z-stack that reads each plane with its neighbours."""
import numpy as np
from qtpy.QtCore import Qt

from napari_unet._napari._store import STORE
from napari_unet._napari._uncertainty import uncertainty_name
from napari_unet.synthetic import make_nuclei

from .conftest import click_canvas, click_checkbox, messages, set_tiny, wait_until

LEFT = Qt.MouseButton.LeftButton


def test_context_planes_train_segment_click_and_continue(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    image, labels = make_nuclei((6, 128, 128), seed=0, spacing=(3, 1, 1))
    stack = viewer.add_image(image, name="zstack")
    truth = viewer.add_labels(labels, name="zstack masks")
    row = train.rows()[0]
    row.image.value, row.labels.value = stack, truth
    train.mode.value = "instance"
    set_tiny(train, budget=4.0)
    box = train.advanced.context_planes
    assert box.value == 0 and box.native.text() == "off" and box.enabled  # "off" is what the user reads
    train.advanced.dims.value = 3
    assert not box.enabled  # a 3D model sees its neighbouring planes already
    train.advanced.dims.value = 2
    assert box.enabled
    box.value = 2
    qtbot.mouseClick(train.train_button.native, LEFT)
    wait_until(qtbot, lambda: not train.running, timeout=60)
    model = STORE.model
    assert model is not None and model.config.context_planes == 2, messages(notifications)
    assert "context planes: each plane" in model.describe()

    # the uncertainty view of the displayed plane reads its neighbours too
    viewer.dims.set_point(0, 2)
    click_checkbox(qtbot, train.show_hesitation)
    name = uncertainty_name("zstack")
    wait_until(qtbot, lambda: name in viewer.layers and train.uncertainty.job is None, timeout=60)
    assert viewer.layers[name].data.shape == (1, 128, 128) and viewer.layers[name].translate[0] == 2
    click_checkbox(qtbot, train.show_hesitation)

    segment.image.value = stack
    click_checkbox(qtbot, segment.link_planes)
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: not segment.running, timeout=60)
    assert viewer.layers["zstack segmentation"].data.shape == image.shape

    # a click reads the displayed plane with its neighbours (the image itself has one channel)
    viewer.dims.set_point(0, 3)
    click_checkbox(qtbot, segment.click_to_segment)
    click_canvas(qtbot, viewer, (64, 64))
    wait_until(qtbot, lambda: not segment.clicking, timeout=30)
    click_checkbox(qtbot, segment.click_to_segment)

    # continuing keeps the network's context planes, whatever the box says now
    box.value = 1
    train.continue_training.value = True
    qtbot.mouseClick(train.train_button.native, LEFT)
    wait_until(qtbot, lambda: not train.running, timeout=60)
    assert STORE.model is not model and STORE.model.config.context_planes == 2
    assert not messages(notifications, "error"), messages(notifications, "error")
