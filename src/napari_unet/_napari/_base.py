"""What the two dock widgets share: the viewer reference, a `JobRunner` for all their background work
with one long job (training or segmentation) at a time, and a bounded shutdown when the viewer closes."""
from __future__ import annotations

import logging
import threading
import weakref

from magicgui.widgets import Container
from napari.utils.notifications import show_error

from ._jobs import WARMED, Job, JobRunner, warm_up
from ._layers import unwrap
from ._lifecycle import CloseWatcher, weak_method


class JobWidget(Container):
    """Base of the dock widgets: every background task goes through ``self.runner``.

    Subclasses build their sub-widgets in ``__init__`` after calling ``super().__init__`` and then call
    `_watch_viewer`; they implement ``start`` (which calls `_start_main`), ``stop`` and
    ``_on_layer_removed``, and may extend `_disconnect`.

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
        self.runner = JobRunner(self.NAME)
        self._main: Job | None = None

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
    def job(self) -> Job | None:
        """The widget's long job (training or segmentation) while it runs."""
        return self._main

    @property
    def running(self) -> bool:
        """Whether the widget's long job is in progress."""
        return self._main is not None

    @property
    def closing(self) -> bool:
        """Whether the widget is shutting down (its callbacks then leave the viewer alone)."""
        return self.runner.closing

    # ------------------------------------------------------------------------------------- jobs
    def _on_run_clicked(self, *_) -> None:
        """The run button: starts a job, or stops the running one."""
        if self._main is not None:
            self.stop()
            return
        try:
            self.start()
        except Exception as exc:  # noqa: BLE001 - never a crashed viewer: every failure to start is shown
            report_start_error(self.NAME, exc)

    def _start_main(self, kind: str, work, *, layers, on_update, on_finished) -> Job:
        """Start the widget's long job; ``on_update(job, update)`` and ``on_finished(job)`` are bound
        methods, called on the GUI thread (``on_finished`` only while the widget is not closing)."""
        job = self.runner.start(kind, work, layers=layers, on_update=weak_method(on_update),
                                on_error=weak_method(self._on_main_error),
                                on_finished=weak_method(self._main_finished, weak_method(on_finished)))
        self._main = job
        return job

    def _main_finished(self, on_finished, job) -> None:
        if job is self._main:
            self._main = None
            if not self.closing:
                on_finished(job)

    def _on_main_error(self, job, exc) -> None:
        if job is self._main:
            self.status.value = f"failed: {exc}"

    # ------------------------------------------------------------------------------------- closing
    def _disconnect(self) -> None:
        """Drop connections to objects that outlive the widget (called once, on shutdown)."""

    def _on_destroyed(self, *_):
        self.shutdown(timeout=0.0)

    def shutdown(self, timeout: float = 5.0) -> None:
        """End running work (the viewer is closing): ask it to stop and wait up to ``timeout`` seconds."""
        if self.closing:
            return
        self._disconnect()
        self.runner.shutdown(timeout)


#: What a user's bad input or machine raises; anything else is a bug, shown with its type and logged.
EXPECTED_ERRORS = (ValueError, TypeError, MemoryError, OSError)


def report_start_error(name: str, exc: Exception) -> None:
    """Show why a job could not start as a notification (the viewer goes on); unexpected errors are
    also logged with their traceback, so a bug is never swallowed."""
    if isinstance(exc, EXPECTED_ERRORS):
        show_error(f"{name}: {exc}")
        return
    logging.getLogger("napari_unet").error("%s could not start", name, exc_info=exc)
    show_error(f"{name}: could not start ({type(exc).__name__}: {exc})")
