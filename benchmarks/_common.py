"""Helpers shared by the benchmarks: the benchmark networks, machine description, paired timing."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_unet.model import Model


def random_model(dims=2, depth=4, base=16, classes=2, mode="semantic", seed=0) -> Model:
    """The default network with random weights and non-trivial BatchNorm statistics, in eval mode.

    Random running statistics make BatchNorm a real per-channel affine map (as after training), so
    folding it and tiling around it are exercised. The normalization is the identity: benchmarks pass
    images that are already normalized float32, so every method sees the same input.
    """
    model = Model.untrained(dims=dims, depth=depth, base_channels=base, mode=mode,
                            class_ids=tuple(range(1, classes + 1)), seed=seed)
    for m in model.network.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def normalized(image: np.ndarray) -> np.ndarray:
    """Percentile-normalize an image to float32 (what a trained model's preprocess does)."""
    lo, hi = np.percentile(image, [1, 99.8])
    return ((image.astype(np.float32) - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def machine() -> str:
    """One line describing the machine and the software versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    load = ", load %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    return (f"{cpu}, {cores} cores{gpu}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"numpy {np.__version__}, Python {platform.python_version()}{load}")


def alternate(variants: dict, reps: int, warmup: bool = True) -> dict:
    """Time each variant ``reps`` times, alternating (and rotating the order every repetition).

    Other processes share the machine, so only ratios measured side by side mean much: a slow spell
    hits the variants of one repetition alike, and rotating the order keeps any one variant from
    always running first or last.

    Returns
    -------
    dict
        name -> list of seconds, index-aligned by repetition (for paired ratios).
    """
    names = list(variants)
    if warmup:
        for name in names:
            variants[name]()
    times = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            t = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t)
    return times


def ratio_summary(times: dict, num: str, den: str) -> str:
    """Median (min-max) of the per-repetition ratio num/den."""
    r = np.array(times[num]) / np.array(times[den])
    return f"{np.median(r):.2f}x ({r.min():.2f}-{r.max():.2f})"


def training_options(pairs) -> dict:
    """``--opt KEY=VALUE`` arguments as keyword arguments of `napari_unet.train`: numbers when they read
    as one, booleans for true/false, else strings (``augment=elastic,blur``)."""
    options = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        if text.lower() in ("true", "false"):
            options[key] = text.lower() == "true"
            continue
        try:
            options[key] = float(text) if "." in text else int(text)
        except ValueError:
            options[key] = text
    return options


def options_tag(options: dict) -> str:
    """A file-name tag of training options (``-edge_weight3-lossce+dice``): models cached per setting."""
    return "".join(f"-{k}{v}" for k, v in sorted(options.items())).replace(",", "+")


@contextlib.contextmanager
def scratch_and_clusters(workdir=None, workers=(1, 2)):
    """A scratch folder and a dask LocalCluster client per worker count; all of them removed afterwards.

    Yields
    ------
    (Path, dict)
        The folder and ``{n_workers: client}``.
    """
    from napari_unet import distributed as nd

    work = Path(tempfile.mkdtemp(prefix="napari-unet-bench-", dir=workdir))
    clients = {}
    try:
        for n in workers:
            t = time.perf_counter()
            clients[n] = nd.connect(workers=n)[0]
            print(f"LocalCluster of {n} worker(s) started in {time.perf_counter() - t:.1f} s", flush=True)
        yield work, clients
    finally:
        for client in clients.values():
            cluster = client.cluster
            client.close()
            cluster.close()
        shutil.rmtree(work, ignore_errors=True)


_CLI_CHILD = r"""
import json, resource, sys, time


def high_water_kib():  # this process's own peak RSS (ru_maxrss would carry the parent's over exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
exec(sys.argv[2])
from napari_unet.cli import main
base = high_water_kib()
t = time.perf_counter()
rc = main(sys.argv[3:])
print(json.dumps(dict(rc=rc, seconds=time.perf_counter() - t, base_kib=base, peak_kib=high_water_kib())))
"""


def measure_cli(argv, *, prelude: str = "", data_limit: int = 0) -> dict:
    """Run ``napari-unet ARGV`` in a fresh process and measure its memory.

    Parameters
    ----------
    argv : list
        The command's arguments (paths are turned into strings).
    prelude : str
        Python run in the child before the command (e.g. a module constant to change).
    data_limit : int
        ``RLIMIT_DATA`` in bytes for the child (0: none): it counts every heap and anonymous mapping.

    Returns
    -------
    dict
        rc, seconds, base_kib (peak RSS after the imports), peak_mib, growth_mib (peak over base) and
        error (the last line of stderr when rc is not 0). A child that dies before reporting gets its
        peak from ``wait4``.
    """
    proc = subprocess.Popen([sys.executable, "-c", _CLI_CHILD, str(data_limit), prelude] + [str(a) for a in argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    lines = stdout.strip().splitlines()
    info = json.loads(lines[-1]) if lines else {"rc": os.waitstatus_to_exitcode(status), "seconds": float("nan"),
                                                 "base_kib": 0, "peak_kib": usage.ru_maxrss}
    info["error"] = "" if info["rc"] == 0 else (stderr.strip().splitlines() or ["?"])[-1]
    info["peak_mib"] = info["peak_kib"] / 1024
    info["growth_mib"] = (info["peak_kib"] - info["base_kib"]) / 1024
    return info
