"""Linking a 2D model's objects across the planes of a z-stack (``stitch_planes``)."""
import tracemalloc

import numpy as np
import pytest

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.metrics import matching
from napari_unet.stitch import DEFAULT_STITCH_THRESHOLD, PlaneStitcher, per_plane_labels, stitch_planes
from napari_unet.synthetic import make_nuclei

from .test_predict import random_model

zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def volume():
    return make_nuclei((32, 96, 96), seed=3)


@pytest.mark.parametrize("z_step", [1, 3])
def test_stitching_turns_per_plane_objects_into_the_3d_nuclei(volume, z_step):
    truth = volume[1][::z_step]
    per_plane = per_plane_labels(truth)
    n_true = len(np.unique(truth)) - 1
    assert per_plane.max() > 3 * n_true  # many planes per nucleus
    before = matching(truth, per_plane)["f1"]
    linked = stitch_planes(per_plane)
    after = matching(truth, linked)["f1"]
    assert before < 0.15 and after > 0.95, (before, after)
    assert len(np.unique(linked)) - 1 == pytest.approx(n_true, abs=2)


def test_ids_are_unique_over_the_stack_and_chains_break_at_gaps_and_time():
    stack = np.zeros((2, 4, 8, 8), np.int32)  # (t, z, y, x)
    stack[:, :2, 1:4, 1:4] = 1   # planes 0-1: one object
    stack[:, 3, 1:4, 1:4] = 1    # plane 2 empty: plane 3's object is another one
    stack[:, :, 5:7, 5:7] = 2    # all planes: one object per time point
    linked = stitch_planes(stack, trim=False)  # the links alone
    t0, t1 = linked[0], linked[1]
    assert t0[0, 2, 2] == t0[1, 2, 2] != t0[3, 2, 2]
    assert len({int(t0[z, 6, 6]) for z in range(4)}) == 1
    assert set(np.unique(t0)[1:]).isdisjoint(np.unique(t1)[1:])  # a time series is not linked across t
    assert len(np.unique(linked)) - 1 == 6


def test_an_object_that_splits_continues_as_its_larger_part():
    stack = np.zeros((2, 10, 12), np.int32)
    stack[0, 2:8, 1:11] = 5
    stack[1, 2:8, 1:7] = 1      # most of it
    stack[1, 2:8, 8:11] = 2     # a sliver
    linked = stitch_planes(stack, 0.2, trim=False)
    assert linked[1, 4, 3] == linked[0, 4, 3]
    assert linked[1, 4, 9] not in (0, linked[0, 4, 3])


def test_the_threshold_decides_what_continues():
    stack = np.zeros((2, 10, 10), np.int32)
    stack[0, 0:6, 0:6] = 1
    stack[1, 3:9, 3:9] = 1       # IoU 9 / 63 = 0.14
    assert len(np.unique(stitch_planes(stack, 0.1, trim=False))) == 2
    assert len(np.unique(stitch_planes(stack, 0.5, trim=False))) == 3


def _renumbered(per_plane, seed=0):
    """The same objects, every plane's ids shuffled."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(per_plane)
    for z, plane in enumerate(per_plane):
        ids = np.unique(plane)[1:]
        lut = np.zeros(int(plane.max()) + 1, per_plane.dtype)
        lut[ids] = rng.permutation(len(ids)) + 1000 * z + 1
        out[z] = lut[plane]
    return out


def test_links_and_ids_depend_only_on_the_objects_not_on_their_numbering(volume):
    per_plane = per_plane_labels(volume[1])
    np.testing.assert_array_equal(stitch_planes(_renumbered(per_plane)), stitch_planes(per_plane))


def _stacked_nuclei():
    """Two discs stacked along z at the same place: the lower one's first section lies inside the upper
    one's last, and a third nucleus beside them with a flat (cylindrical) profile."""
    yy, xx = np.mgrid[:40, :40]
    stack = np.zeros((10, 40, 40), np.int32)
    for z, (r_upper, r_lower) in enumerate(zip((2, 4, 5, 4, 2), (3, 5, 6, 5, 3))):
        stack[z][(yy - 12) ** 2 + (xx - 12) ** 2 <= r_upper ** 2] = 1
        stack[z + 5][(yy - 12) ** 2 + (xx - 12) ** 2 <= r_lower ** 2] = 2
    stack[:, 28:36, 26:36] = 3
    return stack


