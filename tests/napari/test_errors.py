"""Bad input, unsafe model files, layers removed mid-run and closing the viewer while work runs."""
import os
import pickle
import time

import dask.array as da
import numpy as np
import torch
from qtpy.QtCore import Qt

from napari_unet import save_model
from napari_unet._napari._store import STORE

from .conftest import messages, open_lazy_stack, random_model, set_tiny, start_long_training, wait_until

LEFT = Qt.MouseButton.LeftButton


class Evil:
    """Unpickling this would run a shell command creating a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_input_is_reported_and_nothing_starts(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    image = viewer.layers["nuclei"]
    set_tiny(train, budget=1.0)

    # no annotation at all: the core's message reaches the user
    empty = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="empty")
    train.rows()[0].labels.value = empty
    qtbot.mouseClick(train.train_button.native, LEFT)
    wait_until(qtbot, lambda: not train.running, timeout=30)
    assert any("no annotation at all" in m for m in messages(notifications, "error"))
    assert STORE.model is None and train.train_button.text == "Train"

    # labels that do not match the image
    small = viewer.add_labels(np.ones((10, 10), np.uint8), name="small")
    train.reset_choices()
    train.rows()[0].labels.value = small
    notifications.clear()
    qtbot.mouseClick(train.train_button.native, LEFT)
    wait_until(qtbot, lambda: not train.running, timeout=30)
    assert any("must match" in m for m in messages(notifications, "error"))

    # no labels layer chosen. (Removing layers while an error notification fades in crashes napari
    # 0.9.2 in OpenGL under Xvfb, with or without this plugin: let the notifications settle first.)
    qtbot.wait(500)
    for name in ("small", "empty", "nuclei annotations"):
        viewer.layers.remove(name)
        qtbot.wait(20)
    notifications.clear()
    qtbot.mouseClick(train.train_button.native, LEFT)
    assert not train.running
    assert any("Labels layer" in m for m in messages(notifications, "error"))

    # Segment and click without a model
    notifications.clear()
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    assert not segment.running and "nuclei segmentation" not in viewer.layers
    assert any("no model" in m for m in messages(notifications, "error"))

    # a semantic model cannot be continued in instance mode
    STORE.set(random_model(), "test")
    viewer.add_labels(np.zeros(image.data.shape, np.int32), name="masks").data[100:120, 100:120] = 1
    train.reset_choices()
    train.rows()[0].labels.value = viewer.layers["masks"]
    train.mode.value = "instance"
    train.continue_training.value = True
    notifications.clear()
    qtbot.mouseClick(train.train_button.native, LEFT)
    wait_until(qtbot, lambda: not train.running, timeout=30)
    assert any("semantic" in m and "mode" in m for m in messages(notifications, "error"))

    # a model that wants 3 channels on a grey image: refused before any layer is made
    STORE.set(random_model(in_channels=3), "test")
    notifications.clear()
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    assert not segment.running and "nuclei segmentation" not in viewer.layers
    assert any("3 channels" in m for m in messages(notifications, "error"))


def test_unsafe_or_foreign_model_files_are_refused(plugin_viewer, qtbot, notifications, tmp_path, monkeypatch):
    viewer, train, segment = plugin_viewer
    marker = tmp_path / "pwned"
    files = {}
    files["evil.pt"] = tmp_path / "evil.pt"
    torch.save({"format": "napari-unet-model", "payload": Evil(marker)}, files["evil.pt"])
    files["evil.pkl"] = tmp_path / "evil.pkl"
    files["evil.pkl"].write_bytes(pickle.dumps(Evil(marker)))
    files["checkpoint.pt"] = tmp_path / "checkpoint.pt"
    torch.save(torch.nn.Conv2d(1, 1, 3).state_dict(), files["checkpoint.pt"])
    files["garbage.pt"] = tmp_path / "garbage.pt"
    files["garbage.pt"].write_bytes(os.urandom(2000))
    expected = {"evil.pt": "executable", "evil.pkl": "pickle", "checkpoint.pt": "not a napari-unet model",
                "garbage.pt": "not a napari-unet model"}
    chosen = {}
    monkeypatch.setattr("napari_unet._napari._model_files.ask_open_model_path", lambda parent=None: chosen["path"])
    for name, path in files.items():
        chosen["path"] = str(path)
        notifications.clear()
        qtbot.mouseClick(train.load_button.native, LEFT)
        errors = messages(notifications, "error")
        assert len(errors) == 1 and expected[name] in errors[0], (name, errors)
        assert STORE.model is None
    # the Segment widget's model file picker refuses them the same way
    segment.model_source.value = "file"
    assert segment.model_file.visible
    notifications.clear()
    segment.model_file.value = files["evil.pt"]
    assert any("executable" in m for m in messages(notifications, "error"))
    assert segment.current_model() is None
    assert not marker.exists()  # nothing from the files ran
    good = tmp_path / "good.pt"
    save_model(random_model(), good)
    segment.model_file.value = good
    assert segment.current_model() is not None and "good.pt" in segment.model_info.value


def test_removing_a_layer_ends_the_run(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    start_long_training(qtbot, train, steps=3)
    t0 = time.perf_counter()
    viewer.layers.remove("nuclei annotations")
    wait_until(qtbot, lambda: not train.running, timeout=10)
    assert time.perf_counter() - t0 < 2
    assert any("'nuclei annotations' was removed" in m for m in messages(notifications, "info"))
    assert STORE.model is not None  # the model so far is kept

    # a long segmentation of a lazy stack, stopped by removing its image
    stack = da.from_array(np.tile(viewer.layers["nuclei"].data, (12, 1, 1)), chunks=(1, 384, 384))
    viewer.add_image(stack, name="stack")
    segment.reset_choices()
    segment.image.value = viewer.layers["stack"]
    segment.tile_size.value = 128
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    assert segment.segment_button.text == "Cancel"
    wait_until(qtbot, lambda: segment.progress.value > 0, timeout=60)
    viewer.layers.remove("stack")
    wait_until(qtbot, lambda: not segment.running, timeout=10)
    assert any("'stack' was removed" in m for m in messages(notifications, "info"))
    assert segment.segment_button.text == "Segment" and segment.progress.value < 100
    assert not messages(notifications, "error")


def test_cancel_a_segmentation(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    open_lazy_stack(viewer, segment, planes=12)
    segment.tile_size.value = 128
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: segment.progress.value > 0, timeout=60)
    qtbot.mouseClick(segment.segment_button.native, LEFT)  # "Cancel"
    wait_until(qtbot, lambda: not segment.running, timeout=10)
    assert segment.progress.value < 100
    assert any("cancelled" in m and "part done" in m for m in messages(notifications, "info"))

    # the part done can be used as annotations: what the model never looked at stays "not annotated"
    seg = np.asarray(viewer.layers["stack segmentation"].data)
    qtbot.mouseClick(segment.use_as_annotations.native, LEFT)
    wait_until(qtbot, lambda: "stack annotations (corrected)" in viewer.layers, timeout=20)
    ann = np.asarray(viewer.layers["stack annotations (corrected)"].data)
    assert (ann[seg > 0] >= 2).all()  # objects found keep their class
    assert (ann == 1).any()  # background where tiles were segmented
    assert not ann[-1].any()  # the last plane was never reached: not taught as background
    assert any("not annotated" in m for m in messages(notifications, "info"))


def test_a_full_disk_keeps_the_previous_segmentation(plugin_viewer, qtbot, notifications, monkeypatch):
    import tempfile
    from pathlib import Path

    from napari_unet._napari import _segment_widget

    viewer, train, segment = plugin_viewer
    open_lazy_stack(viewer, segment, planes=3)
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: not segment.running, timeout=60)
    layer = viewer.layers["stack segmentation"]
    layer.data[0, :20, :20] = 7  # a corrected object the user would hate to lose
    before = np.asarray(layer.data).copy()

    make_output = _segment_widget.make_output

    def no_room_for_probabilities(shape, dtype, lazy, prefix="segmentation"):
        if prefix == "probabilities":
            raise OSError(28, "No space left on device")
        return make_output(shape, dtype, lazy, prefix)

    stores = lambda: set(Path(tempfile.gettempdir()).glob("napari-unet-*"))  # noqa: E731
    stores_before = stores()
    monkeypatch.setattr(_segment_widget, "make_output", no_room_for_probabilities)
    segment.show_probabilities.value = True
    notifications.clear()
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    assert not segment.running and segment.segment_button.text == "Segment"
    assert any("No space left on device" in m for m in messages(notifications, "error"))
    assert viewer.layers["stack segmentation"] is layer
    np.testing.assert_array_equal(np.asarray(layer.data), before)  # the last result is still there
    assert stores() == stores_before  # the new labels store made for this run was removed again


def test_closing_the_window_while_training_neither_hangs_nor_crashes(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    job = start_long_training(qtbot, train, steps=3)
    segment.click_to_segment.value = True
    assert len(viewer.mouse_drag_callbacks) >= 1
    t0 = time.perf_counter()
    viewer.window.close()  # closes the Qt window (as its close button does) and leaves the layers alone
    qtbot.waitUntil(job.ended.is_set, timeout=10000)
    took = time.perf_counter() - t0
    print(f"\nclose while training: worker ended {1000 * took:.0f} ms after the close")
    assert took < 5
    assert not segment.clicks.listening
    assert not messages(notifications, "error")


def test_closing_a_dock_widget_ends_its_work(plugin_viewer, qtbot, notifications):
    import gc

    from qtpy.QtWidgets import QDockWidget

    viewer, train, segment = plugin_viewer
    job = start_long_training(qtbot, train, steps=2)
    dock = next(d for d in viewer.window._qt_window.findChildren(QDockWidget) if "Train UNet" in d.windowTitle())
    t0 = time.perf_counter()
    qtbot.mouseClick(dock.title.close_button, LEFT)  # the panel's X
    del train, dock
    gc.collect()
    qtbot.waitUntil(job.ended.is_set, timeout=10000)  # training does not run on unseen for its whole budget
    print(f"\nclosing the Train dock: worker ended {1000 * (time.perf_counter() - t0):.0f} ms after the click")

    # closing Segment with UNet takes its click handler off the canvas
    segment.click_to_segment.value = True
    callbacks = len(viewer.mouse_drag_callbacks)
    dock = next(d for d in viewer.window._qt_window.findChildren(QDockWidget) if "Segment with UNet" in d.windowTitle())
    qtbot.mouseClick(dock.title.close_button, LEFT)
    assert len(viewer.mouse_drag_callbacks) == callbacks - 1
    assert not messages(notifications, "error")


def test_a_click_whose_image_is_removed_meanwhile_adds_nothing(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    STORE.set(random_model(), "test")
    image = viewer.layers["nuclei"]
    viewer.dims.ndisplay = 2
    job = segment.segment_at(image.data_to_world((100, 100)))
    assert job is not None and job.kind == "click" and segment.clicking
    assert segment.runner.running("click") == [job]  # tracked (and stoppable) like training and segmenting
    viewer.layers.remove("nuclei annotations")  # a layer the click does not use: it goes on
    assert not job.stopped
    viewer.layers.remove(image)  # before its result reaches the GUI thread
    assert job.stopped
    wait_until(qtbot, lambda: not segment.clicking, timeout=20)
    assert job.ended.is_set() and not segment.runner.running()
    assert "nuclei segmentation" not in viewer.layers  # the object was not added
    assert not messages(notifications, "error")


def test_an_unexpected_error_at_start_is_a_notification_and_changes_nothing(plugin_viewer, qtbot, notifications,
                                                                            monkeypatch, caplog):
    """A bug (not a bad input) while starting Segment: shown with its type, logged, the viewer unchanged."""
    import importlib

    predict_package = importlib.import_module("napari_unet.predict")  # (napari_unet.predict is also a function)
    viewer, _, segment = plugin_viewer
    STORE.set(random_model(), "test")
    layers_before = [layer.name for layer in viewer.layers]

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(predict_package, "plan_prediction", broken)
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    assert any("could not start (RuntimeError: something nobody expected)" in m
               for m in messages(notifications, "error"))
    assert "something nobody expected" in caplog.text  # logged with its traceback, not swallowed
    assert [layer.name for layer in viewer.layers] == layers_before and not segment.running
    assert segment.segment_button.text == "Segment"


def test_closing_segment_during_a_new_run_keeps_the_previous_result_alone(plugin_viewer, qtbot, notifications):
    import tempfile
    from pathlib import Path

    from qtpy.QtWidgets import QDockWidget

    viewer, train, segment = plugin_viewer
    open_lazy_stack(viewer, segment, planes=12)
    segment.tile_size.value = 128
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: not segment.running, timeout=120)
    previous = viewer.layers["stack segmentation"]
    before = np.asarray(previous.data).copy()
    stores = lambda: set(Path(tempfile.gettempdir()).glob("napari-unet-*"))  # noqa: E731
    stores_before = stores()

    qtbot.mouseClick(segment.segment_button.native, LEFT)  # again: a new layer shows the run beside the first
    wait_until(qtbot, lambda: segment.progress.value > 0, timeout=60)
    assert len([la for la in viewer.layers if la.name.startswith("stack segmentation")]) == 2
    job = segment.job
    dock = next(d for d in viewer.window._qt_window.findChildren(QDockWidget) if "Segment with UNet" in d.windowTitle())
    qtbot.mouseClick(dock.title.close_button, LEFT)  # the panel's X, mid-run
    qtbot.waitUntil(job.ended.is_set, timeout=10000)
    assert [la.name for la in viewer.layers if la.name.startswith("stack segmentation")] == [previous.name]
    assert viewer.layers[previous.name] is previous and previous.editable
    np.testing.assert_array_equal(np.asarray(previous.data), before)
    assert stores() == stores_before  # the half-written labels of the stopped run are not left on disk
    assert not messages(notifications, "error")
