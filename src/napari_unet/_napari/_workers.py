"""The work the widgets hand to napari workers, as plain generators and functions (no Qt, no viewer).

Everything here runs in a worker thread. It receives arrays (never layers) and reports through small
update objects that the widgets apply to the viewer on the GUI thread. Core events are batched so the
GUI thread receives at most a few updates a second, whatever the speed of the network.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Job", "drive", "background_threads", "WARMED", "warm_up", "TrainUpdate", "train_updates", "MaxTracker",
           "SegmentUpdate", "segment_updates", "ClickResult", "click_segment"]


@dataclass
class Job:
    """Book-keeping for one run: the events that end it and the layers it depends on.

    Attributes
    ----------
    stop : threading.Event
        Set to end the run early (training keeps the best model so far; prediction stops after the
        current batch of tiles).
    ended : threading.Event
        Set by the worker when its generator has returned (used to wait for it on close).
    layers : list
        The layers the run reads or writes; removing one of them ends the run.
    """

    kind: str
    stop: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    layers: list = field(default_factory=list)
    worker: object = None
    generator: object = None
    info: dict = field(default_factory=dict)

    def wait(self, timeout: float) -> bool:
        """Block until the worker ended (it must have started); returns whether it did."""
        return self.ended.wait(timeout)

    def release(self) -> None:
        """Drop the references to layers, worker and generator once the run is over.

        The worker and the job refer to each other; without this a finished job would keep the layers
        (and their arrays) alive after the user removed them, until the next garbage collection.
        """
        self.layers = []
        self.worker = None
        self.generator = None
        self.info = {k: v for k, v in self.info.items() if isinstance(v, (bool, int, float, str, type(None)))}

    def close_generator(self, *_) -> None:
        """Close the work generator so its clean-up runs now (connected to the worker's ``aborted``).

        napari quits every worker when its window closes; the worker then stops calling the generator,
        which would otherwise keep its clean-up (restoring torch threads, closing the core's
        generator, setting ``ended``) until garbage collection. Called in the worker thread, right
        after the worker stopped iterating, so the generator is never running at that moment.
        """
        gen = self.generator
        if gen is not None:
            try:
                gen.close()
            except ValueError:  # still executing (called from elsewhere): it ends on its own
                pass


def drive(generator):
    """A generator function running an existing generator (napari's workers need a function).

    Keeping the generator object in the `Job` lets `Job.close_generator` reach it.
    """
    return (yield from generator)


# ------------------------------------------------------------------------------------- torch threads
_thread_lock = threading.Lock()
_thread_users = 0
_saved_threads: int | None = None


class background_threads:
    """Context for work started from the viewer: leave one CPU core to the GUI thread.

    torch's intra-op pool uses every core by default. With the Qt event loop (and any other busy
    process) competing for those cores, OpenMP workers spin-wait on descheduled peers: on a 2-core
    machine with one core busy elsewhere, a tiny network's 256x256 forward pass was measured at 590 ms
    with 2 threads and 21 ms with 1, and a training step 3x slower. While plugin work runs the pool is
    shrunk to ``cpu_count - 1`` threads (never below 1, never above the current setting) and restored
    when the last run ends. The setting is process-wide, so runs are counted.
    """

    def __enter__(self):
        global _thread_users, _saved_threads
        import torch

        with _thread_lock:
            if _thread_users == 0:
                _saved_threads = torch.get_num_threads()
                wanted = max(1, min(_saved_threads, (os.cpu_count() or 2) - 1))
                if wanted != _saved_threads:
                    torch.set_num_threads(wanted)
            _thread_users += 1
        return self

    def __exit__(self, *exc):
        global _thread_users
        import torch

        with _thread_lock:
            _thread_users -= 1
            if _thread_users == 0 and _saved_threads is not None and torch.get_num_threads() != _saved_threads:
                torch.set_num_threads(_saved_threads)
        return False


# ------------------------------------------------------------------------------------------ warm-up
#: Set once `warm_up` has run in this process.
WARMED = threading.Event()


def warm_up() -> None:
    """Import and initialize what the first runs need, ahead of time, in a background thread.

    torch imports ``torch._dynamo`` (about a thousand modules, sympy included) the first time an
    optimizer is built. Imports hold the GIL for long stretches (over 100 ms at a time was measured),
    which would freeze the viewer at the start of the first training; zarr (0.4 s to import) would
    otherwise be imported on the GUI thread by the first segmentation of a lazy image. The widgets
    start this when they are created, so that cost is paid while the user is still looking at them.
    """
    if WARMED.is_set():
        return
    import dask.array  # noqa: F401
    import torch
    import zarr  # noqa: F401

    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.zeros(1, 1, 16, 16)).sum().backward()
    optimizer.step()
    WARMED.set()


# ------------------------------------------------------------------------------------------ training
@dataclass
class TrainUpdate:
    """What the Train widget needs from a batch of `napari_unet.train.TrainEvent`s.

    Attributes
    ----------
    kind : str
        Kind of the last core event in the batch (``start``, ``step``, ``validation``, ``done``).
    losses : list of (int, float)
        (step, training loss) of every step since the previous update.
    val_loss : float or None
        Set when this batch ends with a validation.
    """

    kind: str
    step: int = 0
    fraction: float = 0.0
    elapsed: float = 0.0
    loss: float | None = None
    losses: list = field(default_factory=list)
    val_loss: float | None = None
    best_val_loss: float | None = None
    model: object = None
    stopped: bool = False
    message: str = ""


def train_updates(images, labels, *, job: Job, min_interval: float = 0.2, **kwargs):
    """Run `napari_unet.iter_train` and yield `TrainUpdate`s, at most one per ``min_interval`` seconds.

    Parameters
    ----------
    images, labels : list of array-like
        Passed to `iter_train` (the labels are the widget's private copy).
    job : Job
        ``job.stop`` is handed to `iter_train`; ``job.ended`` is set when this generator ends.
    min_interval : float
        Steps closer together than this are reported together, so a fast network does not flood the
        GUI thread with signals.
    **kwargs
        Training settings for `iter_train`.
    """
    from napari_unet.train import iter_train

    try:
        with background_threads():
            pending, last = [], -np.inf
            for ev in iter_train(images, labels, stop=job.stop, **kwargs):
                if ev.kind == "step":
                    pending.append((ev.step, ev.loss))
                    now = time.perf_counter()
                    if now - last < min_interval:
                        continue
                    last = now
                yield TrainUpdate(ev.kind, step=ev.step, fraction=ev.fraction, elapsed=ev.elapsed, loss=ev.loss,
                                  losses=pending, val_loss=ev.val_loss if ev.kind == "validation" else None,
                                  best_val_loss=ev.best_val_loss, model=ev.model, stopped=ev.stopped,
                                  message=ev.message)
                pending = []
    finally:
        job.ended.set()


# ---------------------------------------------------------------------------------------- prediction
class MaxTracker:
    """An ``out=`` target that forwards writes and remembers the largest value written.

    The Segment widget needs the largest label id to give clicked objects new ids; tracking it while
    writing avoids reading a big on-disk result back.
    """

    def __init__(self, target):
        self.target = target
        self.shape = tuple(target.shape)
        self.dtype = target.dtype
        self.max = 0

    def __setitem__(self, key, value):
        value = np.asarray(value)
        if value.size:
            self.max = max(self.max, int(value.max()))
        self.target[key] = value

    def __getitem__(self, key):
        return self.target[key]


@dataclass
class SegmentUpdate:
    """A batch of `napari_unet.predict.PredictEvent`s for the Segment widget.

    Attributes
    ----------
    kind : str
        ``start``, ``progress``, ``warning`` or ``done``.
    regions : list of tuple
        Regions of the labels output (spatial axes) written since the previous update.
    prob_regions : list of tuple
        Same for the probability output (class axis first).
    max_label : int
        Largest label written so far.
    """

    kind: str
    fraction: float = 0.0
    elapsed: float = 0.0
    regions: list = field(default_factory=list)
    prob_regions: list = field(default_factory=list)
    max_label: int = 0
    message: str = ""


def segment_updates(model, image, *, labels_out, job: Job, prob_out=None, min_interval: float = 0.4,
                    **kwargs):
    """Segment ``image`` into ``labels_out`` (and ``prob_out``), yielding `SegmentUpdate`s.

    Parameters
    ----------
    model : napari_unet.Model
    image : array-like
        numpy, dask or zarr; read tile by tile by the core.
    labels_out : array-like
        Where the labels go (a numpy array or an on-disk zarr array), shaped like the image's spatial
        axes.
    job : Job
        The run ends after the current batch of tiles once ``job.stop`` is set; ``job.ended`` is set
        when this generator ends.
    prob_out : array-like, optional
        ``(K, *spatial)`` float32 target for the class probabilities, written from the same forward
        passes as the labels.
    min_interval : float
        Regions are reported together at most this often.
    **kwargs
        ``tile``, ``device``, ``channel_axis``, ``batch_size`` for `napari_unet.iter_predict`.
    """
    from napari_unet.predict import iter_predict

    tracker = MaxTracker(labels_out)
    # instance labels of a plane/volume are written at its "item" event; semantic labels tile by tile
    labels_at = "item" if model.mode == "instance" else "tiles"
    events = None
    try:
        with background_threads():
            # with prob_out, labels and probabilities come from the same forward passes
            events = iter_predict(model, image, out=tracker, output="labels", probabilities_out=prob_out, **kwargs)
            regions, prob_regions, last = [], [], -np.inf
            for ev in events:
                if job.stop.is_set():
                    return
                if ev.kind == "warning":
                    yield SegmentUpdate("warning", ev.fraction, ev.elapsed, message=ev.message)
                    continue
                if ev.region is not None:
                    if ev.kind == labels_at:
                        regions.append(ev.region)
                    if prob_out is not None and ev.kind == "tiles":
                        prob_regions.append((slice(None),) + tuple(ev.region))
                now = time.perf_counter()
                if ev.kind in ("start", "done") or now - last >= min_interval:
                    last = now
                    yield SegmentUpdate("progress" if ev.kind not in ("start", "done") else ev.kind, ev.fraction,
                                        ev.elapsed, regions, prob_regions, tracker.max, ev.message)
                    regions, prob_regions = [], []
    finally:
        if events is not None:
            events.close()
        job.ended.set()


# ----------------------------------------------------------------------------------- click to segment
@dataclass
class ClickResult:
    """The object found at a click, relative to the window that was segmented.

    Attributes
    ----------
    mask : ndarray of bool or None
        The clicked object inside the window (None when the click hit background).
    offset : tuple of int
        Position of the window's first pixel in the output layer (leading indices included).
    value : int
        Class id (semantic model) or instance id (instance model) under the click; 0 for background.
    seconds : float
        Time spent in the worker.
    """

    mask: np.ndarray | None
    offset: tuple
    value: int
    seconds: float


def click_segment(model, source, point, offset, *, key=None, device="auto") -> ClickResult:
    """Segment a window around a click and pick the clicked object.

    Parameters
    ----------
    model : napari_unet.Model
    source : array-like
        Channels-first image (e.g. `napari_unet.data.ChannelsFirst`); the window is ``source[key]``,
        read here so a slow (dask, remote) image never blocks the GUI thread.
    point : tuple of int
        The click, relative to the window.
    offset : tuple of int
        Where the window sits in the output (leading stack indices first); carried through.
    key : tuple, optional
        Index of the window in ``source`` (default: all of it).
    device : str

    Returns
    -------
    ClickResult
        Instance models: the object with the id under the click. Semantic models: the connected
        region of the class under the click (so touching objects of one class come as one).
    """
    from scipy import ndimage as ndi

    from napari_unet.predict import segment

    t0 = time.perf_counter()
    window = np.asarray(source[key] if key is not None else source)
    with background_threads():
        lab = segment(model, window, tile=None, device=device, channel_axis=0)
    value = int(lab[tuple(point)])
    mask = None
    if value:
        same = lab == value
        if model.mode == "instance":
            mask = same
        else:
            comp, _ = ndi.label(same)
            mask = comp == comp[tuple(point)]
    return ClickResult(mask, tuple(offset), value, time.perf_counter() - t0)