def test_nuclei_stacked_along_z_are_cut_where_the_section_area_dips():
    truth = _stacked_nuclei()
    per_plane = per_plane_labels(truth)
    assert len(np.unique(_linked_without_dips(per_plane))) - 1 == 2  # the overlap rule alone merges them
    linked = stitch_planes(per_plane)
    assert len(np.unique(linked)) - 1 == 3
    assert matching(truth, linked)["f1"] == 1.0


def test_linked_objects_lose_their_blurred_caps_and_single_plane_detections(tmp_path):
    """What a 2D model gives on a z-stack: nuclei (planes 1-4) with their blurred light picked up as
    small caps in planes 0 and 5, and a speck in one plane only. Linked, a nucleus keeps its four
    sections and nothing else remains; in a zarr output too."""
    stack = np.zeros((6, 16, 32), np.int32)
    stack[1:5, 2:8, 20:26] = 3          # a second nucleus, so that the median object spans 4 planes
    stack[1:5, 4:10, 4:10] = 1          # the nucleus: 36 px per section
    stack[4, 4:10, 4:10] = 0
    stack[4, 5:9, 5:8] = 1              # its last true section: 12 px, a third of its largest: kept
    stack[[0, 5], 6:8, 6:8] = 1         # caps of 4 px (< 0.3 of 36): dropped
    stack[2, 12:15, 12:15] = 2          # a 9 px speck seen in one plane: dropped
    linked = stitch_planes(stack)
    nucleus = linked[1, 6, 6]
    assert nucleus > 0 and set(np.unique(linked)) == {0, nucleus, linked[1, 4, 22]}
    inside = np.isin(np.arange(6), [1, 2, 3, 4])[:, None, None]
    np.testing.assert_array_equal(linked > 0, inside & (stack > 0) & (stack != 2))
    assert len(np.unique(stitch_planes(stack, trim=False))) == 4  # the links alone keep them
    out = zarr.open_array(str(tmp_path / "t.zarr"), mode="w", shape=stack.shape, chunks=(1, 16, 32), dtype="i4")
    np.testing.assert_array_equal(stitch_planes(stack, out=out)[:], linked)


def test_a_stack_of_far_apart_planes_keeps_its_single_plane_objects():
    """Planes so far apart that each nucleus is seen in one or two of them: nothing is dropped as a
    single-plane detection (the median object spans fewer than `DEEP_OBJECTS` planes)."""
    stack = np.zeros((3, 16, 40), np.int32)
    for k, x in enumerate(range(0, 40, 8)):
        stack[k % 3, 4:10, x:x + 6] = k + 1  # five nuclei, each in one plane
    stack[1, 4:10, 0:6] = 1                  # the first one also in the next plane
    linked = stitch_planes(stack)
    assert len(np.unique(linked)) - 1 == 5 and ((linked > 0) == (stack > 0)).all()


def _linked_without_dips(per_plane):
    from napari_unet.stitch import link_planes

    out, previous, next_id = np.zeros_like(per_plane), None, 1
    for z, plane in enumerate(per_plane):
        out[z], next_id = link_planes(previous, plane, DEFAULT_STITCH_THRESHOLD, next_id)
        previous = out[z]
    return out


