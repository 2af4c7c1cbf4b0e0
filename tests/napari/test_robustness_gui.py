"""A new user's mistakes in a real viewer: each test is a bug that was found and fixed
(docs/robustness-gui.md)."""
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QDockWidget

from napari_unet._napari._live import LiveSession

from .conftest import click_checkbox, messages, open_lazy_stack, set_tiny, wait_until

LEFT = Qt.MouseButton.LeftButton


def _close_dock(qtbot, viewer, title):
    dock = next(d for d in viewer.window._qt_window.findChildren(QDockWidget) if title in d.windowTitle())
    qtbot.mouseClick(dock.title.close_button, LEFT)  # the panel's X


def _start_live(qtbot, train, steps=2):
    set_tiny(train)
    click_checkbox(qtbot, train.live)
    qtbot.mouseClick(train.train_button.native, LEFT)
    wait_until(qtbot, lambda: len(train.loss_plot.train) >= steps, timeout=60)
    return train._live


def test_a_new_class_painted_in_live_mode_is_a_warning_and_live_cannot_be_unticked(plugin_viewer, qtbot,
                                                                                  notifications):
    viewer, train, _ = plugin_viewer
    session = _start_live(qtbot, train)
    assert not train.live.enabled  # a running live run stays live: the checkbox does not pretend otherwise
    strokes = viewer.layers["nuclei annotations"]
    strokes.paint((60, 60), 5)  # label 5: not a class of this run
    wait_until(qtbot, lambda: any("label 5 is not a class" in m for m in messages(notifications, "warning")),
               timeout=30)
    assert session.version == 1
    qtbot.mouseClick(train.train_button.native, LEFT)  # Stop
    wait_until(qtbot, lambda: not train.running, timeout=60)
    assert train.live.enabled and train.live.value
    assert not messages(notifications, "error")


def test_closing_train_unet_during_live_mode_stops_watching_the_annotations(plugin_viewer, qtbot, notifications):
    viewer, train, _ = plugin_viewer
    session = _start_live(qtbot, train)
    job = train.job
    _close_dock(qtbot, viewer, "Train UNet")
    qtbot.waitUntil(job.ended.is_set, timeout=10000)
    assert not session._poll.isActive() and not session._callbacks
    strokes = viewer.layers["nuclei annotations"]
    strokes.paint((50, 50), 1)
    qtbot.wait(2 * 250 + 100)  # past the settle time
    assert session.version == 0  # no copies of the annotations for a run that is over
    assert not messages(notifications, "error")


def test_the_live_preview_of_a_zoomed_out_multiscale_image_is_where_the_view_is(plugin_viewer, qtbot):
    viewer, train, _ = plugin_viewer
    base = np.tile(viewer.layers["nuclei"].data, (4, 4))  # 1536 x 1536: drawn from a coarser level
    image = viewer.add_image([base, base[::2, ::2], base[::4, ::4]], name="pyramid", multiscale=True)
    labels = viewer.add_labels(np.zeros(base.shape, np.uint8), name="pyramid labels")
    viewer.reset_view()
    qtbot.wait(300)
    assert image.data_level > 0
    session = LiveSession(viewer, [(image, labels)], [base.shape], None, 2, [labels.data.copy()])
    try:
        key = session.view_request().key
    finally:
        session.close()
    centre = [(k.start + k.stop) / 2 for k in key]
    np.testing.assert_allclose(centre, np.asarray(viewer.camera.center[-2:]), atol=8)  # the middle of the image


def test_closing_segment_with_unet_mid_run_leaves_its_layer_editable(plugin_viewer, qtbot, notifications):
    viewer, _, segment = plugin_viewer
    open_lazy_stack(viewer, segment, planes=12)
    segment.tile_size.value = 128
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: segment.progress.value > 0, timeout=60)
    job = segment.job
    layer = viewer.layers["stack segmentation"]
    assert not layer.editable  # locked while the run writes it
    _close_dock(qtbot, viewer, "Segment with UNet")
    qtbot.waitUntil(job.ended.is_set, timeout=10000)
    assert layer.editable  # the part done can be corrected (or deleted)
    assert not messages(notifications, "error")


