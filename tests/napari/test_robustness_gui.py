"""A new user's mistakes in a real viewer: each test is a bug that was found and fixed
(docs/robustness-gui.md)."""
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QDockWidget

from .conftest import click_checkbox, messages, set_tiny, wait_until

LEFT = Qt.MouseButton.LeftButton


def _close_dock(qtbot, viewer, title):
    dock = next(d for d in viewer.window._qt_window.findChildren(QDockWidget) if title in d.windowTitle())
    qtbot.mouseClick(dock.title.close_button, LEFT)  # the panel's X


def _start_live(qtbot, train, steps=2):
    set_tiny(train)
    click_checkbox(qtbot, train.live)
    qtbot.mouseClick(train.train_button.native, LEFT)
    wait_until(qtbot, lambda: len(train.loss_plot.train) >= steps, timeout=60)
    return train._live


def test_a_new_class_painted_in_live_mode_is_a_warning_and_live_cannot_be_unticked(plugin_viewer, qtbot,
                                                                                  notifications):
    viewer, train, _ = plugin_viewer
    session = _start_live(qtbot, train)
    assert not train.live.enabled  # a running live run stays live: the checkbox does not pretend otherwise
    strokes = viewer.layers["nuclei annotations"]
    strokes.paint((60, 60), 5)  # label 5: not a class of this run
    wait_until(qtbot, lambda: any("label 5 is not a class" in m for m in messages(notifications, "warning")),
               timeout=30)
    assert session.version == 1
    qtbot.mouseClick(train.train_button.native, LEFT)  # Stop
    wait_until(qtbot, lambda: not train.running, timeout=60)
    assert train.live.enabled and train.live.value
    assert not messages(notifications, "error")


def test_closing_train_unet_during_live_mode_stops_watching_the_annotations(plugin_viewer, qtbot, notifications):
    viewer, train, _ = plugin_viewer
    session = _start_live(qtbot, train)
    job = train.job
    _close_dock(qtbot, viewer, "Train UNet")
    qtbot.waitUntil(job.ended.is_set, timeout=10000)
    assert not session._poll.isActive() and not session._callbacks
    strokes = viewer.layers["nuclei annotations"]
    strokes.paint((50, 50), 1)
    qtbot.wait(2 * 250 + 100)  # past the settle time
    assert session.version == 0  # no copies of the annotations for a run that is over
    assert not messages(notifications, "error")

