"""The named parts of a training run: settings resolved once, the Trainer (OOM shrink, best weights)."""
import dataclasses

import numpy as np
import pytest
import torch

from napari_unet import Model
from napari_unet.train import DEFAULT_TIME_BUDGET, TrainEvent, Trainer, resolve_settings

TINY = dict(depth=2, base_channels=8, patch_size=32, batch_size=4)


def test_settings_apply_the_documented_defaults_once(blobs):
    image, strokes, _ = blobs
    s, annotated = resolve_settings(image, strokes, device="cpu")
    assert s.time_budget == DEFAULT_TIME_BUDGET and s.epochs is None
    assert s.batch_size == 8 and s.learning_rate == 2e-3 and s.border_band == 3
    # 128 px on the CPU, but no larger than the 96 x 128 image needs (aligned to 2**depth = 16)
    assert s.patch_size == (96, 128)
    assert s.class_ids == (1, 2) and s.config.class_ids == (1, 2)
    assert (s.config.depth, s.config.base_channels, s.config.in_channels) == (4, 16, 1)
    lo, hi = np.percentile(image, [1, 99.8])
    assert s.config.norm_low[0] == pytest.approx(lo, rel=0.05) and s.config.norm_high[0] == pytest.approx(hi, rel=0.05)
    assert annotated.classes == (1, 2) and len(annotated.items) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_size = 2


def test_instance_settings_learn_three_classes_without_a_border_band(blobs):
    image, _, truth = blobs
    s, _ = resolve_settings(image, truth, mode="instance", device="cpu", epochs=3, **TINY)
    assert s.class_ids == (0, 1, 2) and s.border_band == 0
    assert s.time_budget is None and s.epochs == 3 and s.patch_size == (32, 32) and s.batch_size == 4


def test_fine_tuning_settings_keep_the_models_classes_normalization_and_architecture(blobs):
    image, strokes, _ = blobs
    init = Model.untrained(depth=2, base_channels=4, class_ids=(1, 2, 5), norm_low=(7.0,), norm_high=(900.0,),
                           trained_steps=40)
    s, _ = resolve_settings(image, strokes, init=init, dims=3, depth=4, base_channels=32, device="cpu")
    assert s.config == init.config and s.dims == 2 and s.init is init
    assert s.class_ids == (1, 2, 5)  # class 5 is not painted this time, but the model keeps it
    assert s.learning_rate == 1e-4
    extra = strokes.copy()
    extra[50:52, 50:52] = 7
    with pytest.raises(ValueError, match=r"class \[7\] that the model was not trained for"):
        resolve_settings(image, extra, init=init, device="cpu")
    with pytest.raises(ValueError, match="takes 1 channel"):
        resolve_settings(np.stack([image, image]), strokes, init=init, channel_axis=0, device="cpu")
    with pytest.raises(ValueError, match="trained in 'semantic' mode"):
        resolve_settings(image, strokes, init=init, mode="instance", device="cpu")


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size must be"),
    (dict(learning_rate=-1.0), "learning_rate must be"),
    (dict(validation_fraction=1.5), "validation_fraction must be"),
    (dict(border_band=-2), "border_band must be"),
    (dict(patch_size=3), "patch_size must be 2 sizes of at least 16"),
    (dict(depth=0), "depth must be"),
])
def test_settings_errors_name_the_parameter(blobs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_settings(blobs[0], blobs[1], device="cpu", **kwargs)


def _trainer(blobs, **kwargs):
    image, _, truth = blobs
    settings, annotated = resolve_settings(image, truth, mode="instance", device="cpu", epochs=1, seed=0,
                                           **{**TINY, **kwargs})
    return Trainer(settings, annotated)


def _out_of_memory_once(trainer):
    forward, calls = trainer.network.forward, []

    def forward_once(x):
        calls.append(tuple(x.shape))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return forward(x)

    trainer.network.forward = forward_once
    return calls


def test_trainer_out_of_memory_halves_the_batch_then_the_patch(blobs):
    trainer = _trainer(blobs)
    calls = _out_of_memory_once(trainer)
    result = trainer.step(0.0)
    assert result.loss is None and "batches of 2 patches" in result.warning
    assert trainer.batch_size == 2 and trainer.step_count == 0
    result = trainer.step(0.0)
    assert result.loss is not None and trainer.step_count == 1 and calls[-1] == (2, 1, 32, 32)

    trainer = _trainer(blobs, batch_size=1)
    calls = _out_of_memory_once(trainer)
    assert "patches of (16, 16)" in trainer.step(0.0).warning
    assert trainer.step(0.0).loss is not None and calls[-1] == (1, 1, 16, 16)
    assert trainer.finish().config.batch_size == 1


def test_trainer_restores_the_best_weights(blobs):
    trainer = _trainer(blobs, validation_fraction=0.5)
    assert trainer.val_batches
    for _ in range(3):
        trainer.step(0.0)
    best = trainer.maybe_validate(0.5, trainer.elapsed())
    assert best is not None and trainer.best_val_loss == best
    assert trainer.maybe_validate(0.55, trainer.elapsed()) is None  # next one due at 60% of the run
    kept = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    with torch.no_grad():  # ruin the weights: the final validation must find them worse
        for p in trainer.network.parameters():
            p.add_(10 * torch.randn_like(p))
    model = trainer.finish()
    assert model.config.best_val_loss == best and len(model.history) == 2
    assert model.history[1]["val_loss"] > best
    for k, v in model.network.state_dict().items():
        assert torch.equal(v, kept[k]), k
    p = next(model.network.parameters())
    assert not model.network.training and p.device.type == "cpu" and p.is_contiguous()
    assert model.config.trained_steps == 3


def test_start_event_is_frozen(blobs):
    from napari_unet.train import iter_train

    events = iter_train(blobs[0], blobs[1], epochs=1, **TINY)
    start = next(events)
    assert start.kind == "start" and "region" in start.message
    with pytest.raises(dataclasses.FrozenInstanceError):
        start.message = "changed"
    events.close()
    assert isinstance(start, TrainEvent)


def test_out_of_memory_during_validation_validates_in_smaller_batches(blobs):
    """Validation (and the final one) out of memory: the same held-out patches, in halves, the same loss."""
    reference = _trainer(blobs, batch_size=4)
    expected = reference.validate()
    trainer = _trainer(blobs, batch_size=4)
    sizes_before = [len(x) for x, _ in trainer.val_batches]
    assert max(sizes_before) > 1
    calls = _out_of_memory_once(trainer)
    assert trainer.validate() == pytest.approx(expected, rel=1e-5)
    assert max(len(x) for x, _ in trainer.val_batches) < max(sizes_before)
    assert sum(len(x) for x, _ in trainer.val_batches) == sum(sizes_before)  # no patch lost
    assert trainer.network.training and len(calls) > 1  # back in training mode for the next step

    def always_out_of_memory(x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    stuck = _trainer(blobs, batch_size=2)
    stuck.network.forward = always_out_of_memory
    with pytest.raises(MemoryError, match="even for one validation patch"):
        stuck.validate()
