"""Long work is a generator of small progress events: run one to its end (`drain`), stop one between
events (`until`), or batch its events for a GUI (`batch_train_events`, `batch_predict_events`).

A fast network yields hundreds of events a second; a GUI thread applying each would stall. The
batchers merge what happened since the previous update and yield at most one update per interval,
whatever the speed of the work, without dropping anything a GUI shows (losses, written regions).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

__all__ = ["drain", "until", "MaxTracker", "TrainUpdate", "batch_train_events", "PredictUpdate",
           "batch_predict_events"]


def drain(events, progress=None, total: int = 100):
    """Run a generator of events to its end, reporting to a tqdm-like ``progress``; return the last event.

    Parameters
    ----------
    events : iterable
        Events with a ``fraction`` (0 to 1) and, for training, a ``loss``.
    progress : tqdm-like, optional
        Receives ``update(n)`` (in ``total`` parts) and ``set_postfix(loss=...)``.
    total : int
        Parts of the whole run given to ``progress``.
    """
    if progress is not None and (isinstance(progress, type) or not callable(getattr(progress, "update", None))):
        # checked before the run: failing at its first report would throw the work away
        raise TypeError(f"progress must be a tqdm-like object with an update(n) method (e.g. tqdm.tqdm()), got "
                        f"{progress!r}")
    last = None
    shown = 0
    if progress is not None and getattr(progress, "total", None) is None:
        try:
            progress.total = total
        except AttributeError:
            pass
    for event in events:
        last = event
        if progress is not None:
            done = int(round(getattr(event, "fraction", 0.0) * total))
            if done > shown:
                progress.update(done - shown)
                shown = done
            loss = getattr(event, "loss", None)
            if loss is not None and hasattr(progress, "set_postfix"):
                progress.set_postfix(loss=f"{loss:.4f}", refresh=False)
    return last


def until(events, stop):
    """Yield ``events`` until ``stop`` (a `threading.Event`) is set, then close them (their clean-up runs).

    For work that has no ``stop=`` of its own (prediction): it ends after the event in progress.
    """
    try:
        for event in events:
            if stop.is_set():
                return
            yield event
            if stop.is_set():
                return
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


class MaxTracker:
    """An ``out=`` target that forwards writes and remembers the largest value written.

    A GUI needs the largest label id of a result to give objects added later new ids; tracking it
    while writing avoids reading a big on-disk result back.
    """

    def __init__(self, target):
        self.target = target
        self.shape = tuple(target.shape)
        self.dtype = target.dtype
        self.ndim = len(self.shape)
        self.max = 0

    def __setitem__(self, key, value):
        value = np.asarray(value)
        if value.size:
            self.max = max(self.max, int(value.max()))
        self.target[key] = value

    def __getitem__(self, key):
        return self.target[key]


@dataclass(frozen=True)
class TrainUpdate:
    """A batch of `napari_unet.train.TrainEvent`s.

    Attributes
    ----------
    kind : str
        Kind of the last event of the batch (``start``, ``step``, ``validation``, ``warning``, ``done``).
    step, fraction, elapsed, loss, best_val_loss, model, stopped, message
        As in that last event.
    losses : tuple of (int, float)
        (step, training loss) of every step since the previous update.
    val_loss : float or None
        Set when the batch ends with a validation.
    data : object
        That event's ``data`` (live training's labels taken and previews).
    """

    kind: str
    step: int = 0
    fraction: float = 0.0
    elapsed: float = 0.0
    loss: float | None = None
    losses: tuple = ()
    val_loss: float | None = None
    best_val_loss: float | None = None
    model: object = None
    stopped: bool = False
    message: str = ""
    data: object = None


def batch_train_events(events, *, min_interval: float = 0.2, clock=time.perf_counter):
    """Merge `napari_unet.iter_train` events into `TrainUpdate`s, at most one step update per ``min_interval`` s.

    Every event other than a step (start, validation, warning, done) is passed on at once, with the
    losses of the steps before it.

    Parameters
    ----------
    events : iterable of TrainEvent
    min_interval : float
        Seconds between two updates made of steps only.
    clock : callable
        Returns the time in seconds (tests pass a fake one).
    """
    pending, last = [], -np.inf
    for ev in events:
        if ev.kind == "step":
            pending.append((ev.step, ev.loss))
            now = clock()
            if now - last < min_interval:
                continue
            last = now
        yield TrainUpdate(ev.kind, step=ev.step, fraction=ev.fraction, elapsed=ev.elapsed, loss=ev.loss,
                          losses=tuple(pending), val_loss=ev.val_loss if ev.kind == "validation" else None,
                          best_val_loss=ev.best_val_loss, model=ev.model, stopped=ev.stopped, message=ev.message,
                          data=getattr(ev, "data", None))
        pending = []


@dataclass(frozen=True)
class PredictUpdate:
    """A batch of `napari_unet.predict.PredictEvent`s.

    Attributes
    ----------
    kind : str
        ``start``, ``progress``, ``warning`` or ``done``.
    fraction, elapsed, message
        As in the last event of the batch.
    regions : tuple of tuple
        Regions of the labels output (spatial axes) complete since the previous update.
    max_label : int
        Largest label written so far (0 without a tracker).
    result : object
        The ``done`` event's result.
    """

    kind: str
    fraction: float = 0.0
    elapsed: float = 0.0
    regions: tuple = ()
    max_label: int = 0
    message: str = ""
    result: object = None


def batch_predict_events(events, *, instance: bool = False, tracker: MaxTracker | None = None,
                         min_interval: float = 0.4, clock=time.perf_counter):
    """Merge prediction events into `PredictUpdate`s, at most one progress update per ``min_interval`` s.

    Parameters
    ----------
    events : iterable of PredictEvent
    instance : bool
        Instance labels are complete at ``item`` events (objects are separated over a whole plane or
        volume); semantic labels at ``tiles`` events.
    tracker : MaxTracker, optional
        The labels output, for ``max_label``.
    min_interval : float
        Seconds between two progress updates (``start``, ``warning`` and ``done`` are passed at once).
    clock : callable
        Returns the time in seconds.
    """
    labels_at = "item" if instance else "tiles"
    regions, last = [], -np.inf
    for ev in events:
        largest = tracker.max if tracker is not None else 0
        if ev.kind == "warning":
            yield PredictUpdate("warning", ev.fraction, ev.elapsed, max_label=largest, message=ev.message)
            continue
        if ev.kind == labels_at and ev.region is not None:
            regions.append(tuple(ev.region))
        now = clock()
        if ev.kind in ("start", "done") or now - last >= min_interval:
            last = now
            kind = ev.kind if ev.kind in ("start", "done") else "progress"
            yield PredictUpdate(kind, ev.fraction, ev.elapsed, tuple(regions), largest, ev.message,
                                getattr(ev, "result", None) if ev.kind == "done" else None)
            regions = []
