"""Training on synthetic nuclei reaches a stated quality (short runs; the full protocol is
benchmarks/quality.py). These train for tens of seconds each."""
import pytest

import napari_unet as nu
from napari_unet.metrics import foreground_iou, matching, otsu_baseline
from napari_unet.synthetic import make_nuclei, make_strokes

pytestmark = pytest.mark.slow


def test_dense_instance_masks_of_half_an_image_segment_the_other_half():
    image, truth = make_nuclei((256, 384), seed=0)
    model = nu.train(image[:, :192], truth[:, :192], mode="instance", epochs=8, seed=0)
    pred = nu.segment(model, image[:, 192:])
    f1 = matching(truth[:, 192:], pred)["f1"]
    otsu = matching(truth[:, 192:], otsu_baseline(image[:, 192:]))["f1"]
    assert f1 >= 0.85, f1
    assert f1 > otsu + 0.05


def test_sparse_strokes_generalize_to_an_unseen_image_without_growing_objects():
    image, truth = make_nuclei((256, 256), seed=0)
    strokes = make_strokes(truth, fraction=0.06, seed=0)
    assert (strokes > 0).mean() < 0.08
    test_image, test_truth = make_nuclei((256, 256), seed=50)
    model = nu.train(image, strokes, mode="semantic", epochs=8, seed=0)
    pred = nu.segment(model, test_image)
    iou = foreground_iou(test_truth, pred)
    assert iou >= 0.80, iou
    assert iou > foreground_iou(test_truth, otsu_baseline(test_image)) + 0.05
    # no over-segmentation: predicted foreground area close to the truth's
    assert (pred > 0).sum() / (test_truth > 0).sum() < 1.15