@pytest.mark.parametrize("stack", ["volume", "stacked"])
def test_counts_taken_block_by_block_give_the_stitched_labels(volume, stack):
    """What a blockwise or dask run does: pieces numbered per block, objects numbered per plane in any
    order, overlaps counted per block; the lookup tables write exactly `stitch_planes`' labels (dips
    included)."""
    from napari_unet.blockwise import block_grid, core_region
    from napari_unet.stitchblocks import PlaneLinks

    labels = volume[1][:12] if stack == "volume" else _stacked_nuclei()
    per_plane = _renumbered(per_plane_labels(labels), seed=1)
    shape, block = per_plane.shape[1:], (40, 56) if stack == "volume" else (24, 16)
    positions = list(np.ndindex(*block_grid(shape, block)))
    links = PlaneLinks(DEFAULT_STITCH_THRESHOLD, len(positions), lambda i: (i,))
    pieces, luts, sizes = [], [], []
    for z, plane in enumerate(per_plane):
        for k, position in enumerate(positions, start=z * len(positions)):
            core = core_region(shape, block, position)
            ids, inverse = np.unique(plane[core], return_inverse=True)  # pieces 1..n, objects -> lut
            block_pieces = inverse.reshape(plane[core].shape) + (0 if ids[0] == 0 else 1)
            piece_ids = ids if ids[0] == 0 else np.concatenate([[0], ids])
            pieces.append((z, core, block_pieces))
            luts.append(piece_ids.astype(np.int64))
            sizes.append(np.bincount(block_pieces.ravel(), minlength=len(piece_ids)))
            links.put(k, *links.count(k, block_pieces, core, shape, lambda j: pieces[j * len(positions) +
                                                                                     k % len(positions)][2]))
    out = np.zeros_like(per_plane)
    for (z, core, block_pieces), lut in zip(pieces, links.luts(luts, sizes)):
        out[z][core] = lut[block_pieces]
    np.testing.assert_array_equal(out, stitch_planes(per_plane))


def _stitch_zarr(tmp_path, per_plane):
    """Stitch a zarr stack into a zarr array; the peak of Python memory traced meanwhile."""
    src = zarr.open_array(str(tmp_path / f"in{len(per_plane)}.zarr"), mode="w", shape=per_plane.shape,
                          chunks=(1,) + per_plane.shape[1:], dtype="i4")
    src[:] = per_plane
    out = zarr.open_array(str(tmp_path / f"out{len(per_plane)}.zarr"), mode="w", shape=per_plane.shape,
                          chunks=(1,) + per_plane.shape[1:], dtype="i4")
    tracemalloc.start()
    try:
        stitch_planes(src, out=out)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_stitching_into_zarr_streams_plane_by_plane(tmp_path, volume):
    small = per_plane_labels(volume[1])  # 32 planes of 96 x 96
    big = per_plane_labels(np.concatenate([volume[1]] * 4))  # 128 planes
    _, peak_small = _stitch_zarr(tmp_path, small)
    out, peak_big = _stitch_zarr(tmp_path, big)
    # the temporaries of one plane, whatever the number of planes; the stack would be 4.7 MB
    assert peak_big < 1.5 * peak_small + 256 * 1024 and peak_big < 0.25 * big.nbytes, (peak_small, peak_big)
    np.testing.assert_array_equal(out[:], stitch_planes(big))


def test_segment_links_planes_as_it_writes_them(tmp_path):
    model = random_model(depth=2, base=4, mode="instance", classes=(0, 1, 2))
    stack = np.random.default_rng(0).random((6, 64, 64)).astype(np.float32)
    per_plane = nu.segment(model, stack)
    out = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=stack.shape, chunks=(1, 64, 64), dtype="i4")
    nu.segment(model, stack, out=out, stitch_planes=True, workers=2)
    # the planes' own labels (fragments dropped, as on any image), then linked
    np.testing.assert_array_equal(out[:], stitch_planes(per_plane, DEFAULT_STITCH_THRESHOLD))
    assert nu.segment(model, stack, stitch_planes=None).max() == per_plane.max()  # off unless asked


