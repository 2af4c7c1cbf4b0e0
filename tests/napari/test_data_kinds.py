"""Big lazy stacks, time series, RGB, channel axes and 3D models in the widgets."""
import importlib
import os
import time

import dask.array as da
import numpy as np
from napari.layers import Labels
from qtpy.QtCore import Qt, QTimer

import napari_unet as nu
from napari_unet._napari._store import STORE
from napari_unet.synthetic import make_sample

from .conftest import click_canvas, messages, open_lazy_stack, random_model, set_tiny, wait_until

LEFT = Qt.MouseButton.LeftButton


def test_lazy_stack_goes_to_an_on_disk_layer_filled_tile_by_tile(plugin_viewer, qtbot, notifications, monkeypatch):
    viewer, train, segment = plugin_viewer
    model = random_model()
    STORE.set(model, "test")
    planes = np.stack([make_sample((256, 320), seed=s)[0] for s in range(3)] * 3)
    stack = da.from_array(planes, chunks=(1, 256, 320))
    viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5))
    segment.reset_choices()
    segment.image.value = viewer.layers["stack"]
    segment.tile_size.value = 128
    segment.show_probabilities.value = True
    refreshes = []
    original = Labels.refresh

    def counting_refresh(self, *args, **kwargs):
        refreshes.append((self.name, kwargs.get("thumbnail", True)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Labels, "refresh", counting_refresh)
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    t0 = time.perf_counter()
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    # pressing Segment adds the output layers (napari's add_labels/add_image: 100-300 ms here); the
    # event loop is measured from then on, while the tiles are predicted and the layers refreshed
    print(f"\nSegment pressed: output layers ready after {1000 * (time.perf_counter() - t0):.0f} ms")
    timer.start()
    wait_until(qtbot, lambda: not segment.running, timeout=120)
    timer.stop()
    gaps = np.sort(np.diff(ticks))[::-1]
    print(f"event loop while segmenting a lazy stack: {len(ticks)} ticks, longest gaps "
          f"{np.round(1000 * gaps[:3]).tolist()} ms")
    # Showing progress means redrawing napari's canvas, which alone takes 50-75 ms per frame in Xvfb's
    # software OpenGL on this 2-core machine (measured with a bare Labels refresh); training does not
    # redraw the canvas and is held to 100 ms in test_workflow. One gap may run longer when the CI box
    # deschedules the process; work done on the GUI thread (a whole-stack compute, a full refresh per
    # tile) stalls it for seconds, or over and over.
    assert gaps[1] < 0.15 and gaps[0] < 0.5
    assert not messages(notifications, "error")
    seg = viewer.layers["stack segmentation"]
    assert not isinstance(seg.data, np.ndarray)  # a zarr array on disk, not memory
    assert tuple(seg.data.shape) == (9, 256, 320) and seg.data.chunks == (1, 256, 320)
    np.testing.assert_allclose(seg.scale, (2.0, 0.5, 0.5))
    expected = nu.segment(model, planes, tile=128)
    np.testing.assert_array_equal(np.asarray(seg.data[:]), expected)  # exact, whatever the tiling
    # refreshed while the tiles of the plane on screen arrived (thumbnail-less refreshes), not only at the end
    assert refreshes.count(("stack segmentation", False)) >= 1
    prob = viewer.layers["stack probability (class 2)"]
    assert isinstance(prob.data, da.Array) and prob.data.shape == (9, 256, 320)
    p = np.asarray(prob.data[1])
    assert 0 <= p.min() and p.max() <= 1
    np.testing.assert_allclose(p, nu.predict(model, planes[1], tile=128)[1], atol=1e-5)

    # a second run replaces the layer's on-disk array (and deletes the first one's temporary folder)
    first_store = seg.data.attrs["napari_unet_temporary"]
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: not segment.running, timeout=120)
    assert viewer.layers["stack segmentation"] is seg
    assert seg.data.attrs["napari_unet_temporary"] != first_store
    assert not os.path.exists(first_store)
    np.testing.assert_array_equal(np.asarray(seg.data[:]), expected)


