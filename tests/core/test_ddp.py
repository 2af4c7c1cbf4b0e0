"""Data-parallel training: ``torchrun --nproc_per_node 2 -m napari_unet train`` on the CPU (gloo)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.synthetic import make_nuclei

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="torch without gloo"),
]


def _torchrun(tmp_path, *train_args):
    """Two ranks on this machine, as a user starts them (its own session, so Ctrl-C reaches all)."""
    image, truth = make_nuclei((96, 128), seed=0)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", truth)
    # the ranks import this napari_unet (a relative PYTHONPATH would not hold in tmp_path)
    path = os.pathsep.join([str(Path(nu.__file__).parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "napari_unet", "train", "-i", "img.npy", "-l", "lab.npy", "-o", "model.pt", "--mode",
           "instance", "--depth", "2", "--base-channels", "4", "--seed", "0", *train_args]
    # SIGINT's default handler: a test run in the background has it ignored, and children inherit that
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _works(path, image):
    model = nu.load_model(path)
    assert model.mode == "instance" and model.config.trained_steps > 0
    labels = nu.segment(model, image)
    assert labels.shape == image.shape and labels.dtype == np.int32


def test_two_ranks_train_one_model_written_once_by_rank_0(tmp_path):
    proc = _torchrun(tmp_path, "--time-budget", "15")  # each rank's clock differs: they must agree to stop
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, err[-3000:]
    assert err.count("model saved to") == 1 and err.count("training on") == 1, err  # rank 0 alone logs
    assert "2 processes (data-parallel)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.npy", "lab.npy", "model.pt"]  # no leftovers
    _works(tmp_path / "model.pt", np.load(tmp_path / "img.npy"))


def test_ctrl_c_stops_both_ranks_and_rank_0_saves(tmp_path):
    proc = _torchrun(tmp_path, "--time-budget", "600")
    seen, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if line.startswith("step") or not line:
            break
    assert any(s.startswith("step") for s in seen), "".join(seen)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: every rank and torchrun get it
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the ranks did not stop together after Ctrl-C")
    err = "".join(seen) + err
    assert "stopped after" in err and err.count("model saved to") == 1, err[-3000:]
    _works(tmp_path / "model.pt", np.load(tmp_path / "img.npy"))