@pytest.mark.parametrize("model, image, match", [
    (random_model(depth=2, base=4, mode="semantic"), np.zeros((3, 32, 32), np.float32), "semantic"),
    (random_model(dims=3, depth=2, base=4, mode="instance", classes=(0, 1, 2)), np.zeros((8, 32, 32), np.float32),
     "3D model"),
    (random_model(depth=2, base=4, mode="instance", classes=(0, 1, 2)), np.zeros((32, 32), np.float32),
     "single 2D plane"),
])
def test_stitching_is_refused_where_it_means_nothing(model, image, match):
    with pytest.raises(ValueError, match=match):
        nu.segment(model, image, stitch_planes=0.25)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.2, "0.3"])
def test_a_threshold_outside_0_1_is_refused(value):
    model = random_model(depth=2, base=4, mode="instance", classes=(0, 1, 2))
    with pytest.raises(ValueError, match="between 0 and 1"):
        nu.segment(model, np.zeros((2, 32, 32), np.float32), stitch_planes=value)


def test_probabilities_alone_cannot_be_stitched():
    model = random_model(depth=2, base=4, mode="instance", classes=(0, 1, 2))
    with pytest.raises(ValueError, match="links labels"):
        list(nu.iter_predict(model, np.zeros((2, 32, 32), np.float32), labels=False, probabilities=True,
                             stitch_planes=0.3))


def test_stitcher_keeps_only_the_previous_plane():
    s = PlaneStitcher()
    plane = np.zeros((6, 6), np.int32)
    plane[1:4, 1:4] = 7
    a, b = s.add(plane, (0,)), s.add(plane, (1,))
    assert a.max() == b.max() == 1 and s.next_id == 2
    assert s.add(plane, (5,)).max() == 2  # a gap in z: a new object


@pytest.fixture
def stack_files(tmp_path):
    from napari_unet import save_model

    instance = random_model(depth=2, base=4, mode="instance", classes=(0, 1, 2))
    save_model(instance, tmp_path / "inst.pt")
    save_model(random_model(depth=2, base=4), tmp_path / "sem.pt")
    np.save(tmp_path / "stack.npy", np.random.default_rng(0).random((5, 64, 64)).astype(np.float32))
    return tmp_path, instance


def test_cli_stitch_planes_with_and_without_a_value(stack_files, capsys):
    d, model = stack_files
    stack = np.load(d / "stack.npy")
    per_plane = nu.segment(model, stack)
    assert main(["predict", str(d / "inst.pt"), str(d / "stack.npy"), "-o", str(d / "a.zarr"), "--stitch-planes"]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(d / "a.zarr"), mode="r")[:], stitch_planes(per_plane))
    assert main(["predict", str(d / "inst.pt"), str(d / "stack.npy"), "-o", str(d / "b.npy"),
                 "--stitch-planes", "0.6"]) == 0
    np.testing.assert_array_equal(np.load(d / "b.npy"), stitch_planes(per_plane, 0.6))
    assert "linked across planes" in capsys.readouterr().err


