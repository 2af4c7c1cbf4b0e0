"""Ctrl-C (SIGINT) during the command-line tools: nothing is lost, nothing looks finished that is not."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

import napari_unet as nu
from napari_unet.io import LABELS_ATTRS, read_image
from napari_unet.outputs import write_image

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _popen(command, cwd):
    """A child Python that sees signals as a terminal's would and imports the code under test."""
    # the children run in tmp_path: a relative PYTHONPATH (PYTHONPATH=src) would make them import whatever
    # napari_unet is installed instead of this checkout's
    path = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", "PYTHONPATH": os.pathsep.join(path)}
    # Ctrl-C as a terminal delivers it: a test run started in the background (or by a CI runner) has
    # SIGINT ignored, which the child would inherit and then never see the KeyboardInterrupt
    return subprocess.Popen([sys.executable, *map(str, command)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _start(args, cwd):
    return _popen(["-m", "napari_unet", *args], cwd)


def _finish(proc, timeout=120):
    """Wait for the process to exit; if it hangs, fail with the stacks of all its threads."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack to stderr
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"the command did not exit {timeout} s after Ctrl-C; its threads:\n{err[-8000:]}")


def _wait_for(proc, text, timeout=120):
    """Read stderr lines until one contains ``text``; return what was read."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError(f"never saw {text!r}; got:\n{''.join(seen)}")


def _start_training(tmp_path, blobs, depth, base_channels):
    """``napari-unet train`` on the blobs for ten minutes (to be interrupted), writing model.pt."""
    image, strokes, _ = blobs
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "strokes.tif", strokes)
    return _start(["train", "-i", "img.tif", "-l", "strokes.tif", "-o", "model.pt", "--time-budget", "600",
                   "--depth", str(depth), "--base-channels", str(base_channels)], tmp_path)


def test_ctrl_c_during_training_saves_the_best_model_so_far(tmp_path, blobs):
    image = blobs[0]
    proc = _start_training(tmp_path, blobs, depth=2, base_channels=8)
    _wait_for(proc, "step ")
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = _finish(proc)
    assert time.monotonic() - sent < 10
    assert proc.returncode == 0, err
    assert "stopped" in err
    model = nu.load_model(tmp_path / "model.pt")
    assert nu.segment(model, image).shape == image.shape


def test_a_second_ctrl_c_aborts_without_saving(tmp_path, blobs):
    # a network big enough that a step is still running when the second Ctrl-C comes
    proc = _start_training(tmp_path, blobs, depth=3, base_channels=32)
    _wait_for(proc, "training on")
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _wait_for(proc, "stopping")
    proc.send_signal(signal.SIGINT)
    _, err = _finish(proc)
    assert proc.returncode == 130, err
    assert not (tmp_path / "model.pt").exists() and not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("ext", [".tif", ".zarr"])
def test_ctrl_c_during_prediction_leaves_no_finished_looking_output(tmp_path, ext):
    from .test_predict import random_model

    nu.save_model(random_model(depth=2, base=8), tmp_path / "model.pt")
    np.save(tmp_path / "stack.npy", np.random.default_rng(0).random((400, 256, 256)).astype(np.float32))
    out = tmp_path / f"labels{ext}"
    write_image(out, np.full((4, 4), 7, np.uint8), attrs=LABELS_ATTRS)  # last week's result, to be kept
    proc = _start(["predict", "model.pt", "stack.npy", "-o", out.name, "--tile", "64"], tmp_path)
    _wait_for(proc, "%")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = _finish(proc)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert (np.asarray(read_image(out)) == 7).all()  # the previous result is still there, untouched
    leftovers = [p.name for p in tmp_path.iterdir() if "partial" in p.name]
    assert leftovers == []


_SLOW_FORWARD = """
import sys, time
from napari_unet.predict import runner
from napari_unet.cli import main

def slow(self, *args, **kwargs):  # a forward pass that takes a minute (a huge tile on a CPU)
    print("forward pass started", file=sys.stderr, flush=True)
    time.sleep(60)
    raise AssertionError("the forward pass was waited for")

runner.DeviceRunner.to_host = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig,code,times", [(signal.SIGINT, 130, 1), (signal.SIGINT, 130, 2),
                                            (signal.SIGTERM, 143, 1)])
def test_interrupting_a_long_forward_pass_stops_within_seconds(tmp_path, sig, code, times):
    from .test_predict import random_model

    nu.save_model(random_model(depth=2, base=4), tmp_path / "model.pt")
    np.save(tmp_path / "img.npy", np.random.default_rng(0).random((64, 64)).astype(np.float32))
    proc = _popen(["-c", _SLOW_FORWARD, "predict", "model.pt", "img.npy", "-o", "labels.zarr", "--probabilities",
                   "prob.tif"], tmp_path)
    _wait_for(proc, "forward pass started")
    sent = time.monotonic()
    for _ in range(times):  # a second Ctrl-C while the first is being handled changes nothing
        proc.send_signal(sig)
        time.sleep(0.2)
    _, err = _finish(proc, timeout=40)
    assert time.monotonic() - sent < 10, err
    # (a second Ctrl-C that comes once the command has cleaned up ends the interpreter by SIGINT itself)
    assert proc.returncode in ((code,) if times == 1 else (code, -sig)), err
    assert "interrupted; no output was written" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.npy", "model.pt"]  # nothing else, no temporaries


def test_ctrl_c_in_the_middle_of_an_optimizer_step_waits_for_the_step(blobs, monkeypatch):
    """The API's model is never one caught half-way through updating its weights."""
    import torch

    image, strokes, _ = blobs
    calls = {"n": 0, "completed_after_signal": False}
    Adam = torch.optim.AdamW  # the optimizer training uses
    real_step = Adam.step

    def step_interrupted_half_way(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives as the update starts
            time.sleep(0.05)  # without holding it back, KeyboardInterrupt would be raised here
            result = real_step(self, *args, **kwargs)
            calls["completed_after_signal"] = True
            return result
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Adam, "step", step_interrupted_half_way)
    events = list(nu.iter_train([image], [strokes], depth=2, base_channels=4, epochs=50, seed=0))
    done = events[-1]
    assert calls["completed_after_signal"] and done.stopped and done.step == 3
    assert all(torch.isfinite(p).all() for p in done.model.network.parameters())


_SLOW_PREPARATION = """
import sys, time
from napari_unet.train import loop
from napari_unet.cli import main

real = loop.resolve_settings

def slow(*args, **kwargs):  # reading and checking big labels takes a while
    print("preparing the data", file=sys.stderr, flush=True)
    time.sleep(60)
    return real(*args, **kwargs)

loop.resolve_settings = slow
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_while_the_data_is_prepared_stops_at_once_and_saves_nothing(tmp_path, blobs):
    image, strokes, _ = blobs
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "strokes.tif", strokes)
    proc = _popen(["-c", _SLOW_PREPARATION, "train", "-i", "img.tif", "-l", "strokes.tif", "-o", "model.pt"],
                  tmp_path)
    _wait_for(proc, "preparing the data")
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = _finish(proc, timeout=40)
    assert time.monotonic() - sent < 10 and proc.returncode == 130, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif", "strokes.tif"]
