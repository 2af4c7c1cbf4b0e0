"""Batching progress events for a GUI, stopping work between events, tracking the largest label written."""
import threading
from types import SimpleNamespace

import numpy as np

from napari_unet.progress import MaxTracker, batch_predict_events, batch_train_events, drain, until


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def train_events(clock, steps, dt):
    yield SimpleNamespace(kind="start", step=0, fraction=0.0, elapsed=0.0, loss=None, val_loss=None,
                          best_val_loss=None, model=None, stopped=False, message="prepared")
    for s in range(1, steps + 1):
        clock.now += dt
        yield SimpleNamespace(kind="step", step=s, fraction=s / steps, elapsed=clock.now, loss=1.0 / s,
                              val_loss=None, best_val_loss=None, model=None, stopped=False, message="")
        if s == steps // 2:
            yield SimpleNamespace(kind="validation", step=s, fraction=s / steps, elapsed=clock.now, loss=1.0 / s,
                                  val_loss=0.5, best_val_loss=0.5, model=None, stopped=False, message="")
    yield SimpleNamespace(kind="done", step=steps, fraction=1.0, elapsed=clock.now, loss=None, val_loss=None,
                          best_val_loss=0.5, model="the model", stopped=False, message="")


def test_fast_training_steps_reach_the_gui_batched_and_none_is_lost():
    clock = FakeClock()
    updates = list(batch_train_events(train_events(clock, steps=100, dt=0.01), min_interval=0.2, clock=clock))
    steps = [s for u in updates for s, _ in u.losses]
    assert steps == list(range(1, 101))  # every loss is plotted, in order
    assert [u.kind for u in updates][0] == "start" and updates[-1].kind == "done"
    assert updates[-1].model == "the model"
    assert len(updates) <= 2 + 1 + 1.0 / 0.2 + 1  # start, validation, done and one step update per 0.2 s
    validation = [u for u in updates if u.kind == "validation"]
    assert len(validation) == 1 and validation[0].val_loss == 0.5 and validation[0].step == 50
    assert all(u.val_loss is None for u in updates if u.kind != "validation")


def test_slow_training_steps_are_each_reported():
    clock = FakeClock()
    updates = list(batch_train_events(train_events(clock, steps=6, dt=0.5), min_interval=0.2, clock=clock))
    assert [len(u.losses) for u in updates if u.kind == "step"] == [1] * 6


def predict_events(clock, kind, n, dt):
    yield SimpleNamespace(kind="start", fraction=0.0, elapsed=0.0, region=None, message="plan")
    for i in range(n):
        clock.now += dt
        yield SimpleNamespace(kind=kind, fraction=(i + 1) / n, elapsed=clock.now, region=(i, slice(0, 8)),
                              message="")
        if i == 1:
            yield SimpleNamespace(kind="warning", fraction=(i + 1) / n, elapsed=clock.now, region=None,
                                  message="out of memory: smaller batches")
    yield SimpleNamespace(kind="done", fraction=1.0, elapsed=clock.now, region=None, message="done",
                          result="out")


def test_written_regions_are_batched_and_warnings_pass_at_once():
    clock = FakeClock()
    updates = list(batch_predict_events(predict_events(clock, "tiles", 40, 0.05), min_interval=0.4, clock=clock))
    regions = [r for u in updates for r in u.regions]
    assert regions == [(i, slice(0, 8)) for i in range(40)]
    assert updates[0].kind == "start" and updates[-1].kind == "done" and updates[-1].result == "out"
    assert len([u for u in updates if u.kind == "progress"]) <= 2.0 / 0.4 + 1
    assert [u.message for u in updates if u.kind == "warning"] == ["out of memory: smaller batches"]


def test_instance_labels_are_complete_at_item_events_only():
    clock = FakeClock()
    tiles = list(batch_predict_events(predict_events(clock, "tiles", 5, 1.0), instance=True, clock=clock))
    assert not any(u.regions for u in tiles)  # a tile of instance labels is not final yet
    items = list(batch_predict_events(predict_events(clock, "item", 5, 1.0), instance=True, clock=clock))
    assert [r for u in items for r in u.regions] == [(i, slice(0, 8)) for i in range(5)]


def test_max_tracker_forwards_writes_and_knows_the_largest_label():
    out = np.zeros((2, 4, 4), np.int32)
    tracker = MaxTracker(out)
    tracker[0, :2] = np.array([[3, 0, 0, 0], [0, 0, 9, 0]])
    tracker[1] = np.full((4, 4), 4)
    assert tracker.max == 9 and out[0, 1, 2] == 9 and (out[1] == 4).all()
    assert tracker.shape == (2, 4, 4) and tracker.dtype == np.int32
    np.testing.assert_array_equal(tracker[1], out[1])
    clock = FakeClock()
    updates = list(batch_predict_events(predict_events(clock, "tiles", 2, 1.0), tracker=tracker, clock=clock))
    assert updates[-1].max_label == 9


def test_until_stops_between_events_and_runs_the_work_clean_up():
    stop = threading.Event()
    cleaned = []

    def work():
        try:
            for i in range(100):
                yield i
        finally:
            cleaned.append(True)

    seen = []
    for event in until(work(), stop):
        seen.append(event)
        if event == 3:
            stop.set()
    assert seen == [0, 1, 2, 3] and cleaned == [True]
    assert drain(until(work(), threading.Event())) == 99
