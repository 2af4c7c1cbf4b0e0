"""What the optional augmentations cost a CPU training step (the steps/s ratio to charge them with).

The extra augmentations run on the CPU per patch, in the training thread. This times drawing a batch
(8 patches of 128 px from the instance protocol's image, `PatchSampler.sample`) with and without each
extra, interleaved (medians of ``--repeats``), and one full training step of the default network, then
reports the steps/s ratio ``step / (step + extra sampling time)``.

Usage: python benchmarks/augment_cost.py [--repeats 15]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_unet.data import PatchSampler
from napari_unet.synthetic import make_nuclei
from napari_unet.train import resolve_settings
from napari_unet.train.trainer import Trainer

VARIANTS = [(), ("elastic",), ("blur",), ("contrast",), ("elastic", "blur", "contrast")]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    image, truth = make_nuclei((512, 512), seed=0)
    settings, annotated = resolve_settings(image[:, :256], truth[:, :256], mode="instance", epochs=1, seed=0,
                                           device="cpu")
    trainer = Trainer(settings, annotated)
    times = {v: [] for v in VARIANTS}
    samplers = {v: PatchSampler(trainer.items, settings.patch_size, np.random.default_rng(0), extra=v)
                for v in VARIANTS}
    steps = []
    for _ in range(args.repeats):
        for v in VARIANTS:
            t = time.perf_counter()
            samplers[v].sample(settings.batch_size)
            times[v].append(time.perf_counter() - t)
        t = time.perf_counter()
        trainer.step(0.5)
        steps.append(time.perf_counter() - t)
    step = float(np.median(steps))
    base = float(np.median(times[()]))
    print(f"# {time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} torch threads, default network, "
          f"batch {settings.batch_size} x {settings.patch_size}, {args.repeats} repeats (medians)")
    print(f"training step (sampling included): {1e3 * step:.0f} ms; batch sampling without extras {1e3 * base:.1f} ms")
    for v in VARIANTS[1:]:
        extra = float(np.median(times[v])) - base
        print(f"+{'+'.join(v)}: sampling +{1e3 * extra:.1f} ms per batch -> steps/s ratio {step / (step + extra):.3f}")


if __name__ == "__main__":
    main()
