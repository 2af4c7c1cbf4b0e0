"""Tests of the synthetic nucleus generator and the simulated painted strokes."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.synthetic import make_nuclei, make_sample, make_strokes


def _touching_ids(labels):
    """Ids of the nuclei that share a face with a different nucleus."""
    ids = set()
    for ax in range(labels.ndim):
        a = np.moveaxis(labels, ax, 0)[:-1]
        b = np.moveaxis(labels, ax, 0)[1:]
        m = (a != b) & (a > 0) & (b > 0)
        ids.update(np.unique(a[m]).tolist())
        ids.update(np.unique(b[m]).tolist())
    return ids


@pytest.fixture(scope="module")
def sample512():
    image, labels = make_nuclei((512, 512), seed=0)
    return image, labels


# --------------------------------------------------------------------------- make_nuclei
def test_same_seed_same_output_different_seed_different_output():
    a_img, a_lab = make_nuclei((128, 128), seed=7)
    b_img, b_lab = make_nuclei((128, 128), seed=7)
    c_img, c_lab = make_nuclei((128, 128), seed=8)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_lab, c_lab)


@pytest.mark.parametrize("shape", [(96, 128), (16, 64, 48)])
def test_shapes_and_dtypes(shape):
    image, labels = make_nuclei(shape, seed=1)
    assert image.shape == shape and labels.shape == shape
    assert image.dtype == np.uint16
    assert labels.dtype == np.int32
    assert labels.max() > 0


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int32])
def test_requested_image_dtype(dtype):
    image, _ = make_nuclei((96, 96), seed=2, dtype=dtype)
    assert image.dtype == dtype
    assert np.isfinite(image).all()
    assert image.max() > image.min()
    if dtype == np.uint8:  # rescaled into range, not saturated
        assert image.max() < 255


@pytest.mark.parametrize("shape", [(512, 512), (24, 96, 96)])
def test_labels_consecutive_and_each_nucleus_one_piece(shape, sample512):
    labels = sample512[1] if shape == (512, 512) else make_nuclei(shape, seed=3)[1]
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(labels.max() + 1))
    structure = ndi.generate_binary_structure(labels.ndim, labels.ndim)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        _, n = ndi.label(labels[sl] == i, structure=structure)
        assert n == 1, f"nucleus {i} is split into {n} pieces"


def test_realistic_count_and_touching_fraction(sample512):
    _, labels = sample512
    n = labels.max()
    assert 80 <= n <= 150
    touching = _touching_ids(labels)
    assert len(touching) >= 2  # touching pairs exist
    assert 0.15 <= len(touching) / n <= 0.45


def test_touching_zero_gives_separated_nuclei():
    _, labels = make_nuclei((256, 256), seed=4, touching=0.0)
    assert labels.max() > 10
    assert not _touching_ids(labels)


def test_touching_nuclei_show_a_dip_at_their_border(sample512):
    image, labels = sample512
    img = ndi.gaussian_filter(image.astype(float), 1.0)
    seam = np.zeros(labels.shape, bool)
    for ax in range(2):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        m = (labels[tuple(a)] != labels[tuple(b)]) & (labels[tuple(a)] > 0) & (labels[tuple(b)] > 0)
        seam[tuple(a)] |= m
        seam[tuple(b)] |= m
    dist = ndi.distance_transform_edt(~seam)
    near = (dist >= 3) & (dist <= 5) & (labels > 0)
    assert img[seam].mean() < 0.97 * img[near].mean()


def test_every_nucleus_is_visible_but_illumination_is_uneven(sample512):
    image, labels = sample512
    img = image.astype(float) - 100.0  # camera offset
    fg = labels > 0
    far_bg = ndi.distance_transform_edt(~fg) > 8
    # each nucleus is clearly brighter than its local surroundings
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        sl = tuple(slice(max(s.start - 12, 0), s.stop + 12) for s in sl)
        m = labels[sl] == i
        d = ndi.distance_transform_edt(~m)
        ring = (d > 4) & (d < 10) & far_bg[sl]
        if ring.sum() < 10:
            continue
        assert np.median(img[sl][m]) > 1.3 * np.median(img[sl][ring])
    # but the background varies a lot across the field of view
    bg = img[far_bg]
    assert np.percentile(bg, 95) > 2.0 * np.percentile(bg, 5)


def test_input_shape_validation():
    with pytest.raises(ValueError):
        make_nuclei((10,))
    with pytest.raises(ValueError):
        make_nuclei((4, 4, 4, 4))


# --------------------------------------------------------------------------- make_strokes
def test_strokes_deterministic_and_input_untouched(sample512):
    _, labels = sample512
    before = labels.copy()
    a = make_strokes(labels, seed=3)
    b = make_strokes(labels, seed=3)
    np.testing.assert_array_equal(labels, before)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, make_strokes(labels, seed=4))


@pytest.mark.parametrize("fraction", [0.03, 0.06, 0.1])
def test_strokes_fraction_split_and_distance(sample512, fraction):
    _, labels = sample512
    strokes = make_strokes(labels, fraction=fraction, seed=1)
    assert strokes.dtype == np.uint8 and strokes.shape == labels.shape
    assert set(np.unique(strokes).tolist()) <= {0, 1, 2}
    annotated = strokes > 0
    assert 0.7 * fraction <= annotated.mean() <= 1.3 * fraction
    bg_share = (strokes == 1).sum() / annotated.sum()
    assert 0.5 <= bg_share <= 0.8
    # background strokes stay away from the nuclei
    dist = ndi.distance_transform_edt(labels == 0)
    assert dist[strokes == 1].min() >= 4
    # painted nuclei are complete and only nuclei are painted as such
    assert (labels[strokes == 2] > 0).all()
    painted = np.unique(labels[strokes == 2])
    assert len(painted) >= 3
    for i in painted:
        assert (strokes[labels == i] == 2).all()


def test_background_strokes_are_thick_curvy_lines(sample512):
    _, labels = sample512
    strokes = make_strokes(labels, seed=2)
    bg, n = ndi.label(strokes == 1)
    assert 2 <= n <= 20  # a few strokes
    # thick: eroding by 2 px keeps most of every stroke
    eroded = ndi.binary_erosion(strokes == 1, iterations=2)
    assert eroded.sum() > 0.3 * (strokes == 1).sum()


def test_strokes_3d_painted_in_a_few_planes():
    _, labels = make_nuclei((30, 128, 128), seed=5)
    strokes = make_strokes(labels, fraction=0.06, seed=5)
    assert strokes.shape == labels.shape and strokes.dtype == np.uint8
    planes = [z for z in range(labels.shape[0]) if strokes[z].any()]
    assert 1 <= len(planes) <= 5
    dist_ok = True
    for z in planes:
        assert 0.7 * 0.06 <= (strokes[z] > 0).mean() <= 1.3 * 0.06
        d = ndi.distance_transform_edt(labels[z] == 0)
        dist_ok &= bool((d[strokes[z] == 1] >= 4).all())
        for i in np.unique(labels[z][strokes[z] == 2]):
            assert i > 0
            assert (strokes[z][labels[z] == i] == 2).all()
    assert dist_ok


def test_strokes_without_nuclei_paint_background_only():
    labels = np.zeros((128, 128), np.int32)
    strokes = make_strokes(labels, fraction=0.06, seed=0)
    assert not (strokes == 2).any()
    assert 0.7 * 0.06 <= (strokes == 1).mean() <= 1.3 * 0.06


# --------------------------------------------------------------------------- make_sample
def test_make_sample_consistent_and_deterministic():
    image, strokes, labels = make_sample((128, 160), seed=11)
    image2, strokes2, labels2 = make_sample((128, 160), seed=11)
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(strokes, strokes2)
    np.testing.assert_array_equal(labels, labels2)
    assert image.shape == strokes.shape == labels.shape == (128, 160)
    assert image.dtype == np.uint16 and strokes.dtype == np.uint8 and labels.dtype == np.int32
    assert (labels[strokes == 2] > 0).all()
    assert (labels[strokes == 1] == 0).all()
