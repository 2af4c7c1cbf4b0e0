"""Advanced → Background window: a model that subtracts the local background, trained, segmenting, fine-tuned."""
from qtpy.QtCore import Qt

from napari_unet._napari._store import STORE

from .conftest import messages, set_tiny, wait_until

LEFT = Qt.MouseButton.LeftButton


def test_background_window_trains_a_model_that_keeps_it_when_continued(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    set_tiny(train, budget=5.0)
    assert train.advanced.background.value == 0 and train.advanced.background.native.text() == "off"  # what the user reads
    train.advanced.background.value = 41
    qtbot.mouseClick(train.train_button.native, LEFT)
    wait_until(qtbot, lambda: not train.running, timeout=60)
    model = STORE.model
    assert model is not None and model.config.background == 41, notifications
    assert "background: subtracted" in model.describe()

    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: not segment.running, timeout=60)
    assert viewer.layers["nuclei segmentation"].data.shape == viewer.layers["nuclei"].data.shape

    # continuing keeps the network's window, whatever the box says now (it is part of the network)
    train.advanced.background.value = 21
    train.continue_training.value = True
    qtbot.mouseClick(train.train_button.native, LEFT)
    wait_until(qtbot, lambda: not train.running, timeout=60)
    assert STORE.model is not model and STORE.model.config.background == 41
    assert not messages(notifications, "error")
