import threading

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.data import add_border_band, instance_targets, semantic_targets, IGNORE

TINY = dict(depth=2, base_channels=8, patch_size=32, batch_size=4)


def test_semantic_training_learns_the_painted_classes(blobs):
    image, strokes, truth = blobs
    model = nu.train(image, strokes, mode="semantic", epochs=6, seed=0, **TINY)
    labels = nu.segment(model, image)
    assert labels.shape == image.shape
    fg = labels > 0
    iou = (fg & (truth > 0)).sum() / (fg | (truth > 0)).sum()
    assert iou > 0.8
    assert model.config.class_ids == (1, 2) and model.config.mode == "semantic"


def test_instance_training_separates_objects(blobs):
    image, _, truth = blobs
    model = nu.train(image, truth, mode="instance", epochs=25, seed=0, **TINY)
    labels = nu.segment(model, image)
    from napari_unet.metrics import matching

    assert matching(truth, labels)["f1"] >= 0.8


def test_seeded_cpu_training_is_reproducible(blobs):
    image, strokes, _ = blobs
    a = nu.train(image, strokes, epochs=1, seed=3, **TINY)
    b = nu.train(image, strokes, epochs=1, seed=3, **TINY)
    for pa, pb in zip(a.network.parameters(), b.network.parameters()):
        assert torch.equal(pa, pb)


def test_events_report_progress_and_stop_keeps_a_model(blobs):
    image, strokes, _ = blobs
    stop = threading.Event()
    kinds, steps = [], []
    for event in nu.iter_train(image, strokes, time_budget=60, stop=stop, **TINY):
        kinds.append(event.kind)
        if event.kind == "step":
            steps.append(event.step)
            assert event.loss is not None and 0 <= event.fraction <= 1
            if event.step == 3:
                stop.set()
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert steps == [1, 2, 3]
    assert event.stopped and event.model is not None
    assert nu.segment(event.model, image).shape == image.shape


def test_time_budget_is_respected(blobs):
    image, strokes, _ = blobs
    last = None
    for last in nu.iter_train(image, strokes, time_budget=1.5, **TINY):
        pass
    assert last.elapsed < 1.5 + 2.0 and last.step > 0


def test_fine_tuning_continues_from_a_model(blobs):
    image, strokes, _ = blobs
    first = nu.train(image, strokes, epochs=1, seed=0, **TINY)
    before = [p.clone() for p in first.network.parameters()]
    second = nu.train(image, strokes, epochs=1, seed=1, init=first, **TINY)
    assert second.config.trained_steps > first.config.trained_steps
    assert second.config.norm_low == first.config.norm_low
    # the original model is left as it was
    for p, q in zip(first.network.parameters(), before):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="not trained for"):
        extra = strokes.copy()
        extra[50:52, 50:52] = 7
        nu.train(image, extra, epochs=1, init=first, **TINY)


def test_caller_arrays_are_not_modified(blobs):
    image, strokes, _ = blobs
    img0, lab0 = image.copy(), strokes.copy()
    nu.train(image, strokes, epochs=1, **TINY)
    np.testing.assert_array_equal(image, img0)
    np.testing.assert_array_equal(strokes, lab0)


def test_2d_model_trains_on_annotated_planes_of_a_stack(blobs):
    """Strokes on one plane of a stack train a 2D model that segments every plane."""
    image, strokes, truth = blobs
    stack = np.stack([image, image[::-1], image])
    lab = np.zeros(stack.shape, np.uint8)
    lab[1] = strokes[::-1]
    model = nu.train(stack, lab, mode="semantic", epochs=6, seed=0, **TINY)
    for plane, expected in zip(nu.segment(model, stack), (truth, truth[::-1], truth)):
        fg, t = plane > 0, expected > 0
        assert (fg & t).sum() / (fg | t).sum() > 0.8


