"""Live training without a viewer: new annotations between steps, previews, stop."""
import threading
import time

import numpy as np
import pytest

from napari_unet.train import LabelsUpdate, Latest, PreviewRequest, iter_train_live
from napari_unet.train.live import preview_window
from napari_unet.synthetic import make_sample

IMAGE, STROKES, _ = make_sample((96, 96), seed=1)
TINY = dict(depth=2, base_channels=4, patch_size=32, batch_size=2, device="cpu", seed=0)


def _until(events, kind, limit=200):
    for _ in range(limit):
        ev = next(events)
        if ev.kind == kind:
            return ev
    raise AssertionError(f"no {kind!r} event in {limit} events")


def test_new_annotations_are_trained_on_without_restarting_and_stop_keeps_a_model():
    half = STROKES.copy()
    half[48:] = 0
    updates, previews, stop = Latest(), Latest(), threading.Event()
    events = iter_train_live(IMAGE, half, updates=updates, previews=previews, stop=stop, preview_every=0.0,
                             **TINY)
    start = _until(events, "step")
    updates.put(LabelsUpdate((half.copy(),), version=1, changed_at=time.perf_counter()))
    first = _until(events, "labels")
    updates.put(LabelsUpdate((STROKES.copy(),), version=2, changed_at=time.perf_counter()))
    taken = _until(events, "labels")
    assert taken.data.version == 2 and taken.data.latency >= 0
    assert first.step > start.step and taken.step > first.step  # the same run went on
    assert taken.data.annotated_px > first.data.annotated_px  # on the bottom half's strokes too
    key = preview_window((48, 48), (64, 80), IMAGE.shape, dims=2)
    previews.put(PreviewRequest(0, key))
    preview = _until(events, "preview")
    assert preview.data.labels.shape == (64, 80) and preview.data.request.key == key
    assert preview.data.model.config.trained_steps == preview.step
    stop.set()
    done = _until(events, "done")
    assert done.stopped and done.model is not None and done.model.config.trained_steps == done.step


def test_an_annotation_with_a_new_class_is_refused_and_training_goes_on():
    updates = Latest()
    events = iter_train_live(IMAGE, STROKES, updates=updates, stop=None, **TINY)
    _until(events, "step")
    bad = STROKES.copy()
    bad[:4, :4] = 7
    updates.put(LabelsUpdate((bad,), version=1, changed_at=time.perf_counter()))
    warning = _until(events, "warning")
    assert "label 7" in warning.message and "previous annotations" in warning.message
    assert _until(events, "step").kind == "step"
    events.close()


def test_time_budget_is_refused_in_live_mode():
    with pytest.raises(TypeError, match="time_budget"):
        next(iter_train_live(IMAGE, STROKES, updates=Latest(), time_budget=10, **TINY))


def test_preview_window_is_what_is_visible_clipped_around_its_centre():
    assert preview_window((100, 100), (80, 60), (300, 400), dims=2) == (slice(60, 140), slice(70, 130))
    big = preview_window((150, 200), (5000, 5000), (300, 400), dims=2)  # zoomed out: clipped
    assert big == (slice(0, 300), slice(0, 400))
    assert preview_window((2, 500, 500), (900, 900), (4, 1000, 1000), dims=2) == (2, slice(244, 756), slice(244, 756))
    vol = preview_window((10, 50, 50), (64, 100, 100), (20, 100, 100), dims=3)
    assert vol == (slice(0, 20), slice(0, 100), slice(0, 100))


def test_mailbox_keeps_only_the_latest_value():
    box = Latest()
    assert box.take() is None
    box.put(1)
    box.put(2)
    assert box.take() == 2 and box.take() is None


def test_preview_window_of_a_3d_model_on_a_2d_image_says_what_to_change():
    with pytest.raises(ValueError, match="a 3D model needs images with at least 3 spatial axes.*2D model"):
        preview_window((10, 10), (20, 20), (64, 64), dims=3)
