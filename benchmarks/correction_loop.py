"""The annotate -> train -> correct -> retrain loop on the synthetic stand-in.

A strokes-only model (6% of pixels painted, ``--budget`` s, default 60) is corrected once the way a person
would: paint over the largest mistakes (connected regions where the prediction is wrong, biggest first)
with the right class, at most ``--correct`` (5%) of the pixels, then fine-tune ``--finetune`` s (default 30)
from the current model. Reports foreground IoU on an unseen image before and after.

Usage: python benchmarks/correction_loop.py [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage as ndi

import napari_unet as nu
from napari_unet.metrics import foreground_iou
from napari_unet.synthetic import make_nuclei, make_strokes


def correct_largest_mistakes(strokes, prediction, truth, budget_fraction):
    """Paint the biggest wrong regions with their true class (1 background, 2 nucleus), within a budget."""
    wrong = (prediction > 0) != (truth > 0)
    regions, n = ndi.label(wrong)
    if n == 0:
        return strokes.copy(), 0
    sizes = np.bincount(regions.ravel())[1:]
    corrected = strokes.copy()
    budget = int(budget_fraction * strokes.size)
    painted = 0
    for rid in np.argsort(sizes)[::-1] + 1:
        mask = regions == rid
        # a brush stroke covers a little more than the mistake: dilate by one pixel, inside the image
        mask = ndi.binary_dilation(mask, iterations=1)
        new = mask & (corrected == 0)
        if painted + int(new.sum()) > budget:
            break
        corrected[new] = np.where(truth[new] > 0, 2, 1)
        painted += int(new.sum())
    return corrected, painted


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=float, default=60)
    p.add_argument("--finetune", type=float, default=30)
    p.add_argument("--correct", type=float, default=0.05, help="the correction paints at most this fraction of pixels")
    args = p.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}: strokes {args.budget:.0f} s, correction of <= {100 * args.correct:.0f}% "
          f"painted, fine-tune {args.finetune:.0f} s")
    before, after = [], []
    for seed in args.seeds:
        image, truth = make_nuclei((512, 512), seed=seed)
        strokes = make_strokes(truth, fraction=0.06, seed=seed)
        test_image, test_truth = make_nuclei((512, 512), seed=seed + 100)
        model = nu.train(image, strokes, time_budget=args.budget, seed=seed)
        iou0 = foreground_iou(test_truth, nu.segment(model, test_image))
        corrected, painted = correct_largest_mistakes(strokes, nu.segment(model, image), truth, args.correct)
        model = nu.train(image, corrected, init=model, time_budget=args.finetune, seed=seed)
        iou1 = foreground_iou(test_truth, nu.segment(model, test_image))
        before.append(iou0)
        after.append(iou1)
        print(f"seed {seed}: strokes {100 * (strokes > 0).mean():.1f}% -> IoU {iou0:.3f}; corrected "
              f"{100 * painted / strokes.size:.1f}% more -> IoU {iou1:.3f}", flush=True)
    print(f"mean IoU: strokes only {np.mean(before):.3f}, after one correction round {np.mean(after):.3f}")


if __name__ == "__main__":
    main()
