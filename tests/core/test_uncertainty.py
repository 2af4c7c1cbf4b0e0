"""Where the model hesitates: the map, the suggestions of where to paint, and the live preview's map."""
import threading

import numpy as np
import pytest
from scipy import ndimage as ndi

import napari_unet as nu
from napari_unet import uncertainty
from napari_unet.train import Latest, PreviewRequest, iter_train_live
from napari_unet.train.live import preview_window
from napari_unet.uncertainty import hesitation, predict_hesitation, suggest_strokes

TINY = dict(depth=2, base_channels=8, patch_size=32, batch_size=4)


def test_a_tie_is_one_a_certain_class_zero_whatever_the_number_of_classes():
    p = np.zeros((3, 2, 3), np.float32)
    p[:, 0, 0] = (0.4, 0.4, 0.2)  # two classes tie
    p[:, 0, 1] = (0.0, 1.0, 0.0)  # certain
    p[:, 0, 2] = (0.7, 0.2, 0.1)  # leaning
    p[:, 1] = 1 / 3  # all three tie
    h = hesitation(p)
    assert h.shape == (2, 3) and h.dtype == np.float32
    np.testing.assert_allclose(h, [[1.0, 0.0, 0.5], [1.0, 1.0, 1.0]], atol=1e-6)


def test_any_dtype_or_scale_3d_and_lazy_inputs_give_the_same_map_and_are_left_unchanged(monkeypatch):
    rng = np.random.default_rng(0)
    p = rng.dirichlet((1.0, 1.0), size=(4, 20, 24)).transpose(3, 0, 1, 2)  # (2, Z, Y, X) float64
    kept = p.copy()
    reference = hesitation(p)
    assert reference.shape == (4, 20, 24) and 0 <= reference.min() and reference.max() <= 1
    np.testing.assert_array_equal(p, kept)  # the caller's array is only read
    as_bytes = np.round(p * 255).astype(np.uint8)  # probabilities stored as 0-255
    np.testing.assert_allclose(hesitation(as_bytes), reference, atol=2 / 255 + 1e-6)
    dask = pytest.importorskip("dask.array")
    monkeypatch.setattr(uncertainty, "_SLAB_BYTES", 1)  # one plane at a time
    np.testing.assert_allclose(hesitation(dask.from_array(p, chunks=(2, 1, 20, 24))), reference, atol=1e-6)
    out = np.full((4, 20, 24), -1.0, np.float32)
    assert hesitation(p, out=out) is out and np.allclose(out, reference)


@pytest.mark.parametrize("bad, message", [
    (np.ones((1, 4, 4)), "classes >= 2"),
    (np.full((2, 4, 4), np.nan), "NaN"),
    (-np.ones((2, 4, 4)), "logits"),
    (np.array([["a", "b"], ["c", "d"]]), "numbers"),
])
def test_bad_probabilities_are_refused_with_a_fix(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        hesitation(bad)


def test_a_trained_model_hesitates_at_object_borders_and_is_sure_inside_and_far_away(blobs):
    image, strokes, truth = blobs
    model = nu.train(image, strokes, mode="semantic", epochs=6, seed=0, **TINY)
    h = predict_hesitation(model, image)
    assert h.shape == image.shape and h.dtype == np.float32
    fg = truth > 0
    border = ndi.binary_dilation(fg, iterations=1) & ~ndi.binary_erosion(fg, iterations=1)
    inside = ndi.binary_erosion(fg, iterations=3)
    far = ~ndi.binary_dilation(fg, iterations=6)
    assert h[border].mean() > 3 * max(h[inside].mean(), h[far].mean())
    assert np.median(h[inside]) < 0.25 and np.median(h[far]) < 0.25
    # the map is the one of the probabilities `predict` returns: the same pipeline
    np.testing.assert_allclose(h, hesitation(nu.predict(model, image)), atol=1e-6)


def test_suggestions_go_to_the_most_hesitant_free_spots_and_never_onto_painted_pixels():
    h = np.zeros((64, 80), np.float32)
    h[10:16, 10:16] = 1.0  # hesitant, but painted over below
    h[40:46, 50:56] = 0.9  # hesitant, free
    h[50:54, 10:14] = 0.6  # a little less, free
    annotated = np.zeros((64, 80), np.uint8)
    annotated[8:18, 8:18] = 1
    picks = suggest_strokes(h, annotated, count=3, radius=3)
    assert picks.shape == (3, 2) and picks.dtype == np.int64
    assert tuple(picks[0]) in {(y, x) for y in range(41, 45) for x in range(51, 55)}  # the most hesitant free spot
    assert 49 <= picks[1][0] <= 55 and 9 <= picks[1][1] <= 15  # then the next one
    dist = ndi.distance_transform_edt(annotated == 0)
    assert all(dist[tuple(p)] > 3 for p in picks)  # a brush of radius 3 there paints nothing painted
    assert np.abs(picks[0] - picks[1]).max() >= 7  # spots do not overlap
    everything = np.ones_like(annotated)
    assert suggest_strokes(h, everything, count=5).shape == (0, 2)  # nothing left to suggest


def test_suggestions_in_3d_and_bad_inputs():
    h = np.zeros((8, 32, 32), np.float32)
    h[4:7, 19:22, 11:14] = 1.0  # a hesitant spot the size of the brush, centred on (5, 20, 12)
    (pick,) = suggest_strokes(h, count=1, radius=1)
    assert tuple(pick) == (5, 20, 12)
    with pytest.raises(ValueError, match="expected the map's"):
        suggest_strokes(h, np.zeros((8, 32, 31)), count=1)
    with pytest.raises(ValueError, match="2D or 3D"):
        suggest_strokes(np.zeros(5), count=1)


def test_the_live_preview_brings_the_map_of_its_own_forward_pass(blobs):
    image, strokes, _ = blobs
    previews, stop = Latest(), threading.Event()
    events = iter_train_live(image, strokes, updates=Latest(), previews=previews, stop=stop, preview_every=0.0,
                             device="cpu", seed=0, depth=2, base_channels=4, patch_size=32, batch_size=2)
    key = preview_window((48, 64), (64, 80), image.shape, dims=2)
    previews.put(PreviewRequest(0, key, hesitation=True))
    preview = next(ev for ev in events if ev.kind == "preview").data
    stop.set()
    events.close()
    assert preview.hesitation.shape == preview.labels.shape == (64, 80)
    # exactly what a one-shot computation with the preview's model gives for that window
    np.testing.assert_allclose(preview.hesitation, predict_hesitation(preview.model, image[key], tile=None),
                               atol=1e-5)
    previews_plain = Latest()
    events = iter_train_live(image, strokes, updates=Latest(), previews=previews_plain, preview_every=0.0,
                             device="cpu", seed=0, depth=2, base_channels=4, patch_size=32, batch_size=2)
    previews_plain.put(PreviewRequest(0, key))
    assert next(ev for ev in events if ev.kind == "preview").data.hesitation is None  # only when asked
    events.close()
