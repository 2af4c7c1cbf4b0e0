"""What the subtracted local background (`background=`) costs at prediction: time side by side.

The same network with and without a `LocalBackground` of ``--window`` px (random weights: the cost does
not depend on them), timed alternately (`_common.alternate`): `napari_unet.predict` of a ``--size``^2 image
with the default network (depth 4, 16 channels), and `napari_unet.segment_at` (a click) with the widget's
CPU network (depth 3, 16 channels). The halo grows by the window's reach, so tiles overlap more and a
click reads a bigger window; the filters themselves are a few separable min / max / mean passes.

Usage: python benchmarks/background_cost.py [--window 61] [--size 2048] [--reps 5]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import napari_unet as nu
from napari_unet.model import Model

from _common import alternate, machine, ratio_summary


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--window", type=int, default=61)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    print(f"# {machine()}; window {args.window}, image {args.size}^2, {args.reps} reps", flush=True)
    image = np.random.default_rng(0).random((args.size, args.size)).astype(np.float32)
    for what, depth, call in (("predict", 4, lambda m: nu.predict(m, image)),
                              ("click", 3, lambda m: nu.segment_at(m, image, (args.size // 2, args.size // 2)))):
        models = {name: Model.untrained(depth=depth, base_channels=16, background=bg, seed=0)
                  for name, bg in (("plain", None), ("background", args.window))}
        times = alternate({name: (lambda m=m: call(m)) for name, m in models.items()}, args.reps)
        med = {name: float(np.median(t)) for name, t in times.items()}
        print(f"{what} (depth {depth}, halo {models['plain'].halo} -> {models['background'].halo} px): "
              f"plain {med['plain']:.3f} s, background {med['background']:.3f} s, ratio "
              f"{ratio_summary(times, 'background', 'plain')}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
