"""Live training: a run with no end that takes new annotations between steps and previews its model.

The caller (the Train widget, on its GUI thread) copies the labels whenever the user paints and puts
the copy in a `Latest` mailbox; `iter_train_live` (in a worker thread) takes it before its next step and
trains on it from then on, without restarting. It also segments a requested window (what is on
screen) every few seconds, within a share of the time, and yields it as a `Preview`. The worker never
touches the caller's arrays beyond reading the images.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from ..data import as_channels_first, collect_annotated
from ..device import thread_policy
from ..interactive import window_around
from ..model import Model
from .loop import TrainEvent
from .settings import resolve_settings
from .trainer import Trainer

__all__ = ["Latest", "LabelsUpdate", "LabelsTaken", "PreviewRequest", "Preview", "iter_train_live",
           "preview_window", "PREVIEW_EVERY", "PREVIEW_SHARE", "PREVIEW_MAX_2D", "PREVIEW_MAX_3D"]

#: Seconds between two previews, at least...
PREVIEW_EVERY = 3.0
#: ...and at most this share of the time spent on them (a slow preview comes less often).
PREVIEW_SHARE = 0.15
#: The largest window previewed (what is on screen is clipped around its centre to this).
PREVIEW_MAX_2D = (512, 512)
PREVIEW_MAX_3D = (32, 192, 192)
#: Validation of the live run: at most every this many seconds, and at most ~5% of the time.
VALIDATE_EVERY = 10.0
#: Steps of learning-rate warm-up; then the base learning rate, constant (the run has no end).
WARMUP_STEPS = 20


class Latest:
    """A one-value mailbox between two threads: `put` replaces whatever was not taken yet."""

    def __init__(self):
        self._lock = threading.Lock()
        self._value = None

    def put(self, value) -> None:
        """Leave ``value`` for the other thread (None clears the mailbox)."""
        with self._lock:
            self._value = value

    def take(self):
        """The value left since the last `take`, or None."""
        with self._lock:
            value, self._value = self._value, None
        return value


@dataclass(frozen=True)
class LabelsUpdate:
    """New annotations for a live run: one labels array per image (copies the run may keep).

    ``changed_at`` is the `time.perf_counter` time of the edit, so the run can report how long the
    annotation took to be trained on.
    """

    labels: tuple
    version: int
    changed_at: float


@dataclass(frozen=True)
class LabelsTaken:
    """The ``data`` of a ``"labels"`` event: the first step on annotations `version` was just made."""

    version: int
    annotated_px: int  # pixels with a target (held-out validation pixels included)
    latency: float  # seconds from the edit to the end of that step


@dataclass(frozen=True)
class PreviewRequest:
    """What to preview: image ``image`` (index in the run's images) at ``key`` over its spatial axes.

    ``hesitation``: also return where the model hesitates (`napari_unet.uncertainty.hesitation`),
    from the same forward pass.
    """

    image: int
    key: tuple
    hesitation: bool = False


@dataclass(frozen=True)
class Preview:
    """The ``data`` of a ``"preview"`` event: the current model's labels of a window, and that model.

    ``hesitation`` is the window's hesitation map (float32 in [0, 1], shaped like ``labels``) when the
    request asked for it, else None.
    """

    request: PreviewRequest
    labels: np.ndarray
    seconds: float
    model: Model
    hesitation: np.ndarray | None = None


def preview_window(center: Sequence[int], visible: Sequence[int], shape: Sequence[int], dims: int) -> tuple:
    """The window to preview: what is visible, clipped around its centre to `PREVIEW_MAX_2D` / `_3D`.

    Parameters
    ----------
    center : sequence of int
        A pixel over all spatial axes of the image (the displayed plane's index included).
    visible : sequence of int
        Size of the visible region over the model's ``dims`` last axes.
    shape : sequence of int
        Spatial shape of the image.
    dims : {2, 3}

    Returns
    -------
    tuple
        An index into the image's spatial axes (`napari_unet.interactive.window_around`).
    """
    if len(shape) < dims:  # (else window_around's message, about its window, says nothing of the cause)
        raise ValueError(f"a {dims}D model needs images with at least {dims} spatial axes, got shape "
                         f"{tuple(int(s) for s in shape)}: train a 2D model on this image")
    largest = PREVIEW_MAX_2D if dims == 2 else PREVIEW_MAX_3D
    window = [max(1, min(int(v), m)) for v, m in zip(visible, largest)]
    center = [min(max(int(c), 0), int(s) - 1) for c, s in zip(center, shape)]
    return window_around(center, shape, window)


def _live_settings(images, labels, options):
    for name in ("time_budget", "epochs"):
        if options.get(name) is not None:
            raise TypeError(f"live training runs until stopped: remove {name}=")
        options.pop(name, None)
    settings, annotated = resolve_settings(images, labels, time_budget=1.0, **options)
    return replace(settings, time_budget=None), annotated


class _Clock:
    """Something done every ``every`` seconds at least, and at most ``share`` of the time."""

    def __init__(self, every: float, share: float):
        self.every, self.share, self.last, self.cost = every, share, -np.inf, 0.0

    def due(self, now: float) -> bool:
        return now - self.last >= max(self.every, self.cost * (1 - self.share) / self.share)

    def ran(self, start: float, end: float) -> None:
        self.last, self.cost = end, end - start


def _take_labels(trainer: Trainer, images, update: LabelsUpdate) -> str:
    """Train on ``update`` from now on; a warning (and the previous annotations kept) when unusable."""
    s = trainer.settings
    try:
        annotated = collect_annotated(images, list(update.labels), s.dims, s.channel_axis, s.mode,
                                      s.config.context_planes)
        new = sorted(set(annotated.classes) - set(s.class_ids)) if s.mode == "semantic" else []
        if new:
            return (f"label {new[0]} is not a class of this run (classes {list(s.class_ids)}): stop and train "
                    "again to add a class; training goes on with the previous annotations")
        trainer.use_annotations(annotated)
    except ValueError as exc:
        return f"{exc}; training goes on with the previous annotations"
    return ""


def _annotated_px(trainer: Trainer) -> int:
    return int(sum((it.target >= 0).sum() + (0 if it.val_target is None else (it.val_target >= 0).sum())
                   for it in trainer.items))


def _preview(trainer: Trainer, sources, request: PreviewRequest) -> Preview:
    from ..predict import iter_predict
    from ..progress import drain
    from ..uncertainty import hesitation

    t0 = time.perf_counter()
    model = trainer.snapshot()
    pixels = np.asarray(sources[request.image][(slice(None),) + tuple(request.key)])  # context planes read
    # labels and probabilities of the same forward pass: the map costs only its own arithmetic
    done = drain(iter_predict(model.for_prepared_input(), pixels, labels=True, probabilities=request.hesitation,
                              tile=None, device=trainer.settings.device, channel_axis=0))
    hesitant = hesitation(done.probabilities) if request.hesitation else None
    return Preview(request, done.labels, time.perf_counter() - t0, model, hesitant)


def iter_train_live(images, labels, *, updates: Latest, previews: Latest | None = None, stop=None,
                    preview_every: float = PREVIEW_EVERY, preview_share: float = PREVIEW_SHARE, **options):
    """Train until ``stop`` is set, taking new annotations from ``updates`` between steps.

    Parameters
    ----------
    images, labels
        As in `napari_unet.train.iter_train`: the annotations to start from (at least two classes).
    updates : Latest
        Where the caller leaves `LabelsUpdate`s (one labels array per image, same shapes and classes).
    previews : Latest, optional
        Where the caller leaves `PreviewRequest`s; the last one is previewed every ``preview_every``
        seconds, at most ``preview_share`` of the time.
    stop : object with ``is_set()``
        Ends the run after the current step, keeping the best model on the current annotations.
    **options
        The other parameters of `iter_train` (mode, dims, depth, base_channels, init, device, seed,
        channel_axis, patch_size, batch_size, learning_rate, validation_fraction, border_band,
        max_classes, context_planes...); not ``time_budget`` or ``epochs``.

    Yields
    ------
    TrainEvent
        As `iter_train`'s (``fraction`` stays 0: there is no end), plus ``"labels"`` (``data``: a
        `LabelsTaken`, after the first step on new annotations) and ``"preview"`` (``data``: a
        `Preview`). A ``"warning"`` says when an update could not be used. The last is ``"done"``.
    """
    start_time = time.perf_counter()
    settings, annotated = _live_settings(images, labels, dict(options))
    sources = [as_channels_first(img, settings.channel_axis, settings.config.context_planes)
               for img in (images if isinstance(images, (list, tuple)) else [images])]
    with thread_policy(device=settings.device):
        trainer = Trainer(settings, annotated, start_time)
        yield TrainEvent("start", elapsed=trainer.elapsed(), message=trainer.summary)
        preview_clock, val_clock = _Clock(preview_every, preview_share), _Clock(VALIDATE_EVERY, 0.05)
        val_clock.last = time.perf_counter()  # the first validation after VALIDATE_EVERY s of training
        request, taken = None, None
        try:
            while stop is None or not stop.is_set():
                update = updates.take()
                if update is not None:
                    warning = _take_labels(trainer, images, update)
                    if warning:
                        yield TrainEvent("warning", step=trainer.step_count, elapsed=trainer.elapsed(), message=warning)
                    else:
                        taken = update
                result = trainer.step(0.05 * min(1.0, (trainer.step_count + 1) / WARMUP_STEPS))
                if result.warning:
                    yield TrainEvent("warning", step=trainer.step_count, elapsed=trainer.elapsed(),
                                     message=result.warning)
                    continue
                yield TrainEvent("step", step=trainer.step_count, elapsed=trainer.elapsed(), loss=result.loss,
                                 best_val_loss=trainer.best_val_loss)
                if taken is not None:
                    data = LabelsTaken(taken.version, _annotated_px(trainer), time.perf_counter() - taken.changed_at)
                    taken = None
                    yield TrainEvent("labels", step=trainer.step_count, elapsed=trainer.elapsed(), data=data,
                                     message=f"now training on {data.annotated_px} annotated px")
                yield from _maybe_validate(trainer, val_clock)
                request = (previews.take() if previews is not None else None) or request
                if request is not None and preview_clock.due(time.perf_counter()):
                    t0 = time.perf_counter()
                    preview = _preview(trainer, sources, request)
                    preview_clock.ran(t0, time.perf_counter())
                    yield TrainEvent("preview", step=trainer.step_count, elapsed=trainer.elapsed(), data=preview)
        except KeyboardInterrupt:
            pass
        model = trainer.finish(stopped=True)
    elapsed = trainer.elapsed()
    yield TrainEvent("done", step=trainer.step_count, elapsed=elapsed, loss=trainer.last_loss,
                     val_loss=trainer.best_val_loss, best_val_loss=trainer.best_val_loss, model=model, stopped=True,
                     message=f"stopped after {trainer.step_count} steps in {elapsed:.1f} s")


def _maybe_validate(trainer: Trainer, clock: _Clock):
    now = time.perf_counter()
    if not trainer.val_batches or not clock.due(now):
        return
    val = trainer.validate_and_record(trainer.elapsed())
    clock.ran(now, time.perf_counter())
    yield TrainEvent("validation", step=trainer.step_count, elapsed=trainer.elapsed(), loss=trainer.last_loss,
                     val_loss=val, best_val_loss=trainer.best_val_loss)
