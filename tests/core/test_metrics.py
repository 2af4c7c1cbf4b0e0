"""Tests of the instance/semantic metrics and the Otsu baseline."""

import numpy as np
import pytest

from napari_unet.metrics import foreground_iou, iou_table, matching, mean_f1, otsu_baseline
from napari_unet.synthetic import make_nuclei


def _squares(shape=(40, 40)):
    """Three separated squares of different sizes."""
    lab = np.zeros(shape, np.int32)
    lab[2:12, 2:12] = 1
    lab[20:30, 5:15] = 2
    lab[5:25, 25:35] = 3
    return lab


# --------------------------------------------------------------------------- matching
def test_perfect_match_with_other_ids_and_dtypes():
    gt = _squares().astype(np.uint8)
    pred = np.zeros(gt.shape, np.int64)
    for new, old in zip((70, 5, 1000), (1, 2, 3)):
        pred[gt == old] = new
    m = matching(gt, pred)
    assert m == dict(f1=1.0, precision=1.0, recall=1.0, tp=3, fp=0, fn=0, mean_matched_iou=1.0)
    assert isinstance(m["tp"], int) and isinstance(m["f1"], float)


def test_inputs_not_modified():
    gt = _squares()
    pred = np.roll(gt, 1, axis=0)
    g0, p0 = gt.copy(), pred.copy()
    matching(gt, pred)
    foreground_iou(gt, pred)
    np.testing.assert_array_equal(gt, g0)
    np.testing.assert_array_equal(pred, p0)


def test_split_object_in_halves_matches_nothing():
    gt = np.zeros((20, 20), np.int32)
    gt[5:15, 5:15] = 1
    pred = np.zeros_like(gt)
    pred[5:15, 5:10] = 1
    pred[5:15, 10:15] = 2  # each half has IoU 0.5 exactly: not > 0.5
    m = matching(gt, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 2, 1)
    assert m["f1"] == 0.0 and m["mean_matched_iou"] == 0.0


def test_uneven_split_keeps_the_larger_part():
    gt = np.zeros((20, 20), np.int32)
    gt[5:15, 5:15] = 1
    pred = np.zeros_like(gt)
    pred[5:15, 5:12] = 1  # IoU 0.7
    pred[5:15, 12:15] = 2
    m = matching(gt, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(1.0)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["mean_matched_iou"] == pytest.approx(0.7)


def test_merged_objects():
    gt = np.zeros((20, 30), np.int32)
    gt[5:15, 2:12] = 1
    gt[5:15, 12:22] = 2  # two equal touching squares
    pred = (gt > 0).astype(np.int32)  # merged into one
    m = matching(gt, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 2)
    # unequal sizes: the merge still matches the big one
    gt[5:15, 2:16] = 1
    gt[5:15, 16:22] = 2
    m = matching(gt, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 1)
    assert m["mean_matched_iou"] == pytest.approx(0.7)


def test_empty_cases():
    empty = np.zeros((16, 16), np.uint16)
    objs = _squares((16, 16))
    assert matching(empty, empty)["f1"] == 1.0
    m = matching(empty, objs)
    assert m["f1"] == 0.0 and m["precision"] == 0.0 and m["fp"] == objs.max() and m["fn"] == 0
    m = matching(objs, empty)
    assert m["f1"] == 0.0 and m["recall"] == 0.0 and m["fn"] == objs.max() and m["fp"] == 0
    assert foreground_iou(empty, empty) == 1.0
    assert foreground_iou(objs, empty) == 0.0


def test_threshold_behaviour():
    gt = np.zeros((20, 20), np.int32)
    gt[0:10, 0:10] = 1
    pred = np.zeros_like(gt)
    pred[0:10, 0:6] = 1  # IoU 0.6
    assert matching(gt, pred, iou_threshold=0.5)["tp"] == 1
    assert matching(gt, pred, iou_threshold=0.6)["tp"] == 0  # strictly greater
    assert matching(gt, pred, iou_threshold=0.7)["tp"] == 0
    # low thresholds: still one-to-one
    pred[0:10, 6:10] = 2  # IoU 0.4
    m = matching(gt, pred, iou_threshold=0.3)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0)
    assert m["mean_matched_iou"] == pytest.approx(0.6)
    with pytest.raises(ValueError):
        matching(gt, pred, iou_threshold=1.0)


