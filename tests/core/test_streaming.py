"""Out-of-core prediction: bounded memory, piecewise reads and writes, clean shutdown of the pipeline."""
import threading
import time
import tracemalloc

import numpy as np
import pytest

import napari_unet as nu
from napari_unet.predict import PREFETCH, plan_prediction

from .test_predict import random_model

zarr = pytest.importorskip("zarr")


def _pipeline_threads():
    return [t for t in threading.enumerate() if t.name.startswith("napari-unet-predict") and t.is_alive()]


def _zarr_stack(path, planes, size=256, seed=0):
    rng = np.random.default_rng(seed)
    z = zarr.open_array(str(path), mode="w", shape=(planes, size, size), chunks=(1, size, size), dtype="u2")
    for i in range(planes):
        z[i] = (rng.random((size, size)) * 4000).astype(np.uint16)
    return z


class ReadRecorder:
    """An array-like that records the size of every region read from it."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.largest = 0

    def __getitem__(self, key):
        block = np.asarray(self.array[key])
        self.largest = max(self.largest, block.size)
        return block


class WriteRecorder:
    """An ``out=`` target that counts writes (and can fail on the n-th one)."""

    def __init__(self, target, fail_at=None):
        self.target, self.shape, self.dtype = target, target.shape, target.dtype
        self.writes, self.fail_at = 0, fail_at

    def __setitem__(self, key, value):
        self.writes += 1
        if self.fail_at is not None and self.writes >= self.fail_at:
            raise OSError("disk full")
        self.target[key] = value

    def __getitem__(self, key):
        return self.target[key]


def _peak_traced(model, tmp_path, planes, output):
    src = _zarr_stack(tmp_path / f"in{planes}.zarr", planes)
    plan = plan_prediction(model, src, labels=output == "labels", probabilities=output == "probabilities")
    shape = plan.shape if output == "labels" else plan.probabilities_shape
    dtype = plan.labels_dtype if output == "labels" else np.float32
    chunks = (1,) * (len(shape) - 2) + shape[-2:]
    out = zarr.open_array(str(tmp_path / f"out{planes}-{output}.zarr"), mode="w", shape=shape,
                          chunks=chunks, dtype=dtype)
    run = nu.predict if output == "probabilities" else nu.segment
    run(model, src, out=out)  # warm-up: first-call allocations are not the stack's
    tracemalloc.start()
    try:
        run(model, src, out=out)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("output", ["labels", "probabilities"])
def test_peak_memory_does_not_grow_with_the_stack(tmp_path, output):
    model = random_model(depth=2, base=4)
    small = _peak_traced(model, tmp_path, 8, output)
    big = _peak_traced(model, tmp_path, 32, output)
    whole_input = 32 * 256 * 256 * 2
    # a materialized 32-plane input (4 MB) or output (4 or 16 MB) would show in both checks
    # batches in flight at the peak vary with thread timing; a materialized stack (8 vs 32 planes) would
    # still break both bounds by megabytes
    assert big < 1.5 * small + 1024 * 1024, (small, big)
    assert big < whole_input, (small, big)


def test_a_plane_of_a_stack_is_segmented_as_that_plane_alone(tmp_path):
    model = random_model(depth=2, base=8)
    src = _zarr_stack(tmp_path / "in.zarr", 6, size=200, seed=3)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="w", shape=(2, 6, 200, 200), chunks=(1, 1, 200, 200),
                          dtype="f4")
    nu.predict(model, src, out=out, tile=128)
    for z in (0, 3, 5):
        alone = nu.predict(model, np.asarray(src[z]), tile=128)
        np.testing.assert_allclose(out[:, z], alone, atol=1e-5)
        np.testing.assert_array_equal(nu.segment(model, src)[z], nu.segment(model, np.asarray(src[z])))


def test_only_tiles_are_read_and_each_event_region_is_already_written(tmp_path):
    model = random_model(depth=2, base=4)
    src = ReadRecorder(_zarr_stack(tmp_path / "in.zarr", 5, size=256))
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="w", shape=(2, 5, 256, 256), chunks=(1, 1, 128, 128),
                          dtype="f4", fill_value=-1.0)
    events = list(nu.iter_predict(model, src, labels=False, probabilities=True, probabilities_out=out, tile=128))
    assert 0 < src.largest <= 128 * 128  # tile by tile: never a plane, never the stack
    tiles = [e for e in events if e.kind == "tiles"]
    assert tiles[-1].done == tiles[-1].total == 5 * len(plan_prediction(model, src, tile=128).tiles)
    out2 = zarr.open_array(str(tmp_path / "check.zarr"), mode="w", shape=out.shape, dtype="f4", fill_value=-1.0)
    for e in nu.iter_predict(model, src, labels=False, probabilities=True, probabilities_out=out2,
                             tile=128):
        if e.kind == "tiles":  # the region reported is in the output when the event arrives
            block = out2[(slice(None),) + e.region]
            np.testing.assert_allclose(block.sum(0), 1.0, atol=1e-5)


def test_closing_the_generator_midway_stops_every_thread(tmp_path):
    model = random_model(depth=2, base=4)
    src = _zarr_stack(tmp_path / "in.zarr", 40, size=128)
    out = WriteRecorder(zarr.open_array(str(tmp_path / "out.zarr"), mode="w", shape=src.shape,
                                        chunks=(1, 128, 128), dtype="u1"))
    events = nu.iter_predict(model, src, labels_out=out, workers=2)
    for e in events:
        if e.kind == "tiles" and e.done >= 3:
            break
    assert _pipeline_threads()  # the pipeline runs in threads...
    time.sleep(0.3)
    # ...that stop when the consumer stops pulling events (bounded read-ahead)
    assert out.writes <= 3 + 2 + PREFETCH + 1
    events.close()
    assert _pipeline_threads() == []
    assert out.writes < 40


def test_an_error_in_a_stage_reaches_the_consumer_and_stops_the_threads(tmp_path):
    model = random_model(depth=2, base=4)
    src = _zarr_stack(tmp_path / "in.zarr", 12, size=128)
    out = WriteRecorder(np.zeros(src.shape, np.uint8), fail_at=4)
    with pytest.raises(OSError, match="disk full"):
        nu.segment(model, src, out=out)
    assert _pipeline_threads() == []


def test_a_consumer_exception_also_stops_the_threads():
    model = random_model(depth=2, base=4)
    stack = np.random.default_rng(0).random((20, 96, 96)).astype(np.float32)
    with pytest.raises(KeyError):
        events = nu.iter_predict(model, stack, labels=False, probabilities=True)
        with __import__("contextlib").closing(events):
            for e in events:
                if e.kind == "tiles":
                    raise KeyError("consumer failed")
    assert _pipeline_threads() == []


def test_instance_stack_ids_are_unique_and_in_plane_order(tmp_path):
    model = random_model(depth=2, base=4, mode="instance")
    stack = np.random.default_rng(1).random((4, 96, 96)).astype(np.float32)
    labels = nu.segment(model, stack, workers=2)
    for z in range(4):
        alone = nu.segment(model, stack[z])
        # same objects as the plane alone, ids offset by the planes before it
        np.testing.assert_array_equal(labels[z] > 0, alone > 0)
    maxima = [labels[z].max() for z in range(4) if labels[z].max() > 0]
    assert maxima == sorted(maxima)


def _rss_file_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    raise OSError("no RssFile")


def test_memory_mapped_pages_are_dropped_once_a_plane_is_done(tmp_path):
    pytest.importorskip("mmap").MADV_DONTNEED
    try:
        _rss_file_kib()
    except OSError:
        pytest.skip("needs /proc/self/status (Linux)")
    model = random_model(depth=2, base=4)
    np.save(tmp_path / "stack.npy", np.random.default_rng(0).random((64, 256, 256)).astype(np.float32))  # 16 MiB
    out = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.uint8, shape=(64, 256, 256))
    nu.segment(model, np.zeros((256, 256), np.float32))  # warm-up: code pages of the libraries
    stack = np.load(tmp_path / "stack.npy", mmap_mode="r")
    before = _rss_file_kib()
    nu.segment(model, stack, out=out)
    grown = _rss_file_kib() - before
    assert grown < 6 * 1024, f"{grown} KiB of the 16 MiB input + 4 MiB output stayed mapped"
    out.flush()
    expected = nu.segment(model, np.asarray(stack[40]))
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy", mmap_mode="r")[40], expected)


def test_dropping_pages_never_loses_data(tmp_path):
    from napari_unet.outputs import release_pages as _release_pages

    a = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32, shape=(4, 64, 1024))
    a[2] = 7.0
    _release_pages(a[2])  # shared mapping: the written pages stay in the file
    assert (a[2] == 7.0).all()
    del a
    assert (np.load(tmp_path / "a.npy")[2] == 7.0).all()
    c = np.load(tmp_path / "a.npy", mmap_mode="c")
    c[1] = 3.0
    _release_pages(c[1])  # copy-on-write: dropping would discard the change, so it is left alone
    assert (c[1] == 3.0).all()
