"""Tests of the harder synthetic stand-in (`make_nuclei(realism=...)`) and the annotator outlines."""

import hashlib

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.metrics import iou_table
from napari_unet.synthetic import REALISM, Realism, annotator_labels, make_nuclei

SHAPE = (192, 192)


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def test_standard_is_the_plain_stand_in_bit_for_bit():
    # the tests, the demo and the sample data depend on these exact images (hash taken before realism existed)
    image, labels = make_nuclei((128, 128), seed=7)
    assert _digest(image, labels) == "13f41f1f5a26b7fc"
    for same in ("standard", Realism(), Realism(defocus_sigma=(2.0, 3.0))):
        np.testing.assert_array_equal(make_nuclei((128, 128), seed=7, realism=same)[0], image)


def test_hard_preset_is_deterministic_and_differs_from_standard():
    a = make_nuclei(SHAPE, seed=3, realism="hard")
    b = make_nuclei(SHAPE, seed=3, realism=REALISM["hard"])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], make_nuclei(SHAPE, seed=3)[0])


@pytest.mark.parametrize("piece", [dict(dim=0.5), dict(defocus=0.5), dict(debris=5.0)])
def test_image_pieces_keep_the_layout(piece):
    # dim, defocus and debris change the image only: the same nuclei, the same labels
    img0, lab0 = make_nuclei(SHAPE, seed=4)
    img1, lab1 = make_nuclei(SHAPE, seed=4, realism=Realism(**piece))
    np.testing.assert_array_equal(lab1, lab0)
    assert not np.array_equal(img1, img0)


def test_debris_is_bright_but_never_labelled():
    img0, lab = make_nuclei(SHAPE, seed=5)
    img1, _ = make_nuclei(SHAPE, seed=5, realism=Realism(debris=8.0))
    far = ndi.distance_transform_edt(lab == 0) > 8  # well away from every nucleus
    brighter = (img1.astype(float) - img0)[far]
    assert brighter.max() > 300  # specks as bright as nuclei (peak ~700 photons)
    spots, n = ndi.label((img1.astype(float) - img0 > 150) & far)
    assert n >= 5  # several pieces of debris, each small
    assert np.bincount(spots.ravel())[1:].max() < 150


def test_dim_nuclei_are_near_background():
    img, lab = make_nuclei(SHAPE, seed=6, realism=Realism(dim=0.5))
    img0, _ = make_nuclei(SHAPE, seed=6)
    means = ndi.mean(img.astype(float), lab, np.arange(1, lab.max() + 1))
    means0 = ndi.mean(img0.astype(float), lab, np.arange(1, lab.max() + 1))
    # each nucleus's own background: the ring 3-8 px around it (illumination is uneven)
    dist, idx = ndi.distance_transform_edt(lab == 0, return_indices=True)
    ring = np.where((dist > 3) & (dist < 8), lab[tuple(idx)], 0)
    background = ndi.median(img.astype(float), ring, np.arange(1, lab.max() + 1))
    contrast = (means - background) / (means0 - background)
    assert 0.35 < np.mean(contrast < 0.3) < 0.65  # about half the nuclei lost most of their contrast
    assert np.median(means - background) > 0  # dim, not gone


def test_defocus_blurs_the_chosen_nuclei_and_keeps_their_photons():
    img0, lab = make_nuclei(SHAPE, seed=8, dtype=np.float32)
    img1, _ = make_nuclei(SHAPE, seed=8, dtype=np.float32, realism=Realism(defocus=1.0, defocus_sigma=(3, 3)))
    edges = ndi.binary_dilation(lab > 0, iterations=2) & ~ndi.binary_erosion(lab > 0, iterations=2)
    grad = lambda im: np.hypot(*np.gradient(ndi.gaussian_filter(im, 1.0)))[edges].mean()  # noqa: E731
    assert grad(img1) < 0.8 * grad(img0)  # softer edges
    assert abs(img1.sum() / img0.sum() - 1) < 0.01  # the same light, spread out


def test_clumps_make_more_and_larger_touching_clusters():
    def clusters(lab):
        fg, n = ndi.label(lab > 0)
        per = [len(np.unique(lab[fg == k])) for k in range(1, n + 1)]
        return np.mean(np.array(per) > 1), max(per)

    lab0 = make_nuclei((384, 384), seed=9)[1]
    lab1 = make_nuclei((384, 384), seed=9, realism=Realism(clumps=0.6))[1]
    (frac0, big0), (frac1, big1) = clusters(lab0), clusters(lab1)
    assert frac1 > frac0 and big1 > big0


def test_hard_works_in_3d():
    image, labels = make_nuclei((16, 64, 64), seed=1, realism="hard")
    assert image.shape == labels.shape == (16, 64, 64) and labels.max() > 0
    ann = annotator_labels(labels, seed=1)
    assert ann.shape == labels.shape and set(np.unique(ann)) == set(np.unique(labels))


def test_realism_validation():
    with pytest.raises(ValueError, match="realism must be one of"):
        make_nuclei((64, 64), seed=0, realism="harder")
    with pytest.raises(ValueError, match="dim"):
        Realism(dim=1.5)


# --------------------------------------------------------------------------- annotator outlines
@pytest.fixture(scope="module")
def truth():
    return make_nuclei((256, 256), seed=2, touching=0.5)[1]


def test_annotator_outlines_near_but_not_on_the_true_edges(truth):
    before = truth.copy()
    ann = annotator_labels(truth, seed=0)
    np.testing.assert_array_equal(truth, before)  # input untouched
    np.testing.assert_array_equal(ann, annotator_labels(truth, seed=0))
    assert set(np.unique(ann)) == set(np.unique(truth))  # every object kept, no new one
    gt_ids, pred_ids, pairs, iou = iou_table(truth, ann)
    same = gt_ids[pairs[:, 0]] == pred_ids[pairs[:, 1]]
    iou = iou[same]
    assert len(iou) == truth.max()
    assert iou.min() > 0.5 and iou.mean() < 0.95  # close, but off by about a pixel
    grown = (ann > 0) & (truth == 0)
    shrunk = (truth > 0) & (ann == 0)
    assert grown.sum() > 0.03 * (truth > 0).sum() and shrunk.sum() > 0.03 * (truth > 0).sum()


def test_annotator_keeps_shared_borders_and_never_steals(truth):
    ann = annotator_labels(truth, offset=2.0, seed=1)
    # a pixel of one object never goes to another
    moved = (ann > 0) & (truth > 0) & (ann != truth)
    assert not moved.any()
    # where two objects touch, both sides of the border stay as they were
    a, b = truth[:, :-1], truth[:, 1:]
    seam = (a != b) & (a > 0) & (b > 0)
    assert seam.sum() > 10
    np.testing.assert_array_equal(ann[:, :-1][seam], a[seam])
    np.testing.assert_array_equal(ann[:, 1:][seam], b[seam])


def test_annotator_with_nothing_to_move_is_a_copy(truth):
    np.testing.assert_array_equal(annotator_labels(truth, offset=0, wobble=0, smooth=0, seed=0), truth)
