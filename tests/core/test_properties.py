"""Property-based tests: tiling covers every pixel once and matches the whole image; label conversions
round-trip."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_unet.data import IGNORE, instance_targets, semantic_targets
from napari_unet.model import Model
from napari_unet.postprocess import instance_labels, semantic_labels
from napari_unet.predict import predict
from napari_unet.tiling import plan_tiles

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(shape=st.lists(st.integers(1, 300), min_size=1, max_size=3),
       align_pow=st.integers(0, 4), halo_blocks=st.integers(0, 3), extra=st.integers(1, 8))
def test_every_pixel_is_written_exactly_once(shape, align_pow, halo_blocks, extra):
    align = 2**align_pow
    halo = halo_blocks * align
    tile = 2 * halo + extra * align
    count = np.zeros(shape, np.uint8)
    for t in plan_tiles(shape, (tile,) * len(shape), halo, align):
        count[t.output] += 1
        for i, o, c, s in zip(t.input, t.output, t.crop, shape):
            assert i.start % align == 0
            assert o.start - i.start == c.start
            # context on each inner side is at least the halo
            if o.start > 0:
                assert o.start - i.start >= halo
            if o.stop < s:
                assert i.stop - o.stop >= halo
    assert (count == 1).all()


_NET = None


def _tiny_model():
    global _NET
    if _NET is None:
        _NET = Model.untrained(depth=2, base_channels=4, seed=0)
    return _NET


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 150), w=st.integers(1, 150), tile_blocks=st.integers(0, 4), seed=st.integers(0, 10**6))
def test_tiled_prediction_equals_whole_image_for_any_size(h, w, tile_blocks, seed):
    model = _tiny_model()
    image = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    tile = 2 * model.halo + (tile_blocks + 1) * 4
    whole = predict(model, image, tile=None)
    tiled = predict(model, image, tile=tile)
    assert np.abs(whole - tiled).max() < 1e-4


@st.composite
def rectangles(draw):
    """Instance labels made of axis-aligned rectangles (at least 5 px wide), some of them touching."""
    h, w = draw(st.integers(20, 60)), draw(st.integers(20, 60))
    labels = np.zeros((h, w), np.int32)
    n = draw(st.integers(0, 6))
    next_id = 1
    for _ in range(n):
        y0, x0 = draw(st.integers(0, h - 6)), draw(st.integers(0, w - 6))
        hh, ww = draw(st.integers(5, 15)), draw(st.integers(5, 15))
        box = (slice(y0, min(h, y0 + hh)), slice(x0, min(w, x0 + ww)))
        region = labels[box]
        if (region == 0).all() and region.shape[0] >= 5 and region.shape[1] >= 5:
            region[:] = next_id
            next_id += 1
    return labels


@FAST
@given(labels=rectangles())
def test_instances_to_targets_to_instances_roundtrip(labels):
    targets = instance_targets(labels)
    prob = np.stack([(targets == k).astype(np.float32) for k in range(3)])  # a perfect network
    rebuilt = instance_labels(prob, min_size=1)
    # same objects up to renumbering: a one-to-one mapping of ids
    pairs = set(zip(labels.ravel().tolist(), rebuilt.ravel().tolist()))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    assert all((a == 0) == (b == 0) for a, b in pairs)


@FAST
@given(painted=st.lists(st.integers(0, 5), min_size=1, max_size=200))
def test_semantic_labels_to_targets_to_labels_roundtrip(painted):
    labels = np.array(painted, np.int64)
    class_ids = sorted(set(painted) - {0}) or [1]
    targets = semantic_targets(labels, class_ids)
    assert ((targets == IGNORE) == (labels == 0)).all()
    known = targets >= 0
    prob = np.stack([(targets == k).astype(np.float32) for k in range(len(class_ids))])
    out = semantic_labels(prob, class_ids)
    expected = np.where(labels == 1, 0, labels)  # background is written as 0, other classes keep their id
    assert (out[known] == expected[known]).all()
