"""Blockwise labels: instance ids consistent across block borders, the whole-image partition."""
import numpy as np
import pytest

import napari_unet as nu
from napari_unet.blockwise import (block_grid, core_region, instance_labels_blockwise, iter_blockwise,
                                   region_predictions, segment_blockwise)
from napari_unet.data import instance_targets
from napari_unet.postprocess import instance_labels
from napari_unet.predict import plan_prediction
from napari_unet.synthetic import make_nuclei

from .test_predict import random_model


def same_partition(a, b) -> bool:
    """The same objects up to renumbering (and the same background)."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return (len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})
            and all((x == 0) == (y == 0) for x, y in pairs))


def perfect_probabilities(labels):
    """What a perfect network gives for these instances: background / interior / boundary."""
    t = instance_targets(labels)
    return np.stack([(t == k).astype(np.float32) for k in range(3)])


def objects_across_borders(labels, block) -> int:
    """Objects that have pixels in more than one block."""
    grid = block_grid(labels.shape, (block,) * labels.ndim)
    seen = {}
    for position in np.ndindex(*grid):
        for i in np.unique(labels[core_region(labels.shape, (block,) * labels.ndim, position)]):
            seen.setdefault(int(i), set()).add(position)
    return sum(1 for i, blocks in seen.items() if i and len(blocks) > 1)


@pytest.mark.parametrize("shape, radius, block, margin", [((256, 288), (6, 14), 40, 32), ((32, 64, 64), (4, 7), 16, 16)])
def test_blockwise_instance_labels_are_the_whole_image_partition(shape, radius, block, margin):
    _, truth = make_nuclei(shape, seed=3, radius=radius)
    prob = perfect_probabilities(truth)
    whole = instance_labels(prob)
    blockwise = instance_labels_blockwise(prob, block, margin)
    assert objects_across_borders(whole, block) >= 10  # many objects cross block borders
    assert same_partition(whole, blockwise)
    assert set(np.unique(blockwise)) == set(range(int(blockwise.max()) + 1))  # ids 1..N, each used


def test_blockwise_labels_of_an_anisotropic_stack_use_its_spacing_like_the_whole_stack():
    _, truth = make_nuclei((12, 64, 64), seed=3, radius=(5, 8), spacing=(3, 1, 1), touching=0.6)
    prob = perfect_probabilities(truth)
    whole = instance_labels(prob, spacing=(3, 1, 1))
    assert not same_partition(whole, instance_labels(prob))  # the spacing matters on these objects
    assert same_partition(whole, instance_labels_blockwise(prob, 16, margin=16, spacing=(3, 1, 1)))


@pytest.mark.parametrize("shape, block", [((192, 200), 32), ((40, 72, 72), 12)])
def test_objects_larger_than_a_block_come_out_whole(shape, block):
    _, truth = make_nuclei(shape, seed=5, radius=(40, 60) if len(shape) == 2 else (17, 22))
    prob = perfect_probabilities(truth)
    whole = instance_labels(prob)
    blockwise = instance_labels_blockwise(prob, block, margin=8)  # a margin far smaller than the objects
    for i in range(1, int(whole.max()) + 1):
        span = np.ptp(np.nonzero(whole == i), axis=1)
        assert span.max() > 2 * block  # the object covers several blocks along some axis
        assert len(np.unique(blockwise[whole == i])) == 1  # one id
    assert same_partition(whole, blockwise)


def test_block_probabilities_equal_the_whole_plan():
    model = random_model(depth=2, base=4, mode="instance", classes=(1, 2, 3))
    stack = np.random.default_rng(0).random((2, 120, 136)).astype(np.float32)
    plan = plan_prediction(model, stack, probabilities=True, tile=64)
    whole = nu.predict(model, stack, tile=64)
    region = (slice(30, 77), slice(51, 136))
    part = region_predictions(plan, [1], region)[0]
    np.testing.assert_allclose(part, whole[(slice(None), 1) + region], atol=1e-5)
    full = region_predictions(plan, [0], (slice(0, 120), slice(0, 136)))[0]
    np.testing.assert_array_equal(full, whole[:, 0])  # whole items: the plan's own tiles, bit-identical


@pytest.mark.parametrize("dims", [2, 3])
def test_segment_blockwise_equals_segment(dims):
    model = random_model(dims=dims, depth=2, base=4, mode="instance", classes=(1, 2, 3), seed=1)
    shape = (2, 96, 112) if dims == 2 else (24, 40, 40)
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    whole = nu.segment(model, image, tile=None)
    # a context as large as the item: every block sees all of every object, however large
    blockwise = segment_blockwise(model, image, block=(32, 24) if dims == 2 else 24, margin=112, tile=None)
    assert same_partition(whole, blockwise)
    if dims == 2:  # ids unique over the stack, planes in order
        assert not set(np.unique(blockwise[0])[1:]) & set(np.unique(blockwise[1])[1:])


def test_semantic_blockwise_equals_run_prediction_and_writes_every_block(tmp_path):
    import zarr

    model = random_model(depth=2, base=4, classes=(1, 2, 3))
    image = np.random.default_rng(2).random((100, 130)).astype(np.float32)
    expected = nu.segment(model, image)
    out = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=image.shape, chunks=(32, 32), dtype="u1")
    plan = plan_prediction(model, image, probabilities=True)
    prob = np.zeros(plan.probabilities_shape, np.float32)
    events = list(iter_blockwise(plan, labels_out=out, probabilities_out=prob, block=64))
    assert [e.kind for e in events].count("tiles") == 6 and events[-1].kind == "done"
    np.testing.assert_array_equal(out[...], expected)
    np.testing.assert_allclose(prob, nu.predict(model, image), atol=1e-5)


def test_bad_block_and_margin_are_refused():
    model = random_model(depth=2, base=4, mode="instance", classes=(1, 2, 3))
    image = np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match="block must be positive"):
        segment_blockwise(model, image, block=0)
    with pytest.raises(ValueError, match="block has 3 sizes"):
        segment_blockwise(model, image, block=(8, 8, 8))
    with pytest.raises(ValueError, match="margin must be at least 1"):
        segment_blockwise(model, image, block=32, margin=0)


def test_the_command_line_segments_block_by_block(tmp_path):
    import zarr

    from napari_unet.cli import main

    model = random_model(depth=2, base=4, mode="instance", classes=(1, 2, 3), seed=3)
    nu.save_model(model, tmp_path / "m.pt")
    image = np.random.default_rng(3).random((90, 120)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    assert main(["predict", str(tmp_path / "m.pt"), str(tmp_path / "image.npy"), "-o", str(tmp_path / "l.zarr"),
                 "--block", "48"]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "l.zarr"), mode="r")[...],
                                  segment_blockwise(model, image, block=48))
