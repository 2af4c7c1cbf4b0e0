"""What the two dock widgets share: the viewer reference, one long job at a time in a napari worker,
error notifications, and a bounded shutdown when the viewer closes."""
from __future__ import annotations

import threading
import weakref

from magicgui.widgets import Container
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt

from ._layers import unwrap
from ._lifecycle import CloseWatcher, weak_method
from ._workers import WARMED, Job, drive, warm_up


class JobWidget(Container):
    """Base of the dock widgets: runs one `Job` at a time off the GUI thread.

    Subclasses build their sub-widgets in ``__init__`` after calling ``super().__init__`` and then call
    `_watch_viewer`; they implement ``start``, ``stop``, ``_on_update``, ``_on_finished`` and
    ``_on_layer_removed``, and may extend `_extra_jobs` and `_disconnect`.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Passed by napari when the widget is docked from the Plugins menu.
    """

    #: shown before every notification of the widget
    NAME = "napari-unet"

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        # a weak reference: the widget must not keep a closed viewer (and its layers) alive
        self._viewer_ref = weakref.ref(unwrap(napari_viewer))
        self._job: Job | None = None
        self._closing = False

    def _watch_viewer(self) -> None:
        """Follow the viewer's layers and window; call once the sub-widgets exist."""
        viewer = self.viewer
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
            event.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        self._closer = CloseWatcher(self.native, self.shutdown)
        self.native.destroyed.connect(weak_method(self._on_destroyed))
        if not WARMED.is_set():
            # keeps slow first imports off the GUI thread; a plain daemon thread: it talks to nothing in
            # the GUI and must not delay quitting
            threading.Thread(target=warm_up, name="napari-unet warm-up", daemon=True).start()

    @property
    def viewer(self):
        """The viewer (None once it is gone)."""
        return self._viewer_ref()

    @property
    def running(self) -> bool:
        """Whether the widget's long job (training or segmentation) is in progress."""
        return self._job is not None

    # ------------------------------------------------------------------------------------- jobs
    def _on_run_clicked(self, *_) -> None:
        """The run button: starts a job, or stops the running one."""
        if self._job is not None:
            self.stop()
            return
        try:
            self.start()
        except (ValueError, TypeError, MemoryError, OSError) as exc:  # OSError: e.g. no disk space for the output
            show_error(f"{self.NAME}: {exc}")

    def _launch(self, job: Job, generator) -> None:
        """Make ``job`` the running job, driven by a napari worker over ``generator`` (not started yet).

        The worker's updates, errors and end come back to this widget on the GUI thread; the caller
        updates its buttons and then calls ``job.worker.start()``.
        """
        job.generator = generator
        worker = create_worker(drive, generator, _start_thread=False, _ignore_errors=True)
        job.worker = worker
        # closes the generator in the worker thread when napari aborts the worker (window closed)
        worker.aborted.connect(job.close_generator, Qt.ConnectionType.DirectConnection)
        worker.yielded.connect(weak_method(self._on_update, job))
        worker.errored.connect(weak_method(self._on_error, job))
        worker.finished.connect(weak_method(self._on_finished, job))
        self._job = job

    def _end_job(self, job: Job) -> bool:
        """Book-keeping when a job's worker finished; returns whether the widget should update its UI."""
        job.release()
        if job is not self._job:
            return False
        self._job = None
        return not self._closing

    def _on_error(self, job, exc) -> None:
        if self._closing:
            return
        show_error(f"{self.NAME}: {exc}")
        if job is self._job:
            self.status.value = f"failed: {exc}"

    # ------------------------------------------------------------------------------------- closing
    def _extra_jobs(self) -> list:
        """Other running jobs to stop on shutdown (besides the main one)."""
        return []

    def _disconnect(self) -> None:
        """Drop connections to objects that outlive the widget (called once, on shutdown)."""

    def _on_destroyed(self, *_):
        self.shutdown(timeout=0.0)

    def shutdown(self, timeout: float = 5.0) -> None:
        """End running work (the viewer is closing): ask it to stop and wait up to ``timeout`` seconds."""
        if self._closing:
            return
        self._closing = True
        self._disconnect()
        for job in [self._job, *self._extra_jobs()]:
            if job is not None:
                job.stop.set()
        job = self._job
        # wait (bounded) so that quitting the application never tears Python down under a running step
        if timeout > 0 and job is not None and job.worker is not None and getattr(job.worker, "is_running", False):
            job.wait(timeout)
