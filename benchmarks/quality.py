"""Segmentation quality on the synthetic nuclei stand-in, against Otsu (and a naive masked-loss UNet).

Two protocols from the project's quality targets:

* instance: dense instance masks of the left half of a 512x512 image, ``--instance-budget`` s of CPU
  training (default 120) -> F1 at IoU 0.5 and mean F1 over IoU 0.5-0.9 (outline fit) on the right half;
* sparse: strokes on 6% of the pixels of one image, ``--sparse-budget`` s of training (default 60)
  -> foreground IoU on another, unseen image. ``--naive`` also trains with the border band disabled.

``--stand-in hard`` uses the harder stand-in (``make_nuclei(realism="hard")``: dim nuclei, clumps, defocus,
debris) and trains on imprecise annotator outlines (`annotator_labels`; strokes are painted from them too),
scoring on the true labels. ``--models DIR`` keeps the trained models there and reuses them.

Usage: python benchmarks/quality.py [--seeds 0 1 2] [--base-channels 32] [--naive] [--only sparse]
       [--stand-in standard|hard] [--models DIR] [--tta]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

import napari_unet as nu
from napari_unet.metrics import foreground_iou, matching, mean_f1, otsu_baseline
from napari_unet.synthetic import annotator_labels, make_nuclei, make_strokes

from _common import options_tag, training_options


def stand_in(seed, kind):
    """Image, labels to train on, true labels: the hard stand-in trains on annotator outlines
    (``hard-true``: the hard images with the true outlines, to see what the outlines alone cost)."""
    image, truth = make_nuclei((512, 512), seed=seed, realism=kind.removesuffix("-true"))
    return image, (annotator_labels(truth, seed=seed) if kind == "hard" else truth), truth


def cached_train(models, name, *args, **kwargs):
    """`nu.train`, or the model saved under ``models/name.pt`` by an earlier run with the same settings."""
    path = models and os.path.join(models, name + ".pt")
    if path and os.path.exists(path):
        return nu.load_model(path)
    model = nu.train(*args, **kwargs)
    if path:
        os.makedirs(models, exist_ok=True)
        nu.save_model(model, path)
    return model


def run_name(protocol, kind, seed, budget, base, depth, epochs, extra=""):
    return f"{protocol}-{kind}-s{seed}-{f'e{epochs}' if epochs else f't{budget:g}'}-d{depth}b{base}{extra}"


def instance_run(seed, budget, base, depth, epochs=None, kind="standard", models=None, tta=False, **opts):
    image, train_labels, truth = stand_in(seed, kind)
    train_img, train_lab = image[:, :256], train_labels[:, :256]
    test_img, test_lab = image[:, 256:], truth[:, 256:]
    name = run_name("instance", kind, seed, budget, base, depth, epochs, options_tag(opts))
    model = cached_train(models, name, train_img, train_lab, mode="instance", time_budget=None if epochs else budget,
                         epochs=epochs, base_channels=base, depth=depth, seed=seed,
                         **opts)
    pred = nu.segment(model, test_img, tta=tta)
    otsu_pred = otsu_baseline(test_img)
    return dict(ours=matching(test_lab, pred)["f1"], otsu=matching(test_lab, otsu_pred)["f1"],
                ours_mean=mean_f1(test_lab, pred), otsu_mean=mean_f1(test_lab, otsu_pred),
                steps=model.config.trained_steps)


def sparse_run(seed, budget, base, depth, band, epochs=None, kind="standard", models=None, tta=False, **opts):
    image, train_labels, _ = stand_in(seed, kind)
    strokes = make_strokes(train_labels, fraction=0.06, seed=seed)
    test_img, test_truth = make_nuclei((512, 512), seed=seed + 100, realism=kind.removesuffix("-true"))
    name = run_name("sparse", kind, seed, budget, base, depth, epochs, f"-band{band}" + options_tag(opts))
    model = cached_train(models, name, image, strokes, mode="semantic", time_budget=None if epochs else budget,
                         epochs=epochs, base_channels=base, depth=depth, seed=seed, border_band=band, **opts)
    pred = nu.segment(model, test_img, tta=tta)
    return dict(ours=foreground_iou(test_truth, pred), otsu=foreground_iou(test_truth, otsu_baseline(test_img)),
                steps=model.config.trained_steps, annotated=float((strokes > 0).mean()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--instance-budget", type=float, default=120)
    p.add_argument("--sparse-budget", type=float, default=60)
    p.add_argument("--epochs", type=int, default=None,
                   help="train a fixed number of epochs (10 steps each here) instead of a time budget: "
                        "for tuning on a busy machine")
    p.add_argument("--naive", action="store_true", help="also train without the border band")
    p.add_argument("--only", choices=["instance", "sparse"], default=None)
    p.add_argument("--loss", choices=["ce", "ce+dice"], default=None,
                   help="instance protocol: the training loss (default: the library's)")
    p.add_argument("--stand-in", choices=["standard", "hard", "hard-true"], default="standard",
                   help="the synthetic stand-in: standard, or hard (realism='hard', trained on annotator "
                        "outlines); hard-true: hard images, true outlines (an ablation)")
    p.add_argument("--tta", action="store_true",
                   help="segment the test images with test-time augmentation (8 views; about 8x the prediction)")
    p.add_argument("--models", default=None, help="directory where trained models are kept and reused")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a training option passed to nu.train in both protocols, e.g. edge_weight=3 (repeatable)")
    args = p.parse_args()
    opts = training_options(args.opt)
    common = dict(kind=args.stand_in, models=args.models, tta=args.tta, **opts)
    print(f"# {time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, base_channels={args.base_channels}, depth={args.depth}, "
          f"stand-in {args.stand_in}" + (", tta" if args.tta else "")
          + (f", loss={args.loss}" if args.loss else "") + "".join(f", {k}={v!r}" for k, v in opts.items()))
    if args.only in (None, "sparse"):
        rows = []
        for s in args.seeds:
            r = sparse_run(s, args.sparse_budget, args.base_channels, args.depth, band=3, epochs=args.epochs,
                           **common)
            if args.naive:
                r["naive"] = sparse_run(s, args.sparse_budget, args.base_channels, args.depth, band=0,
                                        epochs=args.epochs, **common)["ours"]
            rows.append(r)
            print(f"sparse seed {s}: foreground IoU ours {r['ours']:.3f}  otsu {r['otsu']:.3f}"
                  + (f"  naive masked UNet {r['naive']:.3f}" if args.naive else "")
                  + f"  ({r['steps']} steps, {100 * r['annotated']:.1f}% annotated)", flush=True)
        print(f"sparse mean: ours {np.mean([r['ours'] for r in rows]):.3f}  otsu {np.mean([r['otsu'] for r in rows]):.3f}"
              + (f"  naive {np.mean([r['naive'] for r in rows]):.3f}" if args.naive else ""), flush=True)
    if args.only in (None, "instance"):
        rows = []
        for s in args.seeds:
            r = instance_run(s, args.instance_budget, args.base_channels, args.depth, epochs=args.epochs,
                             **dict(common, **({"loss": args.loss} if args.loss else {})))
            rows.append(r)
            print(f"instance seed {s}: F1@0.5 ours {r['ours']:.3f}  otsu {r['otsu']:.3f}  |  mean F1 0.5-0.9 "
                  f"ours {r['ours_mean']:.3f}  otsu {r['otsu_mean']:.3f}  ({r['steps']} steps)", flush=True)
        print(f"instance mean: F1@0.5 ours {np.mean([r['ours'] for r in rows]):.3f}  "
              f"otsu {np.mean([r['otsu'] for r in rows]):.3f}  |  mean F1 0.5-0.9 ours "
              f"{np.mean([r['ours_mean'] for r in rows]):.3f}  otsu {np.mean([r['otsu_mean'] for r in rows]):.3f}",
              flush=True)


if __name__ == "__main__":
    main()
