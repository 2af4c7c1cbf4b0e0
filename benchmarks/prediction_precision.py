"""Prediction in fp32 against bf16 mixed precision on the CPU: the same trained models, quality and time.

The models are the quality protocols' (`benchmarks/quality.py`: dense instance masks and strokes on the
hard stand-in, trained in bf16 for the steps of 120 s / 60 s; `benchmarks/quality_3d.py`: the 3D model
with its spacing declared), trained here or loaded from ``--models`` / ``--cache-3d`` when trained before.
Each model segments its held-out image with ``mixed_precision=False`` and ``True``, alternating, ``--reps``
times: object F1 at IoU 0.5 and mean F1 over IoU 0.5-0.9 (instance), foreground IoU (strokes), the
pixels whose foreground changed, and the median time of `napari_unet.segment` end to end (one torch thread).

Usage: python benchmarks/prediction_precision.py [--seeds 0 1 2] [--models DIR] [--cache-3d DIR] [--reps 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import napari_unet as nu
from napari_unet.metrics import matching, mean_f1
from napari_unet.synthetic import make_nuclei

import quality
import quality_3d
from _common import machine

PRECISIONS = {"fp32": False, "bf16": True}


def timed_segments(model, image, reps):
    """Per precision: the labels (of the first run) and the median seconds of ``reps`` alternating runs."""
    labels, seconds = {}, {name: [] for name in PRECISIONS}
    for _ in range(reps):
        for name, mixed in PRECISIONS.items():
            t = time.perf_counter()
            out = nu.segment(model, image, mixed_precision=mixed)
            seconds[name].append(time.perf_counter() - t)
            labels.setdefault(name, out)
    return labels, {name: float(np.median(s)) for name, s in seconds.items()}


def instance_scores(truth, labels):
    return {name: f"{matching(truth, out)['f1']:.3f} / {mean_f1(truth, out):.3f}" for name, out in labels.items()}


def protocols(seed, models, cache_3d):
    """(name, model, held-out image, scores(labels)) of each protocol for ``seed``."""
    image, train_labels, truth = quality.stand_in(seed, "hard")
    name = quality.run_name("instance", "hard", seed, 120, 16, 4, 38, "-edge_weight3-mixed_precisionTrue")
    model = quality.cached_train(models, name, image[:, :256], train_labels[:, :256], mode="instance", epochs=38,
                                 seed=seed, edge_weight=3.0, mixed_precision=True)
    yield "2D instance", model, image[:, 256:], lambda labels: instance_scores(truth[:, 256:], labels)
    strokes = quality.make_strokes(train_labels, fraction=0.06, seed=seed)
    test_img, test_truth = make_nuclei((512, 512), seed=seed + 100, realism="hard")
    name = quality.run_name("sparse", "hard", seed, 60, 16, 4, 44, "-band3-mixed_precisionTrue")
    model = quality.cached_train(models, name, image, strokes, mode="semantic", epochs=44, seed=seed,
                                 border_band=3, mixed_precision=True)
    yield "2D strokes", model, test_img, lambda labels: {
        k: f"{quality.foreground_iou(test_truth, v):.4f}" for k, v in labels.items()}
    parts = quality_3d.stand_in([32, 192, 256], seed, [3, 1, 1], 0.6, 0.5)
    model, _ = quality_3d.trained("3d:aniso-bf16", *parts[0], seed, 370, [3, 1, 1], cache_3d)
    yield "3D instance", model, parts[1][0], lambda labels: instance_scores(parts[1][1], labels)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", default=None, help="folder of quality.py's trained 2D models (reused when there)")
    p.add_argument("--cache-3d", default=None, help="folder of quality_3d.py's trained 3D models (reused when there)")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {machine()}; 1 torch thread; prediction fp32 vs bf16", flush=True)
    ratios: dict = {}
    for seed in args.seeds:
        for name, model, image, scores in protocols(seed, args.models, args.cache_3d):
            labels, seconds = timed_segments(model, image, args.reps)
            changed = float(np.mean((labels["fp32"] > 0) != (labels["bf16"] > 0)))  # ids aside: instance ids renumber
            ratio = seconds["bf16"] / seconds["fp32"]
            ratios.setdefault(name, []).append(ratio)
            objects = {k: int(len(np.unique(v)) - 1) for k, v in labels.items()}
            print(f"{name} seed {seed}: {scores(labels)}; objects/classes {objects}; foreground changed at {changed:.5f} of the pixels; "
                  f"segment {seconds['fp32']:.2f} s fp32, {seconds['bf16']:.2f} s bf16 ({ratio:.2f}x)", flush=True)
    for name, r in ratios.items():
        print(f"{name}: bf16 / fp32 time, median {np.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})")


if __name__ == "__main__":
    main()
