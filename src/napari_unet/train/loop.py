"""`iter_train`: a training run as a loop over its parts, yielding `TrainEvent`s; `train` drains it.

The parts: `resolve_settings` (the request, validated and resolved once), `Trainer` (step, validation,
best weights, schedule, out-of-memory shrink, the finished model).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from .. import conventions as C
from ..device import thread_policy
from ..model import Model
from ..progress import drain
from .settings import BORDER_BAND, VALIDATION_FRACTION, resolve_settings
from .trainer import Trainer

__all__ = ["TrainEvent", "iter_train", "train", "DEFAULT_TIME_BUDGET"]

DEFAULT_TIME_BUDGET = C.DEFAULT_TIME_BUDGET


@dataclass(frozen=True)
class TrainEvent:
    """A progress report from `iter_train`.

    Attributes
    ----------
    kind : str
        ``"start"`` (data prepared; ``message`` says on what), ``"step"`` (one optimizer step),
        ``"validation"`` (validation loss measured), ``"warning"`` (e.g. out of GPU memory: continuing
        with smaller batches; see ``message``) or ``"done"`` (the last event; ``model`` is set).
    step : int
        Optimizer steps so far.
    fraction : float
        Progress from 0 to 1 (steps over total steps, or elapsed over time budget).
    elapsed : float
        Seconds since training started.
    loss, val_loss, best_val_loss : float or None
        Training loss of the last step, validation loss (of this validation; the best one when done).
    model : Model or None
        The final model (the best by validation loss when some annotations were held out).
    stopped : bool
        True when training ended early because it was asked to stop.
    message : str
    data : object
        Live training (`napari_unet.train.iter_train_live`): a `LabelsTaken` for ``"labels"`` events,
        a `Preview` for ``"preview"`` events; None otherwise.
    """

    kind: str
    step: int = 0
    fraction: float = 0.0
    elapsed: float = 0.0
    loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    model: Model | None = None
    stopped: bool = False
    message: str = ""
    data: object = None


def iter_train(images, labels, *, mode: str = "semantic", dims: int = 2, depth: int = C.DEFAULT_DEPTH,
               base_channels: int | None = None, time_budget: float | None = None, epochs: int | None = None,
               init: Model | None = None, device="auto", seed: int | None = None,
               channel_axis: int | None = None, patch_size: int | Sequence[int] | None = None,
               batch_size: int | None = None, learning_rate: float | None = None,
               validation_fraction: float = VALIDATION_FRACTION, border_band: int = BORDER_BAND,
               max_classes: int = C.MAX_SEMANTIC_CLASSES, loss: str | None = None, edge_weight: float | None = None,
               instance_boundary: str | None = None, augment=None, spacing=None, mixed_precision: bool | None = None,
               background: int | None = None, context_planes: int | None = None, stop=None, ranks=None):
    """Train a UNet on painted annotations, yielding `TrainEvent` progress reports.

    Parameters
    ----------
    images, labels : array-like or list of array-like
        Images (numpy, dask, zarr; any dtype; spatial axes last) and integer labels of the same spatial
        shape. Leading axes beyond ``dims`` (a stack or time series) are treated as separate items.
    mode : {"semantic", "instance"}
        ``semantic``: 0 = not annotated, 1 = background, 2.. = classes (sparse strokes are fine).
        ``instance``: dense masks, 0 = background, each id one object.
    dims : {2, 3}
        2D model (applied plane by plane to stacks) or 3D model.
    depth, base_channels : int
        Network size (ignored when ``init`` is given: its architecture is kept). Default base channels:
        16, but 32 for 2D instance models where training runs in mixed precision
        (`napari_unet.conventions.default_base_channels`).
    time_budget : float, optional
        Seconds of training. When neither this nor ``epochs`` is given, 60 s.
    epochs : int, optional
        Number of epochs; an epoch is as many patches as cover the annotated regions once (at least 10
        steps). With both given, whichever ends first. Reproducible with ``seed`` on CPU.
    init : Model, optional
        Continue training (fine-tune) this model; its classes, normalization and architecture are kept.
    device : str
        ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
    seed : int, optional
        Seeds patch sampling, augmentation and initialization.
    channel_axis : int, optional
        Axis of the images holding channels. Never guessed.
    patch_size, batch_size, learning_rate : optional
        Defaults: 128 px patches x 8 in 2D on CPU (256 on GPU), 64^3 x 2 in 3D, learning rate 2e-3
        (1e-4 when fine-tuning).
    validation_fraction : float
        Fraction of annotated blocks held out to pick the best model; skipped when too few annotations.
    border_band : int
        Semantic mode: unpainted pixels within this many px of a painted object that look like
        background are trained as background (see `napari_unet.data.add_border_band`). 0 disables.
    max_classes : int
        Semantic mode: the most classes accepted (more ids: instance masks, for ``mode="instance"``).
    loss : {"ce", "ce+dice"}, optional
        Cross-entropy, or cross-entropy + soft Dice of the non-background classes (see
        `napari_unet.train.masked_loss`).
    spacing : sequence of float, optional
        Voxel size per spatial axis (any unit; ``(3, 1, 1)`` or ``(2.0, 0.65, 0.65)`` for planes 3x further
        apart than the pixels). A 3D network then pools Y and X only until the features are about
        isotropic (`napari_unet.model.xy_pool_levels_for`), the instance boundary class is drawn in
        these units (`napari_unet.data.instance_targets`) and instance post-processing measures
        distances in them. Recorded in the model; default isotropic.
    edge_weight : float, optional
        Cross-entropy weight (>= 1) of the pixels along a change of class, on both sides: the outlines.
        Default for a new model `conventions.default_edge_weight` (3 for 2D instance models, else 1);
        fine-tuning keeps ``init``'s.
    instance_boundary : {"inner", "thick", "touching"}, optional
        Instance mode: how the boundary class is drawn (`napari_unet.data.instance_targets`).
    augment : str or sequence of str, optional
        Extra augmentations (``"elastic"``, ``"blur"``, ``"contrast"``; a comma-separated string is fine;
        ``()`` for none). See `napari_unet.data.augment_extra`.

        These four training choices are stored in the model's configuration; left out, they are
        ``init``'s when fine-tuning, else the defaults (docs/training-quality.md, "Training choices").
    mixed_precision : bool, optional
        Steps in mixed precision (weights stay fp32). Default (None): on GPUs, and on CPUs with bf16 units
        (Intel AMX / AVX-512 BF16), where a step takes about 0.4x the time (a time budget trains 2.5x the
        steps; BENCHMARKS.md); fp32 elsewhere. False: fp32 everywhere (the same numbers on every machine).
    background : int, optional
        Uneven illumination: the network first subtracts a smooth local background over windows of this
        many px, about 3 object diameters (`napari_unet.unet.LocalBackground`; docs/training-quality.md).
        Stored in the model and kept when fine-tuning. Default: none.
    context_planes : int, optional
        2D models of z-stacks: each plane is read with this many planes above and below it as extra input
        channels (`napari_unet.data.PlaneContext`; docs/3d.md). Stored in the model, kept when fine-tuning.
    stop : object with ``is_set()``, optional
        E.g. a `threading.Event`; training ends at the next step once it is set, keeping the best model.
    ranks : napari_unet.train.distributed.Ranks, optional
        Data-parallel training under torchrun (`napari_unet.train.distributed.data_parallel`): ``device``
        is this rank's, ``seed`` is made common to all ranks, and the ranks stop after the same step.

    Yields
    ------
    TrainEvent
        The last one has ``kind == "done"`` and the trained `Model`.
    """
    start_time = time.perf_counter()
    if ranks is not None:
        device, seed = ranks.device, ranks.common_seed(seed)
    settings, annotated = resolve_settings(
        images, labels, mode=mode, dims=dims, depth=depth, base_channels=base_channels, time_budget=time_budget,
        epochs=epochs, init=init, device=device, seed=seed, channel_axis=channel_axis, patch_size=patch_size,
        batch_size=batch_size, learning_rate=learning_rate, validation_fraction=validation_fraction,
        border_band=border_band, max_classes=max_classes, loss=loss, edge_weight=edge_weight,
        instance_boundary=instance_boundary, augment=augment, spacing=spacing, mixed_precision=mixed_precision,
        background=background, context_planes=context_planes)
    with thread_policy(device=settings.device):
        trainer = Trainer(settings, annotated, start_time, ranks=ranks)
        yield TrainEvent("start", elapsed=trainer.elapsed(), message=trainer.summary)
        fraction, stopped = yield from _steps(trainer, stop, ranks)
        model = trainer.finish(stopped)
    elapsed = trainer.elapsed()
    yield TrainEvent("done", step=trainer.step_count, fraction=fraction if stopped else 1.0, elapsed=elapsed,
                     loss=trainer.last_loss, val_loss=trainer.best_val_loss, best_val_loss=trainer.best_val_loss,
                     model=model, stopped=stopped,
                     message=f"{'stopped' if stopped else 'finished'} after {trainer.step_count} steps in "
                             f"{elapsed:.1f} s")


def _steps(trainer: Trainer, stop, ranks):
    """Step until done or asked to stop, yielding the steps' events; returns (fraction, stopped)."""
    fraction = 0.0
    try:
        while True:
            fraction, stopping = _progress(trainer, stop, ranks)
            if fraction >= 1.0:
                return fraction, False
            if stopping:
                return fraction, True
            yield from _step(trainer, fraction)
    except KeyboardInterrupt:  # Ctrl-C inside a step: finish with the best model so far
        return fraction, True


