"""3D tiling: cost and deviation from whole-volume inference of the exact, cropped and blended modes.

For a 3D UNet of depth 4 the exact halo is 96 voxels, so exact tiles cost (T / (T - 192))^3: a 3D
network needs a smaller overlap. This measures, for several tile sizes T and halos h (the context kept
on each side; neighbouring tiles overlap by 2h), at equal cost (same tiles, same forward passes):

* crop: each voxel comes from the one tile whose centre is nearest (the overlap is cut in its middle,
  every voxel keeps >= h voxels of context) -- what `napari_unet.predict` does;
* linear: the tiles' probabilities are blended with weights that ramp linearly across the overlap;
* gaussian: blended with gaussian weights (sigma = T/8, as MONAI's "gaussian" mode).

Blending weights form a partition of unity per axis (and so in 3D); at the volume's border tiles are
not faded (tiles are shifted inward there, the border is a true border). Deviations are against one
pass over the whole volume: max and mean |difference| of the class probabilities and the fraction of
voxels whose class differs. Two networks: the default 3D network (depth 4, base 16) trained briefly
on synthetic 3D nuclei (instance mode: background / interior / boundary), and the same network with
random weights and BatchNorm statistics (a harsher case: nothing smooth about it).

Usage: python benchmarks/tiling_3d.py [--shape 96 256 256] [--train-seconds 300] [--nets trained random]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, normalized, random_model  # noqa: E402

import napari_unet as nu  # noqa: E402
from napari_unet.predict import inference_network, plan_prediction  # noqa: E402
from napari_unet.synthetic import make_nuclei  # noqa: E402
from napari_unet.tiling import read_padded, tiling_cost  # noqa: E402

CONFIGS = [(64, 16), (96, 16), (128, 16), (96, 32), (128, 32), (160, 32), (160, 48), (224, 96)]


def axis_weights(starts, tile, size, mode):
    """Per-axis blending weights, one row per tile start, normalized to sum to 1 at every position."""
    length = max(starts) + tile
    w = np.zeros((len(starts), length))
    x = np.arange(length) + 0.5
    for k, s in enumerate(starts):
        inside = (x >= s) & (x < s + tile)
        if mode == "gaussian":
            g = np.exp(-((x - s - tile / 2) ** 2) / (2 * (tile / 8) ** 2))
            if k == 0:
                g[x < s + tile / 2] = 1.0  # no fade towards the volume's border
            if k == len(starts) - 1:
                g[x >= s + tile / 2] = 1.0
        else:
            g = np.ones(length)
        w[k] = np.where(inside, g, 0.0)
    if mode == "linear":
        for k in range(len(starts) - 1):
            lo, hi = starts[k + 1], starts[k] + tile  # the overlap of tiles k and k+1
            if hi > lo:
                ramp = np.clip((x - lo) / (hi - lo), 0, 1)
                zone = (x >= lo) & (x < hi)
                w[k][zone], w[k + 1][zone] = (1 - ramp)[zone], ramp[zone]
    w /= np.maximum(w.sum(0, keepdims=True), 1e-12)
    return w[:, :size]


def combine(tiles, preds, shape, mode):
    k = preds[0].shape[0]
    out = np.zeros((k,) + tuple(shape), np.float32)
    if mode == "crop":
        for t, p in zip(tiles, preds):
            out[(slice(None),) + t.output] = p[(slice(None),) + t.crop]
        return out
    starts = [sorted({t.input[a].start for t in tiles}) for a in range(3)]
    tile = [tiles[0].input[a].stop - tiles[0].input[a].start for a in range(3)]
    weights = [axis_weights(st, ts, s, mode) for st, ts, s in zip(starts, tile, shape)]
    for t, p in zip(tiles, preds):
        region = tuple(slice(t.input[a].start, min(t.input[a].stop, shape[a])) for a in range(3))
        w = [weights[a][starts[a].index(region[a].start)][region[a]] for a in range(3)]
        ww = (w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]).astype(np.float32)
        crop = tuple(slice(0, r.stop - r.start) for r in region)
        out[(slice(None),) + region] += ww * p[(slice(None),) + crop]
    return out


def deviation(prob, ref):
    d = np.abs(prob - ref)
    return d.max(), d.mean(), 1.0 - (prob.argmax(0) == ref.argmax(0)).mean()


def study(model, volume, label):
    net = inference_network(model.network, "cpu", dims=3)
    x_all = model.preprocess(volume[None])
    t = time.perf_counter()
    with torch.inference_mode():
        ref = torch.softmax(net(torch.from_numpy(x_all[None]).contiguous(memory_format=torch.channels_last_3d)),
                            1)[0].numpy()
    print(f"\n[{label}] whole volume {volume.shape}: {time.perf_counter() - t:.1f} s (1 pass)", flush=True)
    print("   T   halo  tiles   cost   mode       max|dp|   mean|dp|   classes differ", flush=True)
    rows = []
    for tile, halo in CONFIGS:
        if 2 * halo + 16 > tile:
            continue
        plan = plan_prediction(model, volume, tile=tile, halo=halo, device="cpu")
        tiles = plan.tiles
        cost = tiling_cost(tiles, volume.shape)
        preds = []
        with torch.inference_mode():
            for tl in tiles:
                xb = read_padded(x_all, tl.input, volume.shape)[None]
                xb = torch.from_numpy(np.ascontiguousarray(xb)).contiguous(memory_format=torch.channels_last_3d)
                preds.append(torch.softmax(net(xb), 1)[0].numpy())
        for mode in ("crop", "linear", "gaussian"):
            mx, mean, differ = deviation(combine(tiles, preds, volume.shape, mode), ref)
            rows.append((label, tile, halo, len(tiles), cost, mode, mx, mean, differ))
            print(f"  {tile:3d}  {halo:4d}  {len(tiles):5d}  {cost:5.2f}  {mode:9s} {mx:9.2e}  {mean:9.2e}  "
                  f"{100 * differ:8.4f}%", flush=True)
        if tile == 128 and halo == 16:  # the library's own output matches the crop combination above
            lib = nu.predict(model, volume, tile=tile, halo=halo, device="cpu")
            assert np.abs(lib - combine(tiles, preds, volume.shape, "crop")).max() < 1e-3
        del preds
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[96, 256, 256])
    p.add_argument("--train-seconds", type=float, default=300)
    p.add_argument("--nets", nargs="+", default=["trained", "random"], choices=["trained", "random"])
    args = p.parse_args(argv)
    print(machine(), flush=True)
    raw, _ = make_nuclei(tuple(args.shape), seed=5)
    if "trained" in args.nets:
        train_img, train_lab = make_nuclei((64, 128, 128), seed=0)
        t = time.perf_counter()
        model = nu.train(train_img, train_lab, mode="instance", dims=3, time_budget=args.train_seconds, seed=0)
        print(f"trained 3D model: {model.config.trained_steps} steps in {time.perf_counter() - t:.0f} s, "
              f"best validation loss {model.config.best_val_loss}", flush=True)
        study(model, raw, "trained")
    if "random" in args.nets:
        model = random_model(dims=3, classes=3, mode="instance")
        study(model, normalized(raw), "random")


if __name__ == "__main__":
    main()