def test_time_series_click_writes_only_the_current_plane(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    image = viewer.layers["nuclei"].data
    series = np.stack([image, np.roll(image, 40, axis=1), image[::-1]])
    viewer.layers.clear()
    viewer.add_image(series, name="series")
    segment.reset_choices()
    segment.image.value = viewer.layers["series"]
    # a model trained by the core on the sample (plain library use), shared through the store
    strokes = make_sample((384, 384), seed=0)[1]
    STORE.set(nu.train([image], [strokes], depth=2, base_channels=8, batch_size=4, time_budget=6, seed=0), "test")
    truth_plane = nu.segment(STORE.model, series[1])
    viewer.reset_view()
    viewer.dims.set_current_step(0, 1)
    segment.click_to_segment.value = True
    from .conftest import component_inside

    (cy, cx), mask = component_inside(truth_plane)
    click_canvas(qtbot, viewer, (cy, cx))
    wait_until(qtbot, lambda: "series segmentation" in viewer.layers
               and viewer.layers["series segmentation"].data[1, cy, cx] != 0, timeout=10)
    seg = viewer.layers["series segmentation"].data
    assert seg.shape == series.shape
    assert not seg[0].any() and not seg[2].any()
    obj = seg[1] == seg[1, cy, cx]
    assert (obj & mask).sum() / (obj | mask).sum() > 0.8
    assert not messages(notifications, "error")


def test_rgb_and_channel_axis_images_train_and_segment(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    image, strokes = viewer.layers["nuclei"].data, viewer.layers["nuclei annotations"].data
    crop = (slice(0, 192), slice(0, 256))
    grey = (image[crop] / image.max() * 255).astype(np.uint8)
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    two_channels = np.stack([image[crop], image[crop][::-1]])  # (C, Y, X), one layer
    viewer.layers.clear()
    viewer.add_image(rgb, name="rgb")
    viewer.add_image(two_channels, name="two", scale=(1, 0.5, 0.5))
    viewer.add_labels(strokes[crop], name="strokes")
    # what napari's "New labels layer" button makes over the (C, Y, X) image: strokes painted on channel 1
    per_channel = np.zeros(two_channels.shape, np.uint8)
    per_channel[1] = strokes[crop]
    viewer.add_labels(per_channel, name="strokes over channels", scale=(1, 0.5, 0.5))
    set_tiny(train, budget=1.5)
    for name, axis, in_channels, strokes_layer in (("rgb", "rgb", 3, "strokes"),
                                                    ("two", "0", 2, "strokes over channels")):
        STORE.clear()
        train.reset_choices()
        train.rows()[0].image.value = viewer.layers[name]
        train.rows()[0].labels.value = viewer.layers[strokes_layer]
        assert axis in [v for v in train.advanced.channel_axis.choices]
        train.advanced.channel_axis.value = axis
        qtbot.mouseClick(train.train_button.native, LEFT)
        wait_until(qtbot, lambda: not train.running, timeout=60)
        assert not messages(notifications, "error"), messages(notifications, "error")
        assert STORE.model is not None and STORE.model.in_channels == in_channels
        segment.reset_choices()
        segment.image.value = viewer.layers[name]
        segment.channel_axis.value = axis
        qtbot.mouseClick(segment.segment_button.native, LEFT)
        wait_until(qtbot, lambda: not segment.running, timeout=60)
        seg = viewer.layers[f"{name} segmentation"]
        assert seg.data.shape == (192, 256)
    np.testing.assert_allclose(viewer.layers["two segmentation"].scale, (0.5, 0.5))

    # click to segment on the (C, Y, X) image: the channel axis is not a spatial axis
    seg = viewer.layers["two segmentation"]
    seg.data = np.zeros_like(seg.data)
    for layer in list(viewer.layers):
        layer.visible = layer.name in ("two", "two segmentation")
    segment.click_to_segment.value = True  # with the 2-channel model just trained
    viewer.reset_view()
    segment.segment_at(viewer.layers["two"].data_to_world((0, 96, 128)))  # the world point of pixel (96, 128)
    wait_until(qtbot, lambda: not segment.clicking, timeout=20)
    assert not messages(notifications, "error"), messages(notifications, "error")
    assert "added object" in segment.status.value or "no object at the click" in segment.status.value


def test_3d_model_on_a_volume(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    volume, strokes, _ = make_sample((16, 64, 64), seed=3)
    viewer.layers.clear()
    viewer.add_image(volume, name="volume", scale=(2.0, 0.65, 0.65))  # planes 3x further apart than pixels
    viewer.add_labels(strokes, name="strokes", scale=(2.0, 0.65, 0.65))
    set_tiny(train, budget=1.5)
    train.advanced.dims.value = 3
    train.reset_choices()
    qtbot.mouseClick(train.train_button.native, LEFT)
    wait_until(qtbot, lambda: not train.running, timeout=90)
    assert not messages(notifications, "error"), messages(notifications, "error")
    assert STORE.model is not None and STORE.model.dims == 3
    assert STORE.model.config.spacing == (round(2.0 / 0.65, 6), 1.0, 1.0)  # the layers' voxel size
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: not segment.running, timeout=90)
    seg = viewer.layers["volume segmentation"]
    assert seg.data.shape == (16, 64, 64)
    np.testing.assert_array_equal(seg.data, nu.segment(STORE.model, volume, tile=segment.tile_size.value or "auto"))


def test_two_image_label_pairs(plugin_viewer, qtbot, notifications, monkeypatch):
    viewer, train, segment = plugin_viewer
    image2, strokes2, _ = make_sample((256, 256), seed=5)
    viewer.add_image(image2, name="second")
    viewer.add_labels(strokes2, name="second strokes")
    qtbot.mouseClick(train.add_pair_button.native, LEFT)
    rows = train.rows()
    assert len(rows) == 2
    qtbot.waitUntil(lambda: rows[1].remove.visible)  # a widget added to a shown container appears next loop
    assert not rows[0].remove.visible
    rows[1].image.value = viewer.layers["second"]
    rows[1].labels.value = viewer.layers["second strokes"]
    seen = {}
    train_module = importlib.import_module("napari_unet.train")  # (napari_unet.train is also the function)
    original = train_module.iter_train

    def spy(images, labels, **kwargs):
        seen["shapes"] = [np.shape(i) for i in images] + [np.shape(lab) for lab in labels]
        yield from original(images, labels, **kwargs)

    monkeypatch.setattr(train_module, "iter_train", spy)
    set_tiny(train, budget=1.5)
    qtbot.mouseClick(train.train_button.native, LEFT)
    wait_until(qtbot, lambda: not train.running, timeout=60)
    assert seen["shapes"] == [(384, 384), (256, 256), (384, 384), (256, 256)]
    assert STORE.model is not None and not messages(notifications, "error")
    qtbot.mouseClick(rows[1].remove.native, LEFT)
    assert len(train.rows()) == 1


def test_instance_masks_loop(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    truth = make_sample((384, 384), seed=0)[2]
    viewer.add_labels(truth, name="masks")
    train.reset_choices()
    train.rows()[0].labels.value = viewer.layers["masks"]
    train.mode.value = "instance"
    set_tiny(train, budget=2.0)
    qtbot.mouseClick(train.train_button.native, LEFT)
    wait_until(qtbot, lambda: not train.running, timeout=60)
    assert not messages(notifications, "error"), messages(notifications, "error")
    assert STORE.model.mode == "instance" and STORE.model.config.class_names == ("background", "interior",
                                                                                      "boundary")
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: not segment.running, timeout=60)
    seg = viewer.layers["nuclei segmentation"]
    assert seg.data.shape == truth.shape and seg.data.dtype == np.int32
    qtbot.mouseClick(segment.use_as_annotations.native, LEFT)
    wait_until(qtbot, lambda: "nuclei annotations (corrected)" in viewer.layers, timeout=20)
    ann = viewer.layers["nuclei annotations (corrected)"]
    np.testing.assert_array_equal(ann.data, seg.data)  # instance labels are used as they are
    assert train.mode.value == "instance" and train.continue_training.value


def test_undo_after_resegmenting_a_lazy_stack_leaves_the_new_result_alone(plugin_viewer, qtbot, notifications):
    viewer, train, segment = plugin_viewer
    open_lazy_stack(viewer, segment, planes=3)
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: not segment.running, timeout=60)
    corrected = segment.output_layer()
    diagonal = (np.zeros(50, int), np.arange(50), np.arange(50))
    corrected.data_setitem(diagonal, 5)  # the user paints a correction, then segments again
    corrected.data_setitem(diagonal, 9)  # undoing this edit would write the 5s back
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: not segment.running, timeout=60)
    layer = segment.output_layer()
    assert layer is not corrected and (np.asarray(corrected.data)[diagonal] == 9).all()  # corrections kept
    fresh = np.asarray(layer.data).copy()
    assert not (fresh[diagonal] == 5).any()
    layer.undo()  # Ctrl+Z on the new result
    np.testing.assert_array_equal(np.asarray(layer.data), fresh)
    assert not messages(notifications, "error")


