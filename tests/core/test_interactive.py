"""Click to segment (`segment_at`) and corrections into training labels, without Qt."""
import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi

import napari_unet as nu
from napari_unet.interactive import (DEFAULT_WINDOW_2D, DEFAULT_WINDOW_3D, SPLIT_HEIGHT, SPLIT_SIGMA, one_object,
                                     region_box, to_training_labels, window_around)
from napari_unet.postprocess import split_objects
from napari_unet.synthetic import make_sample

from .test_predict import random_model

IMAGE = make_sample((300, 340), seed=0)[0]


def _point_where(labels, condition, margin=0):
    """A pixel where ``condition`` holds, at least ``margin`` from the border, on a grid of 4 pixels (a
    window centred there is aligned to the depth-2 network's poolings: it gives the whole image's result)."""
    inner = np.zeros(labels.shape, bool)
    inner[margin:labels.shape[0] - margin:4, margin:labels.shape[1] - margin:4] = True
    ys, xs = np.nonzero(condition(labels) & inner)
    assert ys.size, "the test model gives no such pixel"
    return int(ys[ys.size // 2]), int(xs[xs.size // 2])


def test_window_is_centred_on_the_point_and_moved_inside_the_image():
    assert window_around((150, 170), (300, 340), (256, 256)) == (slice(22, 278), slice(42, 298))
    assert window_around((5, 330), (300, 340), (256, 256)) == (slice(0, 256), slice(84, 340))  # at the border
    assert window_around((2, 10, 10), (4, 100, 50), (64, 64)) == (2, slice(0, 64), slice(0, 50))  # short axis whole
    with pytest.raises(ValueError, match="outside"):
        window_around((300, 0), (300, 340), (256, 256))


def test_semantic_click_returns_the_object_of_the_class_under_it():
    model = random_model(seed=7)  # gives class 2 on part of the image
    window = 128
    point = _point_where(nu.segment(model, IMAGE), lambda lab: lab == 2, margin=64)
    hit = nu.segment_at(model, IMAGE, point, window=window)
    assert hit.mask.dtype == bool and hit.mask.shape == (window, window)
    assert hit.value == 2 and hit.seconds > 0
    expected = nu.segment(model, IMAGE[hit.key], tile=None)  # the window, segmented on its own
    local = tuple(p - o for p, o in zip(point, hit.origin))
    components, _ = ndi.label(expected == 2)
    parts = split_objects(expected == 2, h=SPLIT_HEIGHT, sigma=SPLIT_SIGMA)
    np.testing.assert_array_equal(hit.mask, parts == parts[local])  # the class's region, split at necks
    assert hit.mask[local] and not (hit.mask & (components != components[local])).any()


def _touching_discs(shape=(128, 128), radius=13):
    """Pairs of touching discs (instance labels) and their centres."""
    yy, xx = np.indices(shape)
    truth = np.zeros(shape, np.int32)
    centres = [(32, 30), (32, 52), (96, 40), (76, 52), (40, 100), (62, 106), (100, 100)]
    for i, (cy, cx) in enumerate(centres, 1):
        truth[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2) & (truth == 0)] = i
    return truth, centres


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_one_object_splits_touching_objects_from_probabilities_for_both_model_kinds():
    truth, centres = _touching_discs()
    fg = (truth > 0).astype(np.float32)
    semantic = np.stack([1 - fg, fg])  # a confident semantic model: both discs of a pair are one region
    regions, _ = ndi.label(fg)
    assert all(regions[centres[a]] == regions[centres[b]] for a, b in ((0, 1), (2, 3), (4, 5)))
    rim = (ndi.morphological_gradient(truth, size=3) > 0) & (truth > 0)
    rim[ndi.binary_dilation(truth > 0) & ~(truth > 0)] = False
    inner = fg * ~rim
    bridged = inner.copy()
    bridged[30:35, 40:44] = 1  # an interior that bridges the first pair's seam
    instance = np.stack([1 - fg, bridged, fg * rim])
    for prob, mode, ids in ((semantic, "semantic", (1, 2)), (instance, "instance", (0, 1, 2))):
        for a, b in ((0, 1), (2, 3), (4, 5)):  # clicked at their centres, the two of a pair are two objects
            (mask_a, value_a), (mask_b, value_b) = (one_object(prob, mode, ids, centres[k]) for k in (a, b))
            assert value_a > 0 and value_b > 0, mode
            assert _iou(mask_a, truth == a + 1) > 0.8 and _iou(mask_b, truth == b + 1) > 0.8, mode
            # each click splits for its own object: the two may share a seam pixel, never more
            assert (mask_a & mask_b).sum() <= 0.05 * min(mask_a.sum(), mask_b.sum()), mode
    mask, value = one_object(semantic, "semantic", (1, 2), (5, 5))
    assert value == 0 and not mask.any()


def test_instance_click_returns_one_connected_object_of_the_foreground_under_it():
    model = random_model(mode="instance", seed=2)
    point = _point_where(nu.segment(model, IMAGE), lambda lab: lab > 0, margin=128)
    hit = nu.segment_at(model, IMAGE, point)
    assert hit.mask.shape == DEFAULT_WINDOW_2D and hit.value == 1
    prob = nu.predict(model, IMAGE[hit.key], tile=None)
    local = tuple(p - o for p, o in zip(point, hit.origin))
    assert hit.mask[local] and not (hit.mask & (prob[0] >= 0.5)).any()  # the model's foreground only
    assert ndi.label(hit.mask)[1] == 1  # one object, nothing else


def test_background_click_gives_value_0_and_an_empty_mask():
    model = random_model(seed=7)
    point = _point_where(nu.segment(model, IMAGE), lambda lab: lab == 0, margin=64)
    hit = nu.segment_at(model, IMAGE, point, window=128)
    assert hit.value == 0 and hit.mask.shape == (128, 128) and not hit.mask.any()


def test_click_near_the_border_keeps_the_whole_window_inside_the_image():
    model = random_model(seed=7)
    hit = nu.segment_at(model, IMAGE, (3, 338))
    assert hit.origin == (0, 340 - 256) and hit.mask.shape == (256, 256)
    small = nu.segment_at(model, IMAGE[:100, :90], (50, 45))  # image smaller than the window: all of it
    assert small.origin == (0, 0) and small.mask.shape == (100, 90)


def test_click_on_a_plane_of_a_stack_gives_the_plane_index_in_the_origin():
    model = random_model(seed=7)
    stack = np.stack([IMAGE[::-1], IMAGE, IMAGE[:, ::-1]])
    y, x = _point_where(nu.segment(model, IMAGE), lambda lab: lab == 2, margin=64)
    hit = nu.segment_at(model, stack, (1, y, x), window=128)
    assert len(hit.origin) == 3 and hit.origin[0] == 1 and hit.mask.shape == (128, 128)
    plane = nu.segment_at(model, IMAGE, (y, x), window=128)
    assert hit.origin[1:] == plane.origin and hit.value == plane.value == 2
    np.testing.assert_array_equal(hit.mask, plane.mask)  # the middle plane was segmented, not another


def test_3d_model_uses_a_3d_window():
    model = random_model(dims=3, seed=0)
    volume = make_sample((40, 160, 150), seed=3)[0]
    hit = nu.segment_at(model, volume, (20, 80, 75))
    assert hit.mask.shape == DEFAULT_WINDOW_3D and len(hit.origin) == 3
    assert hit.origin == (20 - 16, 80 - 64, 75 - 64)
    expected = nu.segment(model, volume[hit.key], tile=None)
    local = (16, 64, 64)
    assert hit.value == expected[local]
    if hit.value:
        components, _ = ndi.label(expected == hit.value)
        np.testing.assert_array_equal(hit.mask, components == components[local])
    else:
        assert not hit.mask.any()
    assert nu.segment_at(model, volume, (20, 80, 75), window=(8, 32, 32)).mask.shape == (8, 32, 32)


def test_only_the_window_of_a_lazy_image_is_read():
    model = random_model(seed=7)
    reads = []

    def chunk(block_info=None):
        info = block_info[None]
        reads.append(info["array-location"])
        return np.full(info["chunk-shape"], 0.5, np.float32)

    stack = da.map_blocks(chunk, chunks=((1,) * 4, (256,) * 4, (256,) * 4), dtype=np.float32)  # 4x1024x1024
    hit = nu.segment_at(model, stack, (2, 500, 500), window=128)
    assert hit.origin == (2, 436, 436)
    # the chunks under the 128x128 window of plane 2, not the 4M-pixel stack
    assert sorted(reads) == [[(2, 3), (a, a + 256), (b, b + 256)] for a in (256, 512) for b in (256, 512)]


def test_wrong_channels_or_window_are_refused_in_terms_of_parameters():
    with pytest.raises(ValueError, match="channel_axis="):
        nu.segment_at(random_model(in_channels=2), IMAGE, (10, 10))
    with pytest.raises(ValueError, match="window"):
        nu.segment_at(random_model(), IMAGE, (10, 10), window=(8, 8, 8))
    two = np.stack([IMAGE, IMAGE])
    hit = nu.segment_at(random_model(in_channels=2), two, (100, 100), channel_axis=0, window=64)
    assert hit.mask.shape == (64, 64) and hit.origin == (68, 68)


def test_training_labels_mark_background_only_where_the_model_looked():
    seg = np.zeros((2, 10, 10), np.int32)
    seg[0, 2:4, 2:4] = 7  # an object added by a click
    seg[1, 8:10, 8:10] = 2  # an object painted by hand outside every window
    before = seg.copy()
    window = region_box((0, slice(0, 5), slice(0, 6)), seg.shape)
    assert window == ((0, 1), (0, 5), (0, 6))
    labels = to_training_labels(seg, "semantic", [1, 2], {7: 2}, covered=[window])
    assert (labels[0, 2:4, 2:4] == 2).all() and (labels[1, 8:10, 8:10] == 2).all()
    assert (labels[0, :5, :6][seg[0, :5, :6] == 0] == 1).all()  # background inside the window
    assert labels[0, 5:].sum() == 0 and labels[1, :8].sum() == 0  # not annotated elsewhere
    everything = to_training_labels(seg, "semantic", [1, 2], {7: 2})
    assert (everything[seg == 0] == 1).all() and (everything[seg > 0] == 2).all()
    np.testing.assert_array_equal(seg, before)  # the caller's segmentation is untouched


def test_training_labels_keep_class_ids_and_instances():
    seg = np.zeros((6, 6), np.int32)
    seg[0, :2], seg[1, :2], seg[2, :2] = 5, 3, 9  # class 5, class 3, and an object id from a click
    labels = to_training_labels(seg, "semantic", [1, 3, 5], {9: 5})
    assert labels.dtype == np.uint8
    assert (labels[0, :2] == 5).all() and (labels[1, :2] == 3).all() and (labels[2, :2] == 5).all()
    unknown = to_training_labels(seg, "semantic", [1, 3, 5])  # an id nobody recorded: first foreground class
    assert (unknown[2, :2] == 3).all()
    inst = to_training_labels(seg, "instance")
    assert inst.dtype == np.int32
    np.testing.assert_array_equal(inst, seg)
    with pytest.raises(ValueError, match="mode"):
        to_training_labels(seg, "panoptic")