def test_multichannel_training_with_declared_channel_axis(blobs):
    image, strokes, _ = blobs
    rgbish = np.stack([image, image // 2], axis=-1)
    model = nu.train(rgbish, strokes, channel_axis=-1, epochs=1, **TINY)
    assert model.config.in_channels == 2
    assert nu.segment(model, rgbish, channel_axis=-1).shape == image.shape


def test_3d_model_trains_on_a_volume():
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 10, (16, 32, 32)).astype(np.float32)
    vol[4:10, 8:20, 8:20] += 200
    lab = np.zeros(vol.shape, np.uint8)
    lab[5:9, 10:18, 10:18] = 2
    lab[12:15, 24:30, 24:30] = 1
    model = nu.train(vol, lab, dims=3, epochs=1, depth=2, base_channels=4, patch_size=16, batch_size=2)
    assert model.config.dims == 3
    assert nu.segment(model, vol).shape == vol.shape


@pytest.mark.parametrize("labels,match", [
    (np.zeros((96, 128), np.uint8), "no annotation"),
    (np.full((96, 128), 0.5, np.float32), "whole numbers"),
    (np.zeros((90, 128), np.uint8), "must match"),
])
def test_bad_labels_are_refused_clearly(blobs, labels, match):
    with pytest.raises(ValueError, match=match):
        nu.train(blobs[0], labels, epochs=1, **TINY)


def test_one_painted_class_is_not_enough(blobs):
    image, strokes, _ = blobs
    with pytest.raises(ValueError, match="at least two"):
        nu.train(image, np.where(strokes == 2, 2, 0), epochs=1, **TINY)


@pytest.mark.parametrize("kwargs,match", [
    (dict(time_budget=-5), "positive number of seconds"),
    (dict(epochs=0), "positive whole number"),
    (dict(mode="panoptic"), "mode must be"),
    (dict(device="gpu9"), "unknown device"),
    (dict(dims=4), "dims must be"),
    (dict(loss="focal"), "loss must be one of"),
])
def test_bad_settings_are_refused_clearly(blobs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        nu.train(blobs[0], blobs[1], **{**TINY, "epochs": 1, **kwargs})


def test_instance_targets_mark_rims_between_touching_objects():
    lab = np.zeros((10, 12), np.int32)
    lab[2:8, 1:6] = 1
    lab[2:8, 6:11] = 2
    t = instance_targets(lab)
    assert (t[4, 5] == 2) and (t[4, 6] == 2)  # both sides of the contact are rim
    assert t[4, 3] == 1 and t[0, 0] == 0


def test_border_band_labels_dim_rim_as_background_only():
    # a painted bright disc, an unpainted bright neighbour touching it, dim background elsewhere
    yy, xx = np.mgrid[:40, :40]
    intensity = np.full((40, 40), 0.1, np.float32)
    disc = (yy - 20) ** 2 + (xx - 15) ** 2 < 36
    neighbour = ((yy - 20) ** 2 + (xx - 25) ** 2 < 25) & ~disc
    intensity[disc | neighbour] = 1.0
    labels = np.zeros((40, 40), np.int64)
    labels[disc] = 2
    labels[:3, :] = 1
    target = semantic_targets(labels, [1, 2])
    out = add_border_band(target, intensity, width=3)
    band = (out == 0) & (target == IGNORE)
    assert band.any()
    assert not (band & neighbour).any()  # the bright neighbour is never called background
    assert (out[target != IGNORE] == target[target != IGNORE]).all()  # painted pixels untouched


def test_out_of_memory_while_training_shrinks_the_batch(blobs, monkeypatch):
    from napari_unet.model import UNet

    forward = UNet.forward

    def small_memory(self, x):
        if self.training and x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return forward(self, x)

    monkeypatch.setattr(UNet, "forward", small_memory)
    image, strokes, _ = blobs
    events = list(nu.iter_train(image, strokes, epochs=1, **{**TINY, "batch_size": 8}))
    warnings = [e.message for e in events if e.kind == "warning"]
    assert any("batches of 4" in w for w in warnings) and any("batches of 2" in w for w in warnings)
    assert events[-1].kind == "done" and events[-1].model.config.batch_size == 2
    assert events[-1].step > 0


def test_out_of_memory_at_the_smallest_size_gives_a_clear_error(blobs, monkeypatch):
    from napari_unet.model import UNet

    def no_memory(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(UNet, "forward", no_memory)
    with pytest.raises(MemoryError, match="even with one patch"):
        nu.train(blobs[0], blobs[1], epochs=1, **TINY)



def test_dice_term_scores_rare_classes_and_ignores_unannotated_pixels():
    import torch.nn.functional as F

    from napari_unet.train import masked_loss

    target = torch.zeros((1, 16, 16), dtype=torch.long)
    target[0, 4:8, 4:8] = 2  # a small class the Dice term weighs as much as the background
    target[0, :, 12:] = -1  # not annotated: no loss, whatever the network says there
    right = F.one_hot(target.clamp_min(0), 3).movedim(-1, 1).float() * 20
    wrong = right.clone()
    wrong[:, :, :, 12:] = torch.tensor([0.0, 0.0, 20.0])[None, :, None, None]
    ce, n = masked_loss(right, target, "ce")
    both, n2 = masked_loss(right, target, "ce+dice")
    assert n == n2 == 16 * 12
    assert both.item() == pytest.approx(ce.item(), abs=1e-3)  # a perfect prediction adds (almost) nothing
    assert masked_loss(wrong, target, "ce+dice")[0].item() == pytest.approx(both.item(), abs=1e-3)
    missed = right.clone()
    missed[:, :, 4:8, 4:8] = torch.tensor([20.0, 0.0, 0.0])[None, :, None, None]  # the small class missed
    assert masked_loss(missed, target, "ce+dice")[0] - masked_loss(missed, target, "ce")[0] > 0.4
