"""A 2D instance model on a z-stack: F1@0.5 in 3D with and without stitching, and the threshold.

Protocol: a synthetic 3D volume (``make_nuclei``); a 2D instance model trains on the planes of its left
half (``--budget`` s of CPU), the right half is segmented plane by plane, and the objects are scored in 3D
against the true 3D nuclei: without stitching (each plane's objects have their own ids), and linked across
planes at several thresholds. ``--z-step 3`` keeps every third plane (a stack whose z spacing is 3x its
xy spacing, as in most confocal stacks). Two rules to accept a link are compared on the same per-plane
labels: the shipped one (the fraction of the smaller object inside the other at least the threshold;
candidates ranked by IoU) and cellpose's (IoU at least the threshold).

Usage: python benchmarks/stitch_quality.py [--seeds 0 1] [--budget 60 | --epochs 20] [--z-step 1 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import napari_unet as nu
import napari_unet.stitch as stitch
from napari_unet.metrics import matching
from napari_unet.synthetic import make_nuclei

from _common import machine

THRESHOLDS = (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _iou(inter, area_current, area_previous):
    return inter / (area_current + area_previous - inter)


def scores(truth, per_plane):
    """F1@0.5 (3D) of the linked labels for each threshold, with both rules."""
    out = {}
    for name, rule in (("smaller", stitch._overlap), ("iou", _iou)):
        original, stitch._overlap = stitch._overlap, rule
        try:
            out[name] = {t: matching(truth, stitch.stitch_planes(per_plane, t))["f1"] for t in THRESHOLDS}
        finally:
            stitch._overlap = original
    return out


def run(seed, budget, z_steps, shape, epochs=None):
    image, truth = make_nuclei(shape, seed=seed)
    half = shape[2] // 2
    model = nu.train(image[:, :, :half], truth[:, :, :half], mode="instance", dims=2,
                     time_budget=None if epochs else budget, epochs=epochs, seed=seed)
    rows = []
    for step in z_steps:
        img, lab = image[::step, :, half:], truth[::step, :, half:]
        per_plane = nu.segment(model, img)  # ids unique over the stack, one per object per plane
        linked = nu.segment(model, img, stitch_planes=True)
        assert np.array_equal(linked, stitch.stitch_planes(per_plane)), "segment(stitch_planes=) != stitch_planes"
        rows.append(dict(seed=seed, z_step=step, truth_only=scores(lab, stitch.per_plane_labels(lab)),
                         objects=int(len(np.unique(lab)) - 1),
                         unstitched=matching(lab, per_plane)["f1"], planes_ids=int(per_plane.max()),
                         default=matching(lab, linked)["f1"], steps=model.config.trained_steps,
                         **scores(lab, per_plane)))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--budget", type=float, default=60)
    p.add_argument("--epochs", type=int, default=None,
                   help="train a fixed number of epochs (10 steps each here) instead of a time budget: "
                        "for a busy machine")
    p.add_argument("--z-step", type=int, nargs="+", default=[1, 3])
    p.add_argument("--shape", type=int, nargs=3, default=[48, 192, 256])
    args = p.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} {machine()}")
    rows = []
    for s in args.seeds:
        for r in run(s, args.budget, args.z_step, tuple(args.shape), args.epochs):
            rows.append(r)
            print(f"seed {r['seed']} z-step {r['z_step']}: {r['objects']} nuclei, {r['planes_ids']} per-plane ids, "
                  f"{r['steps']} steps; F1@0.5 3D unstitched {r['unstitched']:.3f}, stitched (default "
                  f"{stitch.DEFAULT_STITCH_THRESHOLD}) {r['default']:.3f}", flush=True)
            for name in ("smaller", "iou"):
                print(f"    {name:8s}" + "  ".join(f"{t}: {f:.3f}" for t, f in r[name].items()), flush=True)
            for name in ("smaller", "iou"):  # the true objects, numbered per plane: the linking alone
                print(f"    true {name:8s}" + "  ".join(f"{t}: {f:.3f}" for t, f in r["truth_only"][name].items()))
    for step in args.z_step:
        sel = [r for r in rows if r["z_step"] == step]
        print(f"mean z-step {step}: unstitched {np.mean([r['unstitched'] for r in sel]):.3f}  stitched "
              f"{np.mean([r['default'] for r in sel]):.3f}")
        for name in ("smaller", "iou"):
            print(f"    {name:8s}" + "  ".join(f"{t}: {np.mean([r[name][t] for r in sel]):.3f}" for t in THRESHOLDS))


if __name__ == "__main__":
    main()
