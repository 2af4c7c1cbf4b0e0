"""Live training in a real viewer: a stroke painted while Live runs is trained on, the preview follows."""
import numpy as np
from qtpy.QtCore import Qt

from napari_unet._napari._live import preview_name
from napari_unet._napari._store import STORE

from .conftest import click_checkbox, set_tiny, wait_until

LEFT = Qt.MouseButton.LeftButton


def test_live_training_trains_on_a_new_stroke_and_refreshes_the_preview(plugin_viewer, qtbot, notifications):
    viewer, train, _ = plugin_viewer
    strokes = viewer.layers["nuclei annotations"]
    set_tiny(train)
    click_checkbox(qtbot, train.live)
    assert train.live.value and not train.time_budget.enabled
    qtbot.mouseClick(train.train_button.native, LEFT)
    assert train.train_button.text == "Stop"
    name = preview_name("nuclei")
    assert name in viewer.layers  # made at once, empty
    wait_until(qtbot, lambda: len(train._live.preview_times) > 0, timeout=120)
    preview = viewer.layers[name]
    layers = list(viewer.layers)
    assert layers.index(preview) < layers.index(strokes) and not preview.editable  # below, not editable
    assert STORE.model is not None and STORE.source == "live training"  # Segment / Save use the live model
    first = preview.data.copy()
    assert first.any()  # the model's first segmentation of the visible part

    # paint background strokes where nothing was painted, through the layer's API
    free = np.argwhere(strokes.data[40:-40, 40:-40] == 0) + 40
    strokes.brush_size = 9
    session = train._live
    for version, spot in ((1, free[0]), (2, free[-1])):
        strokes.paint(tuple(int(c) for c in spot), 1)
        assert strokes.data[tuple(spot)] == 1
        wait_until(qtbot, lambda: any(t.version >= version for t in session.taken), timeout=120)
    painted = strokes.data.copy()
    first, second = session.taken[0], session.taken[-1]
    assert second.version == 2 and second.latency > 0
    assert second.annotated_px > first.annotated_px  # the second stroke joined the training set
    n_previews = len(session.preview_times)
    wait_until(qtbot, lambda: len(session.preview_times) > n_previews + 1, timeout=120)
    assert not np.array_equal(preview.data, first)  # the model moved on: the preview shows it

    qtbot.mouseClick(train.train_button.native, LEFT)  # Stop
    wait_until(qtbot, lambda: not train.running, timeout=60)
    assert STORE.model is not None and STORE.source == "trained here"
    np.testing.assert_array_equal(strokes.data, painted)  # the user's layer is only what was painted
    assert train.train_button.text == "Train" and train._live is None
    assert not [m for s, m in notifications if "error" in s]
