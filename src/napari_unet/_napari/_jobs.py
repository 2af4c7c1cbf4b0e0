"""The one way the widgets run work in the background: a `JobRunner` of napari workers.

Every background task (training, segmentation, a click, "Use as annotations") is a `Job` started by
the widget's runner: it runs a generator (or a plain function) in a napari worker under the viewer's
thread policy (one core left to the GUI), reports its updates, result and end on the GUI thread,
sends errors to napari notifications, can be stopped, and is waited for (bounded) when the viewer
closes.
"""
from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass, field

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt

from napari_unet.device import thread_policy

from ._layers import same_layer
from ._lifecycle import weak_method

__all__ = ["Job", "JobRunner", "WARMED", "warm_up"]


@dataclass(eq=False)
class Job:
    """One background task.

    Attributes
    ----------
    kind : str
        ``"train"``, ``"segment"``, ``"click"`` or ``"annotations"``.
    layers : list
        The layers it reads or writes (the widget ends the job when one of them is removed).
    stop : threading.Event
        Set to end it early: training keeps the best model so far, prediction stops after the
        current batch of tiles, a click or a conversion is not applied.
    ended : threading.Event
        Set in the worker thread once the work has returned (or failed, or was closed).
    """

    kind: str
    layers: list = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    worker: object = field(default=None, repr=False)
    generator: object = field(default=None, repr=False)

    @property
    def stopped(self) -> bool:
        """Whether it was asked to stop."""
        return self.stop.is_set()

    def uses(self, layer) -> bool:
        """Whether ``layer`` is one of the job's layers."""
        return any(same_layer(layer, x) for x in self.layers)

    def wait(self, timeout: float) -> bool:
        """Block until the work ended; returns whether it did."""
        return self.ended.wait(timeout)

    def _close_generator(self, *_) -> None:
        """Close the work generator so its clean-up runs now (connected to the worker's ``aborted``).

        napari quits every worker when its window closes; the worker then stops calling the generator,
        which would otherwise keep its clean-up (restoring torch threads, closing the core's
        generator, setting ``ended``) until garbage collection. Runs in the worker thread, right after
        the worker stopped iterating, so the generator is never running at that moment.
        """
        gen = self.generator
        if gen is not None:
            try:
                gen.close()
            except ValueError:  # still executing (called from elsewhere): it ends on its own
                pass

    def _release(self) -> None:
        """Drop the references to layers, worker and generator once the job is over.

        The worker and the job refer to each other; without this a finished job would keep the layers
        (and their arrays) alive after the user removed them, until the next garbage collection.
        """
        self.layers = []
        self.worker = None
        self.generator = None


def _work(job: Job, work):
    """The generator a worker runs: ``work(job.stop)`` under the viewer's thread policy, driven to its
    end when it is a generator; ``job.ended`` is set however it ends."""
    try:
        with thread_policy(spare_cores=1):
            result = work(job.stop)
            if inspect.isgenerator(result):
                result = yield from result
            return result
    finally:
        job.ended.set()


def _drive(generator):
    """A generator function over an existing generator (napari's workers take a function)."""
    return (yield from generator)


class JobRunner:
    """Runs the `Job`s of one widget.

    Parameters
    ----------
    name : str
        Shown before every error notification.
    """

    def __init__(self, name: str):
        self.name = name
        self.closing = False
        self._jobs: list[Job] = []

    def start(self, kind: str, work, *, layers=(), on_update=None, on_result=None, on_error=None,
              on_finished=None) -> Job:
        """Start ``work`` in a napari worker and return its job.

        Parameters
        ----------
        kind : str
        work : callable
            Called in the worker thread with the job's ``stop`` event (`threading.Event`). It returns
            the result (given to ``on_result``), or a generator whose yielded values go to
            ``on_update`` and whose return value goes to ``on_result``. It never touches the viewer.
        layers : sequence of Layer
        on_update, on_result, on_error, on_finished : callable, optional
            Called on the GUI thread as ``f(job, value)`` (``f(job, exc)`` for errors, after the
            notification; ``f(job)`` at the end, whatever happened). Not called once the runner is
            closing, except ``on_finished``. Pass `weak_method`s: the runner keeps them.
        """
        job = Job(kind, layers=list(layers))
        job.generator = _work(job, work)
        worker = create_worker(_drive, job.generator, _start_thread=False, _ignore_errors=True)
        job.worker = worker
        worker.aborted.connect(job._close_generator, Qt.ConnectionType.DirectConnection)
        if on_update is not None:
            worker.yielded.connect(self._unless_closing(on_update, job))
        if on_result is not None:
            worker.returned.connect(self._unless_closing(on_result, job))
        worker.errored.connect(weak_method(self._on_error, job, on_error))
        worker.finished.connect(weak_method(self._on_finished, job, on_finished))
        self._jobs.append(job)
        worker.start()
        return job

    def _unless_closing(self, callback, job):
        ref = weak_method(self._is_closing)

        def call(value):
            if ref() is False:
                callback(job, value)

        return call

    def _is_closing(self) -> bool:
        return self.closing

    def _on_error(self, job, on_error, exc) -> None:
        if self.closing:
            return
        show_error(f"{self.name}: {exc}")
        if on_error is not None:
            on_error(job, exc)

    def _on_finished(self, job, on_finished) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
        try:
            if on_finished is not None:
                on_finished(job)
        finally:
            job._release()

    def running(self, kind: str | None = None) -> list:
        """The jobs not finished yet (of one kind)."""
        return [j for j in self._jobs if kind is None or j.kind == kind]

    def using(self, layer) -> list:
        """The running jobs that read or write ``layer``."""
        return [j for j in self._jobs if j.uses(layer)]

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every job and wait up to ``timeout`` seconds in all for them to end (the viewer closes).

        Waiting keeps quitting the application from tearing Python down under a running step.
        """
        self.closing = True
        jobs = list(self._jobs)
        for job in jobs:
            job.stop.set()
        deadline = time.monotonic() + timeout
        for job in jobs:
            worker = job.worker
            if timeout > 0 and worker is not None and getattr(worker, "is_running", False):
                job.wait(max(0.0, deadline - time.monotonic()))


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
