"""Data-parallel training (torchrun, 2 CPU ranks, gloo) against one process, for the same patches seen.

The instance protocol of benchmarks/quality.py: dense masks of the left half of a synthetic 512 x 512
image train, F1@0.5 is scored on the right half. Both runs use the command line and ``--epochs``: one
process takes 10 steps of 8 patches per epoch; two ranks take 5 steps of 8 patches each per epoch
(gradients averaged: 16 patches a step), so both see the same number of patches. Wall times are shown
too; on a shared 2-core machine they say little.

Usage: python benchmarks/ddp_quality.py [--seeds 0 1 2] [--epochs 20] [--nproc 2]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import napari_unet as nu
from napari_unet.metrics import matching
from napari_unet.synthetic import make_nuclei

from _common import machine


def _train(folder: Path, nproc: int, epochs: int, seed: int, base: int, depth: int) -> tuple:
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
                                   if nproc > 1 else [])
    out = folder / f"model{nproc}.pt"
    cmd = launcher + ["-m", "napari_unet", "train", "-i", "img.npy", "-l", "lab.npy", "-o", out.name, "--mode",
                      "instance", "--epochs", str(epochs), "--seed", str(seed), "--base-channels", str(base),
                      "--depth", str(depth), "--device", "cpu"]
    path = os.pathsep.join([str(Path(nu.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    # one process gets every core; torchrun gives each rank cores // nproc threads
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // nproc))}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return nu.load_model(out), time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    args = p.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} {machine()}")
    rows = []
    for seed in args.seeds:
        image, truth = make_nuclei((512, 512), seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            np.save(folder / "img.npy", image[:, :256])
            np.save(folder / "lab.npy", truth[:, :256])
            row = {}
            for n in (1, args.nproc):
                model, seconds = _train(folder, n, args.epochs, seed, args.base_channels, args.depth)
                f1 = matching(truth[:, 256:], nu.segment(model, image[:, 256:]))["f1"]
                row[n] = (f1, model.config.trained_steps, seconds)
        rows.append(row)
        print(f"seed {seed}: " + "   ".join(
            f"{n} process(es): F1@0.5 {f:.3f} ({steps} steps of {8 * n} patches, {s:.0f} s)"
            for n, (f, steps, s) in row.items()), flush=True)
    for n in (1, args.nproc):
        print(f"mean F1@0.5 with {n} process(es): {np.mean([r[n][0] for r in rows]):.3f}; "
              f"median wall {np.median([r[n][2] for r in rows]):.0f} s")


if __name__ == "__main__":
    main()