def test_save_model_into_a_folder_that_cannot_be_written_is_a_notification(plugin_viewer, qtbot, notifications,
                                                                            tmp_path, monkeypatch):
    from pathlib import Path

    import napari_unet.publish as publish
    from napari_unet._napari._store import STORE

    from .conftest import random_model

    viewer, train, _ = plugin_viewer
    STORE.set(random_model(), "test")
    target = tmp_path / "model.pt"
    monkeypatch.setattr("napari_unet._napari._model_files.ask_save_model_path", lambda parent=None: str(target))
    # the file is written under a temporary name first: put that where nothing can be written
    monkeypatch.setattr(publish, "temporary_name", lambda path, tag="partial": tmp_path / "gone" / Path(path).name)
    qtbot.mouseClick(train.save_button.native, LEFT)
    errors = messages(notifications, "error")
    assert len(errors) == 1 and "could not save the model: cannot write" in errors[0], errors
    assert not target.exists()


def test_a_preview_arriving_after_the_annotations_and_preview_were_removed_raises_nothing(plugin_viewer, qtbot):
    """Removing the annotations stops a live run, but a preview already on its way is still drawn."""
    from napari_unet._napari._live import _EmptyPreview

    viewer, _, _ = plugin_viewer
    image, strokes = viewer.layers["nuclei"], viewer.layers["nuclei annotations"]
    session = LiveSession(viewer, [(image, strokes)], [image.data.shape], None, 2, [strokes.data.copy()])
    try:
        qtbot.wait(100)
        viewer.layers.remove(session.preview_layer)
        viewer.layers.remove(strokes)
        session.show_preview(_EmptyPreview(session.view_request()))  # raised: a removed layer made active
        assert viewer.layers.selection.active is not strokes
    finally:
        session.close()


def test_live_mode_with_a_3d_model_on_a_2d_image_says_what_to_change(plugin_viewer, qtbot, notifications):
    viewer, train, _ = plugin_viewer
    set_tiny(train)
    train.advanced.dims.value = 3
    click_checkbox(qtbot, train.live)
    qtbot.mouseClick(train.train_button.native, LEFT)
    errors = messages(notifications, "error")
    assert len(errors) == 1 and "3D model needs images with at least 3 spatial axes" in errors[0], errors
    assert not train.running and train.train_button.text == "Train" and train._live is None
    assert "nuclei preview" not in viewer.layers


def test_results_of_a_rotated_sheared_image_lie_on_it(plugin_viewer, qtbot, notifications):
    """Segmentation, "Use as annotations" and the live preview of an image drawn with rotate/shear/affine
    (deskewed light-sheet data, say) are drawn on it, not beside it."""
    from napari_unet._napari._live import _EmptyPreview
    from napari_unet._napari._store import STORE
    from napari_unet.train import PreviewRequest

    from .conftest import random_model

    viewer, _, segment = plugin_viewer
    image, strokes = viewer.layers["nuclei"], viewer.layers["nuclei annotations"]
    image.scale, image.translate, image.rotate, image.shear = (2, 3), (10, -20), 30, [0.2]
    image.affine = np.array([[1.0, 0, 5], [0, 1.0, 0], [0, 0, 1]])
    STORE.set(random_model(), "test")
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: not segment.running, timeout=60)
    corners = [(0, 0), (383, 0), (0, 383), (200, 100)]
    world = [image.data_to_world(p) for p in corners]
    seg = viewer.layers["nuclei segmentation"]
    np.testing.assert_allclose([seg.data_to_world(p) for p in corners], world, atol=1e-6)
    qtbot.mouseClick(segment.use_as_annotations.native, LEFT)
    wait_until(qtbot, lambda: "nuclei annotations (corrected)" in viewer.layers, timeout=20)
    made = viewer.layers["nuclei annotations (corrected)"]
    np.testing.assert_allclose([made.data_to_world(p) for p in corners], world, atol=1e-6)

    session = LiveSession(viewer, [(image, strokes)], [image.data.shape], None, 2, [strokes.data.copy()])
    try:
        session.show_preview(_EmptyPreview(PreviewRequest(0, (slice(100, 200), slice(50, 150)))))
        preview = session.preview_layer
        np.testing.assert_allclose(preview.data_to_world((0, 0)), image.data_to_world((100, 50)), atol=1e-6)
        np.testing.assert_allclose(preview.data_to_world((99, 99)), image.data_to_world((199, 149)), atol=1e-6)
    finally:
        session.close()
    assert not messages(notifications, "error")


