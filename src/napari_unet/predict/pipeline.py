"""A generic threaded pipeline: one reader, a few compute workers, one writer, events to a generator.

::

    reader thread  --(queue)-->  compute worker(s)  --(queue)-->  writer thread  --(events)-->  generator
    read(item)                   compute(data)                    write(item, result), in order

It knows nothing of tiles or arrays: what flows through it is whatever ``read`` returns. The generator
only relays the writer's events, so a consumer can stop between any two of them: closing the generator
(or an exception) stops every thread and joins it before the generator returns; on Ctrl-C a forward
pass in progress is not waited for (the reader and the writer are). At
most ``workers + prefetch + 1`` items are in flight, and an item's slot is released only once the last
of its events has been handed to the consumer, so memory stays bounded whatever the number of items,
and a consumer that stops pulling events stops the work. An error in any stage stops every thread and
is raised in the consumer.
"""
from __future__ import annotations

import contextlib
import queue
import threading

__all__ = ["run_pipeline", "PREFETCH"]

#: Items read ahead of the compute workers.
PREFETCH = 2

_END = object()


class _Stopped(Exception):
    """Raised inside a pipeline thread when the pipeline is being shut down."""


class _Pipeline:
    """The threads and queues of one `run_pipeline` call."""

    def __init__(self, items, read, compute, write, workers, prefetch, worker_context, name):
        self.items, self.read, self.compute, self.write = items, read, compute, write
        self.workers, self.worker_context, self.name = workers, worker_context, name
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.inbox: queue.Queue = queue.Queue(max(1, prefetch))
        self.results: queue.Queue = queue.Queue()
        self.events: queue.Queue = queue.Queue()
        self.slots = threading.Semaphore(workers + prefetch + 1)
        self.threads: list[threading.Thread] = []

    # -- plumbing
    def _put(self, q: queue.Queue, item):
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _get(self, q: queue.Queue):
        while not self.stop.is_set():
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                continue
        raise _Stopped

    def _guard(self, fn):
        try:
            fn()
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the generator, which raises it
            if self.error is None:
                self.error = exc
            self.stop.set()
            self.events.put(("error", exc))

    def notify(self, event):
        """Hand an event to the consumer out of band (it holds no slot): a warning, say."""
        self.events.put(("event", event, False))

    def start(self):
        stages = [("reader", self._read)] + [(f"compute-{k}", self._compute) for k in range(self.workers)]
        stages.append(("writer", self._write))
        for name, fn in stages:
            t = threading.Thread(target=self._guard, args=(fn,), name=f"{self.name}-{name}", daemon=True)
            self.threads.append(t)
            t.start()

    def shutdown(self, wait_for_compute: bool = True):
        """Stop every thread and wait for it.

        The reader and the writer are always waited for, through any further Ctrl-C too (held back and
        raised afterwards): once this returns nothing writes into the outputs, which the caller may now
        delete. A compute step in progress (a forward pass can take minutes on a CPU) is waited for only
        when ``wait_for_compute``; otherwise its thread finishes on its own and its result is dropped.
        """
        self.stop.set()
        held_back = None
        for t in self.threads:
            if t is threading.current_thread() or (not wait_for_compute and "-compute-" in t.name):
                continue
            while t.is_alive():
                try:
                    t.join()
                except KeyboardInterrupt as exc:
                    held_back = exc
        self.threads = []
        if held_back is not None:
            raise held_back

    # -- stages
    def _read(self):
        for seq, item in enumerate(self.items):
            while not self.slots.acquire(timeout=0.05):
                if self.stop.is_set():
                    raise _Stopped
            self._put(self.inbox, (seq, item, self.read(item)))
        for _ in range(self.workers):
            self._put(self.inbox, _END)

    def _compute(self):
        with self.worker_context():
            while True:
                msg = self._get(self.inbox)
                if msg is _END:
                    self._put(self.results, _END)
                    return
                seq, item, data = msg
                self._put(self.results, (seq, item, self.compute(data)))

    def _write(self):
        pending, next_seq, ended = {}, 0, 0
        while ended < self.workers:
            msg = self._get(self.results)
            if msg is _END:
                ended += 1
                continue
            pending[msg[0]] = msg
            while next_seq in pending:  # in order: events report items in the order they were read
                _, item, result = pending.pop(next_seq)
                next_seq += 1
                events = list(self.write(item, result))
                if not events:
                    self.slots.release()
                for k, event in enumerate(events):
                    self.events.put(("event", event, k == len(events) - 1))
        self.events.put(("end",))

    def relay(self):
        """Yield the writer's events; an item's slot is freed once its last event is handed over."""
        while True:
            try:
                msg = self.events.get(timeout=0.1)
            except queue.Empty:
                if self.error is not None:
                    raise self.error
                continue
            if msg[0] == "error":
                raise msg[1]
            if msg[0] == "end":
                return
            _, event, release = msg
            yield event
            if release:
                self.slots.release()


def run_pipeline(items, read, compute, write, *, workers: int = 1, prefetch: int = PREFETCH,
                 worker_context=contextlib.nullcontext, name: str = "napari-unet-predict", on_start=None):
    """Run ``write(item, compute(read(item)))`` for every item in threads; yield what ``write`` yields.

    Parameters
    ----------
    items : iterable
        Work items, taken in order by the reader thread.
    read : callable
        ``read(item) -> data`` in the reader thread (I/O, host work).
    compute : callable
        ``compute(data) -> result`` in each of ``workers`` threads.
    write : callable
        ``write(item, result) -> iterable of events`` in the writer thread, in the order of ``items``.
    workers, prefetch : int
        Concurrent compute threads; items read ahead of them.
    worker_context : callable
        Returns the context manager each compute thread runs in (its torch threads, its device).
    name : str
        Prefix of the threads' names.
    on_start : callable, optional
        Called with a ``notify(event)`` function before the threads start: events handed to it reach
        the consumer between the writer's events (warnings from a compute stage).

    Yields
    ------
    The events of ``write`` and of ``notify``, as they come.
    """
    pipeline = _Pipeline(iter(items), read, compute, write, workers, prefetch, worker_context, name)
    if on_start is not None:
        on_start(pipeline.notify)
    interrupted = False
    try:
        pipeline.start()
        yield from pipeline.relay()
    except KeyboardInterrupt:
        interrupted = True  # stop within seconds: a long forward pass is not waited for
        raise
    finally:  # also on close(): no thread that reads or writes outlives the generator
        pipeline.shutdown(wait_for_compute=not interrupted)