def test_a_narrow_segmentation_layer_never_wraps_object_ids():
    from napari_unet._napari._segmentation import SegmentationLayer

    layer = Labels(np.zeros((20, 30), np.uint8), name="nuclei segmentation")  # e.g. reopened from a uint8 file
    new = np.arange(600, dtype=np.int32).reshape(20, 30)  # 599 objects: more than uint8 holds
    SegmentationLayer(layer).apply_result(new)
    np.testing.assert_array_equal(np.asarray(layer.data), new)
    small = np.ones((20, 30), np.int32)
    SegmentationLayer(layer).apply_result(small)  # fits: applied as one undoable edit
    np.testing.assert_array_equal(np.asarray(layer.data), small)
    layer.undo()
    np.testing.assert_array_equal(np.asarray(layer.data), new)


def test_renamed_layers_and_hand_painted_ids_are_followed(plugin_viewer, qtbot, notifications):
    from napari_unet._napari._segmentation import SegmentationLayer

    viewer, train, segment = plugin_viewer
    open_lazy_stack(viewer, segment, planes=2)
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: not segment.running, timeout=60)
    layer = viewer.layers["stack segmentation"]  # on disk (a lazy stack): too big to scan for ids
    layer.selected_label = 40
    layer.paint((1, 100, 100), 40)  # the brush, by hand
    assert SegmentationLayer(layer).next_label() == 41  # a clicked object will not merge with it

    assert segment.image.value is viewer.layers["stack"]
    viewer.layers["stack"].name = "stack, day 2"
    assert segment.image.value is viewer.layers["stack, day 2"]  # still the chosen image
    names = [segment.image.native.itemText(i) for i in range(segment.image.native.count())]
    assert "stack, day 2" in names and "stack" not in names
    assert train.rows()[0].image.native.findText("stack, day 2") >= 0
    train.rows()[0].labels.value = layer
    layer_name_before = layer.name
    viewer.layers["nuclei annotations"].name = "strokes"  # another layer renamed: the choice stays
    assert train.rows()[0].labels.value is layer and layer.name == layer_name_before
    # its segmentation follows the image's name: Segment, clicks and "Use as annotations" still find it
    wait_until(qtbot, lambda: layer.name == "stack, day 2 segmentation", timeout=5)
    assert segment.image.value is viewer.layers["stack, day 2"], segment.image.value
    assert segment.output_layer() is layer
    assert not messages(notifications, "error")
