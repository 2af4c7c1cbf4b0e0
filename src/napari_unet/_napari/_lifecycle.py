"""Noticing that the viewer window closes, the widget's panel is closed, or the application quits, so
running workers can be ended.

A dock widget gets no close event of its own when napari's main window closes. `CloseWatcher` filters
the events of the widget to find the top-level window it ends up in once docked, then watches that
window's Close event; it also listens to ``QApplication.aboutToQuit``, and to the widget being taken out
of its dock (closing the panel). Only public Qt API is used.
"""
from __future__ import annotations

import weakref

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QApplication, QWidget

__all__ = ["CloseWatcher", "weak_method"]


def weak_method(method, *bound_args):
    """A plain function calling ``method(*bound_args, *args)`` while its object is alive.

    Callbacks handed to napari lists or Qt signals that are not disconnected must not keep a widget
    (and, through it, a closed viewer) alive.
    """
    ref = weakref.WeakMethod(method)

    def call(*args, **kwargs):
        m = ref()
        if m is not None:
            return m(*bound_args, *args, **kwargs)
        return None

    return call


class CloseWatcher(QObject):
    """Calls ``callback()`` once, when the window holding ``widget`` closes, ``widget`` is taken out of its
    dock (its panel closed), or the application quits.

    Parameters
    ----------
    widget : QWidget
        The plugin widget (docked or not).
    callback : callable
        Called with no arguments. Held weakly when it is a bound method.
    """

    def __init__(self, widget: QWidget, callback):
        super().__init__(widget)
        # weak: a strong reference to napari's main window from here would form a reference cycle
        # (window -> dock -> widget -> watcher -> window) that outlives the closed viewer
        self._widget_ref = weakref.ref(widget)
        self._window_ref = None
        self._callback = weak_method(callback) if hasattr(callback, "__self__") else callback
        self._fired = False  # set before the filter is installed: eventFilter reads it
        widget.installEventFilter(self)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.fire)
        self._watch_window()

    @property
    def _widget(self):
        ref = self.__dict__.get("_widget_ref")
        return ref() if ref is not None else None

    @property
    def _window(self):
        ref = self.__dict__.get("_window_ref")
        return ref() if ref is not None else None

    def _watch_window(self) -> None:
        widget = self._widget
        try:
            window = widget.window() if widget is not None else None
        except RuntimeError:  # the widget is being deleted
            return
        if window is not None and window is not widget and window is not self._window:
            old = self._window
            if old is not None:
                try:
                    old.removeEventFilter(self)
                except RuntimeError:
                    pass
            self._window_ref = weakref.ref(window)
            window.installEventFilter(self)

    def eventFilter(self, obj, event):  # noqa: N802 (Qt name)
        widget = self._widget
        if widget is None or self.__dict__.get("_fired", True):
            return False  # being torn down by the garbage collector, or done
        kind = event.type()
        if obj is widget and kind == QEvent.Type.ParentChange and widget.parent() is None \
                and self._window is not None:
            # taken out of its dock (the panel's X: napari's remove_dock_widget unparents it, then drops
            # it without a Close event): its work must end now, not run on unseen
            self.fire()
        elif obj is widget and kind in (QEvent.Type.ParentChange, QEvent.Type.Show):
            self._watch_window()
        elif kind == QEvent.Type.Close and (obj is self._window or obj is widget):
            # the window may refuse to close (napari asks for confirmation): decide once it has answered
            QTimer.singleShot(0, self._after_close)
        return False

    def _after_close(self) -> None:
        window = self._window if self._window is not None else self._widget
        try:
            closed = window is None or not window.isVisible()
        except RuntimeError:  # deleted while closing
            closed = True
        if closed:
            self.fire()

    def fire(self) -> None:
        """Run the callback (once)."""
        if self.__dict__.get("_fired", True):
            return
        self._fired = True
        for obj in (self._window, self._widget):
            try:
                if obj is not None:
                    obj.removeEventFilter(self)
            except RuntimeError:  # already deleted
                pass
        self._callback()