def test_an_image_of_the_probability_layers_name_is_never_overwritten(plugin_viewer, qtbot, notifications):
    """A user's Image layer named like the probabilities (say reopened from a saved file) keeps its data."""
    from napari_unet._napari._store import STORE

    from .conftest import random_model

    viewer, _, segment = plugin_viewer
    mine = viewer.add_image(np.full((50, 60), 7.0, np.float32), name="nuclei probability (class 2)")
    segment.reset_choices()
    segment.image.value = viewer.layers["nuclei"]
    STORE.set(random_model(), "test")
    segment.show_probabilities.value = True
    for _ in range(2):  # the second run reuses the plugin's own layer
        qtbot.mouseClick(segment.segment_button.native, LEFT)
        wait_until(qtbot, lambda: not segment.running, timeout=60)
    assert mine.data.shape == (50, 60) and (mine.data == 7).all()
    ours = [layer for layer in viewer.layers if layer.name.startswith("nuclei probability") and layer is not mine]
    assert len(ours) == 1 and ours[0].data.shape == (384, 384)
    assert not messages(notifications, "error")


def test_the_live_preview_is_never_offered_as_annotations(plugin_viewer, qtbot, notifications):
    """Removing the annotations must not leave Train UNet pointing at the model's own preview."""
    viewer, train, _ = plugin_viewer
    image, strokes = viewer.layers["nuclei"], viewer.layers["nuclei annotations"]
    session = LiveSession(viewer, [(image, strokes)], [image.data.shape], None, 2, [strokes.data.copy()])
    session.close()
    assert "nuclei preview" in viewer.layers
    qtbot.wait(100)
    viewer.layers.remove(strokes)
    row = train.rows()[0]
    assert all(layer.name != "nuclei preview" for layer in row.labels.choices)
    assert row.labels.value is None
    qtbot.mouseClick(train.train_button.native, LEFT)
    assert not train.running and any("Labels layer" in m for m in messages(notifications, "error"))


def test_a_z_channel_y_x_stack_trains_with_its_z_spacing(plugin_viewer, qtbot, notifications):
    """The voxel size of a stack whose channel axis sits between Z and Y (ImageJ's ZCYX) is its Z, Y, X
    scale, not the last three entries of the layer's scale (which held the channel's 1)."""
    from napari_unet._napari._store import STORE
    from napari_unet.synthetic import make_sample

    viewer, train, _ = plugin_viewer
    image, _, truth = make_sample((8, 64, 64), seed=1)
    strokes = np.zeros(truth.shape, np.uint8)
    strokes[2:6] = np.where(truth[2:6] > 0, 2, 1)  # dense annotations of four planes
    zcyx = np.stack([image, image // 2], axis=1)
    layer = viewer.add_image(zcyx, name="zcyx", scale=(3, 1, 1, 1))
    labels = viewer.add_labels(strokes, name="zcyx strokes", scale=(3, 1, 1))
    train.reset_choices()
    train.rows()[0].image.value, train.rows()[0].labels.value = layer, labels
    set_tiny(train, budget=6.0)  # the first 3D step takes a few seconds on a loaded CPU
    train.advanced.dims.value = 3
    train.advanced.channel_axis.reset_choices()
    train.advanced.channel_axis.value = "1"
    qtbot.mouseClick(train.train_button.native, LEFT)
    wait_until(qtbot, lambda: not train.running, timeout=90)
    assert not messages(notifications, "error"), messages(notifications)
    assert STORE.model is not None, (train.status.value, messages(notifications))
    assert tuple(STORE.model.config.spacing) == (3.0, 1.0, 1.0)


def test_load_model_while_training_runs_is_refused_rather_than_silently_replaced(plugin_viewer, qtbot,
                                                                                 notifications, tmp_path,
                                                                                 monkeypatch):
    """The run's model becomes the current one when it ends (and at each live preview): a model loaded
    meanwhile would be replaced without a word."""
    from napari_unet import save_model
    from napari_unet._napari._store import STORE

    from .conftest import random_model, start_long_training

    viewer, train, _ = plugin_viewer
    path = tmp_path / "other.pt"
    save_model(random_model(seed=3), path)
    monkeypatch.setattr("napari_unet._napari._model_files.ask_open_model_path", lambda parent=None: str(path))
    start_long_training(qtbot, train, steps=1)
    qtbot.mouseClick(train.load_button.native, LEFT)
    errors = messages(notifications, "error")
    assert len(errors) == 1 and "stop the training before loading" in errors[0], errors
    assert STORE.source != "loaded from other.pt"
    qtbot.mouseClick(train.train_button.native, LEFT)  # Stop
    wait_until(qtbot, lambda: not train.running, timeout=60)
    qtbot.mouseClick(train.load_button.native, LEFT)  # now it loads
    assert STORE.source == "loaded from other.pt"