def _progress(trainer: Trainer, stop, ranks) -> tuple:
    """The run's fraction done, and whether it is asked to stop (agreed by all ranks under torchrun)."""
    fraction = trainer.fraction(trainer.elapsed())
    stopping = stop is not None and stop.is_set()
    if ranks is not None:  # all ranks stop after the same step, or one would wait forever
        fraction, stopping = ranks.agree(fraction, stopping)
    return fraction, stopping


def _step(trainer: Trainer, fraction: float):
    """One optimizer step and its events: ``"step"`` (and ``"validation"`` when due), or a ``"warning"``
    when out of memory made the batch or patch smaller instead."""
    result = trainer.step(fraction)
    if result.warning:
        yield TrainEvent("warning", step=trainer.step_count, fraction=fraction, elapsed=trainer.elapsed(),
                         message=result.warning)
        return
    elapsed = trainer.elapsed()
    yield TrainEvent("step", step=trainer.step_count, fraction=fraction, elapsed=elapsed, loss=result.loss,
                     best_val_loss=trainer.best_val_loss)
    val = trainer.maybe_validate(fraction, elapsed)
    if val is not None:
        yield TrainEvent("validation", step=trainer.step_count, fraction=fraction, elapsed=elapsed,
                         loss=result.loss, val_loss=val, best_val_loss=trainer.best_val_loss)


def train(images, labels, *, progress=None, **kwargs) -> Model:
    """Train a UNet and return the `Model`; see `iter_train` for the parameters.

    Parameters
    ----------
    progress : tqdm-like, optional
        Receives ``update(n)`` calls (percent) and ``set_postfix(loss=...)``.

    Examples
    --------
    >>> model = train([image], [strokes], mode="semantic", time_budget=60)  # doctest: +SKIP
    """
    return drain(iter_train(images, labels, **kwargs), progress).model
