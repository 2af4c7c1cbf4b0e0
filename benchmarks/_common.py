"""Helpers shared by the benchmarks: the benchmark networks, machine description, paired timing."""
from __future__ import annotations

import os
import platform
import time

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
    as one, else strings (``augment=elastic,blur``)."""
    options = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        try:
            options[key] = float(text) if "." in text else int(text)
        except ValueError:
            options[key] = text
    return options


def options_tag(options: dict) -> str:
    """A file-name tag of training options (``-edge_weight3-lossce+dice``): models cached per setting."""
    return "".join(f"-{k}{v}" for k, v in sorted(options.items())).replace(",", "+")
