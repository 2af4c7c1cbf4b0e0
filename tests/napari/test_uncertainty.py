"""The uncertainty view in a real viewer: ticked in Train UNet, it shows where the model hesitates."""
import numpy as np
from qtpy.QtCore import Qt

from napari_unet._napari._store import STORE
from napari_unet._napari._uncertainty import uncertainty_name
from napari_unet.uncertainty import predict_hesitation

from .conftest import click_checkbox, random_model, set_tiny, wait_until

LEFT = Qt.MouseButton.LeftButton


def _layer(viewer, name):
    return viewer.layers[name] if name in viewer.layers else None


def test_ticking_the_view_shows_the_models_hesitation_below_the_annotations_and_follows_the_model(
        plugin_viewer, qtbot, notifications):
    viewer, train, _ = plugin_viewer
    image, strokes = viewer.layers["nuclei"], viewer.layers["nuclei annotations"]
    name = uncertainty_name("nuclei")
    click_checkbox(qtbot, train.show_hesitation)  # no model yet: nothing to show, and it says so
    assert train.show_hesitation.value and name not in viewer.layers
    assert "train or load" in train.status.value

    first_model = random_model(seed=0)
    STORE.set(first_model, "test")  # as when a training ends or a model file is loaded
    wait_until(qtbot, lambda: _layer(viewer, name) is not None and train.uncertainty.job is None, timeout=60)
    layer = viewer.layers[name]
    assert layer.data.shape == image.data.shape and layer.data.dtype == np.float32
    np.testing.assert_allclose(layer.data, predict_hesitation(first_model, image.data), atol=1e-5)
    layers = list(viewer.layers)
    assert layers.index(image) < layers.index(layer) < layers.index(strokes)  # over the image, under the strokes
    assert viewer.layers.selection.active is strokes  # painting goes on in the annotations
    assert not layer.editable and layer.blending == "additive" and layer.colormap.name == "inferno"
    assert tuple(layer.contrast_limits) == (0.0, 1.0)

    shown = layer.data.copy()
    STORE.set(random_model(seed=1), "test")  # another model: the map follows
    wait_until(qtbot, lambda: train.uncertainty.job is None and not np.array_equal(layer.data, shown), timeout=60)
    assert [x.name for x in viewer.layers].count(name) == 1  # refreshed, not added again

    click_checkbox(qtbot, train.show_hesitation)  # off: hidden, kept
    assert not train.show_hesitation.value and not layer.visible and name in viewer.layers
    assert not [m for s, m in notifications if "error" in s]


def test_on_a_stack_the_view_covers_the_displayed_plane(plugin_viewer, qtbot, notifications):
    viewer, train, _ = plugin_viewer
    plane = viewer.layers["nuclei"].data
    stack = viewer.add_image(np.stack([plane, plane[::-1], plane[:, ::-1]]), name="stack")
    train.rows()[0].image.value = stack
    viewer.dims.set_point(0, 2)
    model = random_model(seed=0)
    STORE.set(model, "test")
    click_checkbox(qtbot, train.show_hesitation)
    name = uncertainty_name("stack")
    wait_until(qtbot, lambda: _layer(viewer, name) is not None and train.uncertainty.job is None, timeout=60)
    layer = viewer.layers[name]
    assert layer.data.shape == (1,) + plane.shape and layer.translate[0] == 2  # drawn on plane 2
    np.testing.assert_allclose(layer.data[0], predict_hesitation(model, plane[:, ::-1]), atol=1e-5)
    assert not [m for s, m in notifications if "error" in s]
    train.rows()[0].image.value = viewer.layers["nuclei"]
    STORE.set(random_model(dims=3), "test")  # a 3D model cannot map a 2D image: said, nothing drawn
    wait_until(qtbot, lambda: any("spatial axes" in m for s, m in notifications if "error" in s), timeout=30)
    assert uncertainty_name("nuclei") not in viewer.layers


def test_in_live_mode_each_preview_brings_the_map_of_the_window_on_screen(plugin_viewer, qtbot, notifications):
    viewer, train, _ = plugin_viewer
    set_tiny(train)
    click_checkbox(qtbot, train.live)
    click_checkbox(qtbot, train.show_hesitation)
    qtbot.mouseClick(train.train_button.native, LEFT)
    session = train._live
    name = uncertainty_name("nuclei")
    wait_until(qtbot, lambda: len(session.preview_times) > 0 and _layer(viewer, name) is not None, timeout=120)
    layer, preview = viewer.layers[name], viewer.layers["nuclei preview"]
    assert layer.data.shape == preview.data.shape  # the same window as the preview...
    np.testing.assert_array_equal(layer.translate, preview.translate)
    assert 0.0 <= layer.data.min() and layer.data.max() <= 1.0
    qtbot.mouseClick(train.train_button.native, LEFT)  # Stop
    wait_until(qtbot, lambda: not train.running, timeout=60)
    assert not [m for s, m in notifications if "error" in s]