def test_low_threshold_maximises_the_number_of_matches():
    # A overlaps p1 (IoU .625) and p2 (IoU .25); B only overlaps p1 (IoU .19).
    # Greedy by IoU would take (A, p1) and leave B unmatched; optimal is (A, p2), (B, p1).
    gt = np.zeros((1, 40), np.int32)
    pred = np.zeros_like(gt)
    gt[0, 0:20] = 1
    gt[0, 20:26] = 2
    pred[0, 5:24] = 1
    pred[0, 0:5] = 2
    m = matching(gt, pred, iou_threshold=0.15)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 0)
    assert m["mean_matched_iou"] == pytest.approx((0.25 + 4 / 21) / 2)
    # at the default threshold only the good pair counts
    m = matching(gt, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1)


def test_3d_and_shape_mismatch():
    gt = np.zeros((6, 10, 10), np.int32)
    gt[1:4, 1:5, 1:5] = 1
    gt[2:5, 6:9, 6:9] = 2
    assert matching(gt, gt)["f1"] == 1.0
    with pytest.raises(ValueError):
        matching(gt, gt[0])
    with pytest.raises(TypeError):
        matching(gt.astype(float) + 0.5, gt)


def test_iou_table_against_brute_force():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (30, 30))
    pred = rng.integers(0, 4, (30, 30)) * 3
    g_ids, p_ids, pairs, iou = iou_table(gt, pred)
    np.testing.assert_array_equal(g_ids, [1, 2, 3, 4])
    np.testing.assert_array_equal(p_ids, [3, 6, 9])
    got = {(g_ids[i], p_ids[j]): v for (i, j), v in zip(pairs, iou)}
    for g in g_ids:
        for p in p_ids:
            a, b = gt == g, pred == p
            expected = (a & b).sum() / (a | b).sum()
            assert got.get((g, p), 0.0) == pytest.approx(expected)


# --------------------------------------------------------------------------- foreground_iou
def test_foreground_iou_hand_example():
    gt = np.zeros((10, 10), np.int32)
    pred = np.zeros((10, 10), np.uint8)
    gt[0:4, 0:5] = 1  # 20 px
    gt[6:8, 6:8] = 2  # 4 px
    pred[0:4, 0:10] = 9  # 40 px, overlaps 20
    assert foreground_iou(gt, pred) == pytest.approx(20 / 44)


# --------------------------------------------------------------------------- otsu_baseline
def test_otsu_baseline_on_simple_image():
    img = np.full((40, 40), 10.0)
    img[5:15, 5:15] = 100
    img[20:30, 22:35] = 80
    img[35:37, 35:37] = 120  # 4 px: removed
    lab = otsu_baseline(img)
    assert lab.dtype == np.int32
    np.testing.assert_array_equal(np.unique(lab), [0, 1, 2])
    expected = np.zeros((40, 40), np.int32)
    expected[5:15, 5:15] = 1
    expected[20:30, 22:35] = 2
    assert matching(expected, lab)["f1"] == 1.0
    assert not otsu_baseline(np.zeros((8, 8))).any()  # constant image
    lab3 = otsu_baseline(np.stack([img] * 2))  # the 8-voxel speck is removed
    assert lab3.shape == (2, 40, 40) and lab3.max() == 2


def test_otsu_baseline_in_calibrated_band():
    """The generator is calibrated so that Otsu is as imperfect as on real images."""
    image, labels = make_nuclei((512, 512), seed=0)
    pred = otsu_baseline(image)
    f1 = matching(labels, pred)["f1"]
    fg = foreground_iou(labels, pred)
    # band measured on real images: F1 0.60-0.68, IoU 0.66-0.74 (small tolerance for one seed)
    assert 0.57 <= f1 <= 0.71
    assert 0.63 <= fg <= 0.77


# --------------------------------------------------------------------------- mean F1 over IoU 0.5-0.9
def test_mean_f1_rewards_outlines_that_fit():
    from skimage.morphology import erosion

    _, truth = make_nuclei((128, 128), seed=3)
    assert mean_f1(truth, truth.astype(np.uint16) * 2) == 1.0
    shrunk = truth.copy()
    for _ in range(2):  # every object loses a rim of about two pixels: all still found, outlines too small
        shrunk = erosion(shrunk)
    f1_05 = matching(truth, shrunk)["f1"]
    score = mean_f1(truth, shrunk)
    assert f1_05 > 0.9
    assert score < f1_05 - 0.2
    thresholds = np.arange(0.5, 0.91, 0.05)
    assert score == pytest.approx(np.mean([matching(truth, shrunk, t)["f1"] for t in thresholds]))
    with pytest.raises(ValueError):
        mean_f1(truth, shrunk, thresholds=[0.5, 1.0])