def test_cli_refuses_stitching_a_semantic_model_in_one_line(stack_files, capsys):
    d, _ = stack_files
    assert main(["predict", str(d / "sem.pt"), str(d / "stack.npy"), "-o", str(d / "c.zarr"), "--stitch-planes"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "semantic" in err and len(err.splitlines()) == 1
    assert not (d / "c.zarr").exists()


def test_cli_refuses_an_overlap_of_0_and_says_how_to_turn_linking_off(stack_files, capsys):
    d, _ = stack_files
    assert main(["predict", str(d / "inst.pt"), str(d / "stack.npy"), "-o", str(d / "z.zarr"),
                 "--stitch-planes", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "between 0 and 1" in err and err.endswith("leave out --stitch-planes") and "None" not in err
    assert not (d / "z.zarr").exists()


def test_block_by_block_labels_are_linked_across_planes_too(stack_files, capsys):
    d, model = stack_files
    stack = np.load(d / "stack.npy")
    assert main(["predict", str(d / "inst.pt"), str(d / "stack.npy"), "-o", str(d / "blocks.zarr"), "--block", "32",
                 "--stitch-planes"]) == 0
    blocks = zarr.open_array(str(d / "blocks.zarr"), mode="r")[:]
    from napari_unet.blockwise import segment_blockwise

    per_plane = segment_blockwise(model, stack, block=32)  # the same blocks, not linked
    # linked from counts taken block by block, in the one relabelling pass: the same ids as stitching
    # the finished planes
    np.testing.assert_array_equal(blocks, stitch_planes(per_plane))
    # blocks as large as the planes: the in-process stitched labels themselves
    assert main(["predict", str(d / "inst.pt"), str(d / "stack.npy"), "-o", str(d / "whole.zarr"), "--block", "64",
                 "--stitch-planes"]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(d / "whole.zarr"), mode="r")[:],
                                  nu.segment(model, stack, stitch_planes=True))


def test_fragments_are_kept_when_asked_in_the_api_blockwise_and_from_the_cli(stack_files, capsys):
    """Fragments are dropped by default; ``min_fraction=0`` / ``--min-fraction 0`` keeps every object (small
    objects among big ones), and a fraction out of range is refused in one line before any file exists."""
    from napari_unet.blockwise import segment_blockwise
    from napari_unet.postprocess import instance_labels

    d, model = stack_files
    stack = np.load(d / "stack.npy")
    prob = nu.predict(model, stack)
    kept = [instance_labels(prob[:, z], min_fraction=0) for z in range(len(stack))]
    default, everything = nu.segment(model, stack), nu.segment(model, stack, min_fraction=0)
    assert (everything > 0).sum() > (default > 0).sum()  # this noise has fragments, dropped by default
    for z, plane in enumerate(kept):
        np.testing.assert_array_equal(everything[z] > 0, plane > 0)
        assert len(np.unique(everything[z])) == len(np.unique(plane))
    blocks_all = segment_blockwise(model, stack, block=32, min_fraction=0)
    assert (blocks_all > 0).sum() > (segment_blockwise(model, stack, block=32) > 0).sum()
    assert main(["predict", str(d / "inst.pt"), str(d / "stack.npy"), "-o", str(d / "all.npy"),
                 "--min-fraction", "0"]) == 0
    np.testing.assert_array_equal(np.load(d / "all.npy"), everything)
    capsys.readouterr()
    assert main(["predict", str(d / "inst.pt"), str(d / "stack.npy"), "-o", str(d / "bad.npy"),
                 "--min-fraction", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--min-fraction" in err and len(err.splitlines()) == 1
    assert not (d / "bad.npy").exists()


def thresholding_model():
    """A 2D instance model whose objects are exactly the image's pixels above 0.5 (hand-set weights:
    the intensity goes through the first block, the skip and the last block; the head thresholds it),
    so a stack's per-plane objects are known and the same in every path (in process, blocks, cluster)."""
    import torch

    from napari_unet.model import Model

    model = Model.untrained(dims=2, depth=2, base_channels=4, mode="instance", class_ids=(0, 1, 2), seed=0)
    net = model.network
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.zero_(), m.running_var.fill_(1.0), m.weight.fill_(1.0), m.bias.zero_()
                m.eps = 0.0
        for block in (net.down[0], net.up_blocks[-1]):
            block[0].weight[0, 0, 1, 1] = block[3].weight[0, 0, 1, 1] = 1.0
        net.head.weight[:2, 0, 0, 0] = torch.tensor([-20.0, 20.0])  # background / interior: below / above 0.5
        net.head.bias[:] = torch.tensor([10.0, -10.0, -50.0])      # never boundary
    return model


def trimmed_stack():
    """Six planes: two nuclei through the stack, one with a small cap on top (plane 5, 25 px against
    144), and an object seen in plane 2 only. Returns the image and the objects trimming drops."""
    image = np.zeros((6, 48, 64), np.float32)
    image[:5, 4:16, 4:16] = 1      # nucleus A, planes 0-4
    image[5, 6:11, 6:11] = 1       # its blurred cap
    image[:, 28:40, 4:16] = 1      # nucleus B, every plane
    image[2, 20:32, 40:52] = 1     # seen in one plane only
    dropped = np.zeros(image.shape, bool)
    dropped[5, 6:11, 6:11] = dropped[2, 20:32, 40:52] = True
    return image, dropped


def test_thresholding_model_gives_the_bright_pixels_as_objects():
    image, _ = trimmed_stack()
    per_plane = nu.segment(thresholding_model(), image)
    np.testing.assert_array_equal(per_plane > 0, image > 0.5)
    assert [len(np.unique(p)) - 1 for p in per_plane] == [2, 2, 3, 2, 2, 2]


def test_trimming_can_be_turned_off_in_process_and_block_by_block():
    """By default the cap and the single-plane object are dropped; ``stitch_trim=False`` keeps every
    linked object whole, with the same labels as `stitch_planes(..., trim=False)`, blockwise too."""
    from napari_unet.blockwise import segment_blockwise

    model, (image, dropped) = thresholding_model(), trimmed_stack()
    per_plane = nu.segment(model, image)
    trimmed = nu.segment(model, image, stitch_planes=True)
    np.testing.assert_array_equal(trimmed > 0, (image > 0.5) & ~dropped)
    untrimmed = nu.segment(model, image, stitch_planes=True, stitch_trim=False)
    np.testing.assert_array_equal(untrimmed > 0, image > 0.5)
    np.testing.assert_array_equal(untrimmed, stitch_planes(per_plane, trim=False))
    assert len(np.unique(untrimmed)) - 1 == 3 and untrimmed[5, 8, 8] == untrimmed[0, 8, 8]  # the cap: A's
    for block in (32, 64):  # blocks smaller than the planes, and a block per plane
        np.testing.assert_array_equal(segment_blockwise(model, image, block=block, stitch_planes=True), trimmed)
        np.testing.assert_array_equal(segment_blockwise(model, image, block=block, stitch_planes=True,
                                                        stitch_trim=False), untrimmed)


def test_turning_trimming_off_without_linking_is_refused():
    model, (image, _) = thresholding_model(), trimmed_stack()
    with pytest.raises(ValueError, match=r"nothing is linked.*stitch_planes=True"):
        nu.segment(model, image, stitch_trim=False)
    with pytest.raises(TypeError, match="True or False"):
        nu.segment(model, image, stitch_planes=True, stitch_trim="no")
    assert nu.segment(model, image, stitch_trim=True).max() == 13  # the default, unlinked: accepted


def test_cli_no_stitch_trim_keeps_linked_objects_whole_and_is_refused_alone(tmp_path, capsys):
    model, (image, _) = thresholding_model(), trimmed_stack()
    nu.save_model(model, tmp_path / "m.pt")
    np.save(tmp_path / "stack.npy", image)
    untrimmed = nu.segment(model, image, stitch_planes=True, stitch_trim=False)
    args = ["predict", str(tmp_path / "m.pt"), str(tmp_path / "stack.npy"), "-o"]
    assert main(args + [str(tmp_path / "a.npy"), "--stitch-planes", "--no-stitch-trim"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), untrimmed)
    assert "not trimmed" in capsys.readouterr().err  # the plan says so before it runs
    assert main(args + [str(tmp_path / "b.zarr"), "--stitch-planes", "--no-stitch-trim", "--block", "32"]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "b.zarr"), mode="r")[:], untrimmed)
    assert main(args + [str(tmp_path / "c.npy"), "--stitch-planes"]) == 0
    assert (np.load(tmp_path / "c.npy") > 0).sum() < (untrimmed > 0).sum()  # trimmed by default
    capsys.readouterr()
    assert main(args + [str(tmp_path / "bad.npy"), "--no-stitch-trim"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert "--no-stitch-trim" in err and "--stitch-planes" in err and "stitch_" not in err, err
    assert not (tmp_path / "bad.npy").exists()
