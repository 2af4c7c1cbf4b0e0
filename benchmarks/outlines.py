"""Outline post-processing variants and test-time augmentation, on models trained once (issue 14).

The instance models of benchmarks/quality.py (dense masks of the left half, ``--epochs`` steps/10) are
trained once per stand-in and seed and kept in ``--models`` (the same names quality.py uses, so either
script reuses the other's models). The probabilities of the right half are computed once; each
post-processing variant turns them into labels, scored with F1 at IoU 0.5 and mean F1 over IoU 0.5-0.9
against the true labels. ``--tta`` also predicts with test-time augmentation (timed side by side with
the plain prediction, alternating, median ratio) and scores both, for the instance and sparse models.

Usage: python benchmarks/outlines.py --models /tmp/standin-models --seeds 0 1 --epochs 20 [--tta]
       [--sparse-epochs 9] [--stand-ins standard hard]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch
from scipy import ndimage as ndi

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import napari_unet as nu  # noqa: E402
from napari_unet.metrics import foreground_iou, matching, mean_f1  # noqa: E402
from napari_unet.postprocess import instance_labels, split_objects  # noqa: E402
from napari_unet.synthetic import make_nuclei, make_strokes  # noqa: E402
from quality import cached_train, run_name, stand_in  # noqa: E402

BASE, DEPTH = 16, 4


# --------------------------------------------------------------------------- variants
def _expand_cores(prob, grow: int, limit: float | None, h=1.0):
    """Interior cores split as `instance_labels` does, then grown by ``grow`` px (only where the
    background probability is below ``limit``, if given)."""
    from skimage.segmentation import expand_labels, relabel_sequential

    fg = prob[0] < 0.5
    interior = (prob[1] > prob[2]) & (prob[1] > prob[0]) & fg
    labels = expand_labels(split_objects(interior, h=h), grow)
    if limit is not None:
        labels[prob[0] >= limit] = 0
    sizes = np.bincount(labels.ravel())
    small = sizes < 12
    small[0] = False
    labels[small[labels]] = 0
    return relabel_sequential(labels)[0]


def _rims_by_watershed(prob, threshold=0.5):
    """Rims given to the cores by a watershed on the boundary probability (not the nearest core)."""
    from skimage.segmentation import relabel_sequential, watershed

    fg = prob[0] < threshold
    interior = (prob[1] > prob[2]) & (prob[1] > prob[0]) & fg
    cores = split_objects(interior, h=1.0)
    labels = watershed(prob[2] - prob[1], markers=cores, mask=fg)
    parts, _ = ndi.label(fg & (labels == 0))
    labels = np.where(labels == 0, parts + labels.max() * (parts > 0), labels)
    sizes = np.bincount(labels.ravel())
    small = sizes < 12
    small[0] = False
    labels[small[labels]] = 0
    return relabel_sequential(labels)[0]


def _smoothed(prob, sigma):
    p = ndi.gaussian_filter(prob, (0,) + (sigma,) * (prob.ndim - 1))
    return instance_labels(p / p.sum(0, keepdims=True))


def _fill_holes(prob):
    labels = instance_labels(prob)
    out = labels.copy()
    for lab, box in enumerate(ndi.find_objects(labels), start=1):
        if box is not None:
            filled = ndi.binary_fill_holes(labels[box] == lab)
            out[box][filled & (labels[box] == 0)] = lab
    return out


VARIANTS = {
    "baseline (threshold 0.5, h 1)": lambda p: instance_labels(p),
    "threshold 0.4": lambda p: instance_labels(p, threshold=0.4),
    "threshold 0.6": lambda p: instance_labels(p, threshold=0.6),
    "threshold 0.7": lambda p: instance_labels(p, threshold=0.7),
    "h 0.5": lambda p: instance_labels(p, h=0.5),
    "h 2": lambda p: instance_labels(p, h=2.0),
    "rims by watershed on p(boundary)": _rims_by_watershed,
    "cores + 1 px (no threshold)": lambda p: _expand_cores(p, 1, None),
    "cores + 2 px within p(bg) < 0.5": lambda p: _expand_cores(p, 2, 0.5),
    "probabilities smoothed (sigma 1)": lambda p: _smoothed(p, 1.0),
    "holes filled": _fill_holes,
}


def score(truth, labels):
    return matching(truth, labels)["f1"], mean_f1(truth, labels)


# --------------------------------------------------------------------------- runs
def instance_model(kind, seed, epochs, models):
    image, train_labels, truth = stand_in(seed, kind)
    name = run_name("instance", kind, seed, None, BASE, DEPTH, epochs)
    model = cached_train(models, name, image[:, :256], train_labels[:, :256], mode="instance", epochs=epochs,
                         base_channels=BASE, depth=DEPTH, seed=seed)
    return model, image[:, 256:], truth[:, 256:]


def sparse_model(kind, seed, epochs, models):
    image, train_labels, _ = stand_in(seed, kind)
    strokes = make_strokes(train_labels, fraction=0.06, seed=seed)
    name = run_name("sparse", kind, seed, None, BASE, DEPTH, epochs, "-band3")
    model = cached_train(models, name, image, strokes, mode="semantic", epochs=epochs, base_channels=BASE,
                         depth=DEPTH, seed=seed, border_band=3)
    test_img, test_truth = make_nuclei((512, 512), seed=seed + 100, realism=kind)
    return model, test_img, test_truth


def timed_pair(model, image, reps):
    """Plain and TTA probabilities, timed alternately; median TTA/plain time ratio."""
    ratios, plain, tta = [], None, None
    for r in range(reps):
        order = (False, True) if r % 2 == 0 else (True, False)
        t = {}
        for on in order:
            t0 = time.perf_counter()
            p = nu.predict(model, image, tta=on)
            t[on] = time.perf_counter() - t0
            if on:
                tta = p
            else:
                plain = p
        ratios.append(t[True] / t[False])
    return plain, tta, float(np.median(ratios)), (min(ratios), max(ratios)), t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--stand-ins", nargs="+", choices=["standard", "hard"], default=["standard", "hard"])
    p.add_argument("--epochs", type=int, default=20, help="instance models: epochs of 10 steps")
    p.add_argument("--sparse-epochs", type=int, default=9)
    p.add_argument("--tta", action="store_true", help="also measure test-time augmentation")
    p.add_argument("--no-variants", action="store_true")
    p.add_argument("--reps", type=int, default=3, help="timing repetitions of plain vs TTA")
    args = p.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"depth {DEPTH} base {BASE}, instance {args.epochs * 10} steps, sparse {args.sparse_epochs * 10} steps",
          flush=True)
    for kind in args.stand_ins:
        table = {}
        for seed in args.seeds:
            model, img, truth = instance_model(kind, seed, args.epochs, args.models)
            if args.tta:
                prob, prob_tta, ratio, span, _ = timed_pair(model, img, args.reps)
                a, b = score(truth, instance_labels(prob)), score(truth, instance_labels(prob_tta))
                print(f"{kind} seed {seed} instance TTA: F1@0.5 {a[0]:.3f} -> {b[0]:.3f}, mean F1 {a[1]:.3f} -> "
                      f"{b[1]:.3f}; time x{ratio:.2f} (range {span[0]:.2f}-{span[1]:.2f})", flush=True)
            else:
                prob = nu.predict(model, img)
            if not args.no_variants:
                for name, fn in VARIANTS.items():
                    table.setdefault(name, []).append(score(truth, fn(prob)))
                    f, m = table[name][-1]
                    print(f"{kind} seed {seed} {name}: F1@0.5 {f:.3f} mean F1 {m:.3f}", flush=True)
            if args.tta:
                model, img, truth = sparse_model(kind, seed, args.sparse_epochs, args.models)
                prob, prob_tta, ratio, span, _ = timed_pair(model, img, args.reps)
                lab = lambda q: np.argmax(q, 0)  # noqa: E731 - class 1 (index 1) is the nucleus
                print(f"{kind} seed {seed} sparse TTA: foreground IoU {foreground_iou(truth, lab(prob)):.3f} -> "
                      f"{foreground_iou(truth, lab(prob_tta)):.3f}; time x{ratio:.2f} "
                      f"(range {span[0]:.2f}-{span[1]:.2f})", flush=True)
        for name, rows in table.items():
            f, m = np.mean(rows, axis=0)
            base = np.mean(table["baseline (threshold 0.5, h 1)"], axis=0)
            print(f"{kind} mean over seeds | {name}: F1@0.5 {f:.3f} ({f - base[0]:+.3f})  mean F1 {m:.3f} "
                  f"({m - base[1]:+.3f})", flush=True)


if __name__ == "__main__":
    main()
