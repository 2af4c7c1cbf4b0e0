"""Continuing a trained model on the same labels: does it keep its quality, by fine-tuning learning rate?

"Continue from the current model" (CLI ``--init``, API ``init=``) fine-tunes with a fresh warm-up and
cosine schedule at `napari_unet.train.settings.default_learning_rate(fine_tuning=True)`. Continuing on
the labels the model was trained on adds no information, so a good fine-tuning rate should leave the
model about as good, never much worse. For each seed a model is trained as `quality.py` does (cached in
``--models`` under quality.py's names), continued ``--continue-epochs`` epochs at each rate of
``--rates``, and scored on the unseen image: foreground IoU (strokes, hard stand-in) and F1@0.5 / mean F1
over IoU 0.5-0.9 (dense instance masks, hard stand-in).

Usage: PYTHONPATH=src:benchmarks OMP_NUM_THREADS=1 python benchmarks/continue_training.py
       [--protocols sparse instance] [--seeds 0 1 2] [--rates 5e-4 2e-4 1e-4] [--models DIR] [--opt KEY=VALUE]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

import napari_unet as nu
from napari_unet.metrics import foreground_iou, matching, mean_f1
from napari_unet.synthetic import make_nuclei, make_strokes

from _common import machine, options_tag, training_options
from quality import cached_train, run_name, stand_in


def sparse_case(seed, args, opts):
    """(training image, strokes, scorer, base-model keywords, cache name) of the strokes protocol."""
    image, annotator, _ = stand_in(seed, "hard")
    strokes = make_strokes(annotator, fraction=0.06, seed=seed)
    test_image, test_truth = make_nuclei((512, 512), seed=seed + 100, realism="hard")
    name = run_name("sparse", "hard", seed, None, args.base_channels, args.depth, args.sparse_epochs,
                    "-band3" + options_tag(opts))

    def score(model):
        return (foreground_iou(test_truth, nu.segment(model, test_image)),)

    return image, strokes, score, dict(mode="semantic", border_band=3, epochs=args.sparse_epochs), name


def instance_case(seed, args, opts):
    """The same for the dense-masks protocol (left half trained on, right half scored)."""
    image, annotator, truth = stand_in(seed, "hard")
    test_image, test_truth = image[:, 256:], truth[:, 256:]
    name = run_name("instance", "hard", seed, None, args.base_channels, args.depth, args.instance_epochs,
                    options_tag(opts))

    def score(model):
        pred = nu.segment(model, test_image)
        return matching(test_truth, pred)["f1"], mean_f1(test_truth, pred)

    return image[:, :256], annotator[:, :256], score, dict(mode="instance", epochs=args.instance_epochs), name


def run(protocol, seed, args, opts):
    """Scores of the trained model and of each continued one."""
    case = sparse_case if protocol == "sparse" else instance_case
    image, labels, score, base_kwargs, name = case(seed, args, opts)
    common = dict(base_channels=args.base_channels, depth=args.depth, seed=seed)
    model = cached_train(args.models, name, image, labels, **base_kwargs, **common, **opts)
    scores = {"trained": score(model)}
    tune = {k: v for k, v in {**base_kwargs, **opts}.items() if k not in ("epochs", "background")}
    for rate in args.rates:
        t0 = time.perf_counter()
        tuned = cached_train(args.models, f"{name}-continued{args.continue_epochs}-lr{rate:g}", image, labels,
                             init=model, epochs=args.continue_epochs, learning_rate=rate, seed=seed, **tune)
        scores[rate] = score(tuned)
        print(f"{protocol} seed {seed}: trained {scores['trained'][0]:.3f}, continued at {rate:g} "
              f"{scores[rate][0]:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return scores


def table(protocol, rows, args):
    metrics = ("foreground IoU",) if protocol == "sparse" else ("F1@0.5", "mean F1 0.5-0.9")
    for m, metric in enumerate(metrics):
        print(f"\n{protocol}, {metric}\n\n| model | " + " | ".join(f"seed {s}" for s in args.seeds)
              + " | mean | worst change |\n| --- |" + " --- |" * (len(args.seeds) + 2))
        base = np.array([r["trained"][m] for r in rows])
        for key in ["trained", *args.rates]:
            vals = np.array([r[key][m] for r in rows])
            label = "trained" if key == "trained" else f"continued {args.continue_epochs} epochs at {key:g}"
            worst = "" if key == "trained" else f"{(vals - base).min():+.3f}"
            print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {vals.mean():.3f} | {worst} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocols", nargs="+", choices=["sparse", "instance"], default=["sparse", "instance"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rates", type=float, nargs="+", default=[5e-4, 2e-4, 1e-4])
    p.add_argument("--sparse-epochs", type=int, default=44, help="epochs (10 steps) of the strokes model")
    p.add_argument("--instance-epochs", type=int, default=38, help="epochs (10 steps) of the instance model")
    p.add_argument("--continue-epochs", type=int, default=22)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--models", default=os.path.join(tempfile.gettempdir(), "napari-unet-quality-models"))
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a training option of both protocols (napari_unet.train keyword), repeatable")
    args = p.parse_args()
    torch.set_num_threads(1)
    opts = training_options(args.opt)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {machine()}; hard stand-in, d{args.depth}b{args.base_channels}, "
          f"continued {args.continue_epochs} epochs; options {opts or 'none'}", flush=True)
    for protocol in args.protocols:
        table(protocol, [run(protocol, s, args, opts) for s in args.seeds], args)


if __name__ == "__main__":
    main()
