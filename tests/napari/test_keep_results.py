"""Re-running Segment never destroys what the user has: their own layers, corrections, the last result."""
import numpy as np
from qtpy.QtCore import Qt

from napari_unet._napari._store import STORE

from .conftest import messages, open_lazy_stack, random_model, wait_until

LEFT = Qt.MouseButton.LeftButton


def _segment(qtbot, segment):
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: not segment.running, timeout=120)


def test_a_users_layer_of_that_name_is_never_taken_over(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    STORE.set(random_model(), "test")
    mine = viewer.add_labels(np.full(viewer.layers["nuclei"].data.shape, 3, np.uint8), name="nuclei segmentation")
    _segment(qtbot, segment)
    assert (np.asarray(mine.data) == 3).all() and mine.name == "nuclei segmentation"
    assert segment.output_layer() is not mine and segment.output_layer() in viewer.layers


def test_a_hand_corrected_segmentation_is_kept_and_the_new_result_goes_to_a_new_layer(plugin_viewer, qtbot,
                                                                                     notifications):
    viewer, train, segment = plugin_viewer
    STORE.set(random_model(), "test")
    _segment(qtbot, segment)
    first = segment.output_layer()
    first.selected_label = 42
    first.paint((10, 10), 42)  # the user's correction, through the brush
    corrected = np.asarray(first.data).copy()
    STORE.set(random_model(seed=1), "test")  # e.g. after retraining
    _segment(qtbot, segment)
    np.testing.assert_array_equal(np.asarray(first.data), corrected)
    assert segment.output_layer() is not first
    assert any("edited by hand" in m for m in messages(notifications, "info"))


def test_a_big_result_is_replaced_only_once_the_new_one_is_complete(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    open_lazy_stack(viewer, segment, planes=6)
    segment.tile_size.value = 128
    _segment(qtbot, segment)
    layer = segment.output_layer()
    layer.data[0, :5, :5] = 9  # (an untrained model finds nothing: give the last result some objects)
    previous = np.asarray(layer.data).copy()

    STORE.set(random_model(seed=3), "another model")
    qtbot.mouseClick(segment.segment_button.native, LEFT)  # a run that gets cancelled
    wait_until(qtbot, lambda: segment.progress.value > 0, timeout=60)
    running = [lay for lay in viewer.layers if lay.name.startswith("stack segmentation") and lay is not layer]
    assert len(running) == 1 and not running[0].editable  # the new result shows in a locked layer
    np.testing.assert_array_equal(np.asarray(layer.data), previous)  # the last result is still there
    qtbot.mouseClick(segment.segment_button.native, LEFT)  # "Cancel"
    wait_until(qtbot, lambda: not segment.running, timeout=20)
    assert running[0] not in viewer.layers and segment.output_layer() is layer
    np.testing.assert_array_equal(np.asarray(layer.data), previous)
    assert any("is unchanged" in m for m in messages(notifications, "info"))

    _segment(qtbot, segment)  # one that completes: its result takes the previous one's place
    assert segment.output_layer() is layer and layer.editable
    assert [lay.name for lay in viewer.layers if lay.name.startswith("stack segmentation")] == [layer.name]
    assert not np.array_equal(np.asarray(layer.data), previous)
    assert not messages(notifications, "error")


def test_use_as_annotations_waits_for_a_running_segmentation(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    open_lazy_stack(viewer, segment, planes=8)
    segment.tile_size.value = 128
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: segment.progress.value > 0, timeout=60)
    qtbot.mouseClick(segment.use_as_annotations.native, LEFT)
    assert any("a segmentation is running" in m for m in messages(notifications, "error"))
    assert not any("(corrected)" in lay.name for lay in viewer.layers)
    qtbot.mouseClick(segment.segment_button.native, LEFT)  # "Cancel"
    wait_until(qtbot, lambda: not segment.running, timeout=20)
