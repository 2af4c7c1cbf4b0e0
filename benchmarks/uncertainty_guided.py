"""Does a correction painted where the model hesitates help more than one painted at random?

On the hard stand-in (``make_nuclei(realism="hard")``, strokes on 6% of the pixels painted from the
annotator's outlines, as ``quality.py --stand-in hard`` does), a strokes model is trained a fixed number
of epochs; then ONE correction round paints the same budget of extra pixels (``--correct``, 2%) with the
annotator's class (1 background, 2 nucleus), placed

* ``hesitation``: round brush dabs at `napari_unet.uncertainty.suggest_strokes` of the model's
  hesitation map on the training image (what the napari view shows);
* ``random``: the same dabs at random unannotated pixels;
* ``mistakes``: the largest wrong regions (the oracle of ``correction_loop.py``, which needs the truth);
* ``none``: nothing painted (the fine-tuning steps alone);
* ``true-mistakes`` (not run by default): the largest regions wrong against the TRUE labels, painted
  with the true class (an annotator without outline errors);
* ``mixed`` (not run by default): dabs alternately at the hesitant spots and at random places,

and each is fine-tuned the same number of epochs from the trained model (``init=``). Foreground IoU is
scored on the unseen image seed+100 against the TRUE labels. Models are kept in ``--models`` and reused.

Usage: PYTHONPATH=src:benchmarks OMP_NUM_THREADS=1 nice python benchmarks/uncertainty_guided.py
       [--seeds 0 1 2] [--epochs 19] [--finetune-epochs 9] [--correct 0.02] [--models DIR] [--opt KEY=VALUE] [--tta]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

import napari_unet as nu
from napari_unet.metrics import foreground_iou
from napari_unet.synthetic import make_nuclei, make_strokes
from napari_unet.uncertainty import hesitation, suggest_strokes

from _common import alternate, machine, options_tag, ratio_summary, training_options
from correction_loop import correct_largest_mistakes
from quality import cached_train, run_name, stand_in

ARMS = ("hesitation", "random", "mistakes", "none", "true-mistakes", "mixed")


def dab(shape, centre, radius):
    """A round brush dab (the pixels within ``radius`` of ``centre``), as a boolean mask's slice + mask."""
    sl = tuple(slice(max(c - radius, 0), min(c + radius + 1, s)) for c, s in zip(centre, shape))
    grid = np.ogrid[sl]
    mask = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
    return sl, mask


def paint_dabs(strokes, centres, annotator, budget_fraction, radius):
    """Paint dabs at ``centres`` in order, each pixel with the annotator's class, until the budget is spent."""
    corrected = strokes.copy()
    budget, painted = int(budget_fraction * strokes.size), 0
    for centre in centres:
        sl, mask = dab(strokes.shape, tuple(int(c) for c in centre), radius)
        new = mask & (corrected[sl] == 0)
        if painted + int(new.sum()) > budget:
            break
        corrected[sl][new] = np.where(annotator[sl][new] > 0, 2, 1)
        painted += int(new.sum())
    return corrected, painted


def corrections(arm, strokes, annotator, truth, prediction, probabilities, budget, radius, seed):
    """The strokes after the arm's correction round, and the pixels it painted."""
    if arm == "none":
        return strokes.copy(), 0
    if arm in ("mistakes", "true-mistakes"):
        return correct_largest_mistakes(strokes, prediction, annotator if arm == "mistakes" else truth, budget)
    dabs = int(2 * budget * strokes.size / (np.pi * radius**2)) + 1  # more than the budget can take
    hesitant = suggest_strokes(hesitation(probabilities), strokes, count=dabs, radius=radius)
    free = np.argwhere(strokes == 0)
    chance = free[np.random.default_rng(seed).choice(len(free), size=dabs, replace=False)]
    centres = {"hesitation": hesitant, "random": chance}.get(arm)
    if arm == "mixed":
        n = min(len(hesitant), len(chance))
        centres = np.stack([hesitant[:n], chance[:n]], axis=1).reshape(-1, strokes.ndim)
    return paint_dabs(strokes, centres, annotator, budget, radius)


def painted_info(corrected, strokes, prediction, truth):
    """What a correction painted: its share of nucleus, of pixels the model had wrong (true labels), and of
    pixels whose painted class contradicts the true labels (the annotator's outline errors)."""
    new = corrected != strokes
    if not new.any():
        return "nothing"
    nucleus, true_fg = corrected[new] == 2, truth[new] > 0
    wrong = (prediction[new] > 0) != true_fg
    return (f"{100 * nucleus.mean():.0f}% nucleus, {100 * wrong.mean():.0f}% where the model was wrong, "
            f"{100 * (nucleus != true_fg).mean():.0f}% against the truth")


def run_seed(seed, args):
    image, annotator, truth = stand_in(seed, "hard")
    strokes = make_strokes(annotator, fraction=0.06, seed=seed)
    test_image, test_truth = make_nuclei((512, 512), seed=seed + 100, realism="hard")
    opts = training_options(args.opt)
    common = dict(mode="semantic", base_channels=args.base_channels, depth=args.depth, seed=seed, border_band=3)
    name = run_name("sparse", "hard", seed, None, args.base_channels, args.depth, args.epochs,
                    "-band3" + options_tag(opts))
    t0 = time.perf_counter()
    model = cached_train(args.models, name, image, strokes, epochs=args.epochs, **common, **opts)
    # fine-tuning keeps the model's network (its background window included) and the other options
    tune_opts = {**{k: v for k, v in opts.items() if k != "background"}, **training_options(args.tune_opt)}
    before = foreground_iou(test_truth, nu.segment(model, test_image, tta=args.tta))
    probabilities = np.empty((model.num_classes,) + image.shape, np.float32)
    prediction = nu.segment(model, image, probabilities_out=probabilities)
    row = dict(seed=seed, before=before, steps=model.config.trained_steps, annotated=float((strokes > 0).mean()))
    print(f"seed {seed}: trained {row['steps']} steps on {100 * row['annotated']:.1f}% strokes "
          f"({time.perf_counter() - t0:.0f} s) -> IoU {before:.3f}", flush=True)
    for arm in args.arms:
        t0 = time.perf_counter()
        tuned, corrected = correct_and_tune(arm, model, name, image, strokes, annotator, truth, prediction,
                                            probabilities, args, {**common, **tune_opts})
        after = foreground_iou(test_truth, nu.segment(tuned, test_image, tta=args.tta))
        painted = int(np.count_nonzero(corrected != strokes))
        row[arm], row[arm + "_px"] = after, painted / strokes.size
        info = painted_info(corrected, strokes, prediction, truth)
        print(f"  {arm:10s}: painted {100 * painted / strokes.size:.2f}% more ({info}) -> IoU {after:.3f} "
              f"({after - before:+.3f}; {time.perf_counter() - t0:.0f} s)", flush=True)
    return row


def correct_and_tune(arm, model, name, image, strokes, annotator, truth, prediction, probabilities, args, options):
    """The arm's correction, in ``args.rounds`` rounds that share its budget and its fine-tuning epochs: each
    round paints where the model of the round before is wrong (or hesitates), then fine-tunes it."""
    rounds = args.rounds
    corrected = strokes
    for r in range(rounds):
        if r:  # the next round looks at the model the previous one made
            probabilities = np.empty((model.num_classes,) + image.shape, np.float32)
            prediction = nu.segment(model, image, probabilities_out=probabilities)
        corrected, _ = corrections(arm, corrected, annotator, truth, prediction, probabilities,
                                   args.correct / rounds, args.radius, options["seed"] + 1000 * r)
        tag = f"{name}-{arm}{args.correct:g}r{args.radius}-ft{args.finetune_epochs}" + options_tag(
            training_options(args.tune_opt)) + (
            f"-round{r + 1}of{rounds}" if rounds > 1 else "")
        model = cached_train(args.models, tag, image, corrected, init=model, epochs=args.finetune_epochs // rounds,
                             **{k: v for k, v in options.items() if k not in ("mode", "base_channels", "depth")})
    return model, corrected


def preview_cost(reps):
    """Seconds of a live preview of a 512 x 512 window (the widget's CPU network) with and without the map."""
    from napari_unet.conventions import interactive_network
    from napari_unet.model import Model
    from napari_unet.predict import iter_predict
    from napari_unet.progress import drain

    depth, base = interactive_network(False)
    model = Model.untrained(dims=2, depth=depth, base_channels=base, mode="semantic", class_ids=(1, 2), seed=0)
    window = make_nuclei((512, 512), seed=0, realism="hard")[0][None]

    def labels_only():
        drain(iter_predict(model, window, labels=True, tile=None, device="cpu", channel_axis=0))

    def with_map():  # what `iter_train_live` does when the view is on
        done = drain(iter_predict(model, window, labels=True, probabilities=True, tile=None, device="cpu",
                                  channel_axis=0))
        hesitation(done.probabilities)

    times = alternate({"preview": labels_only, "preview + map": with_map}, reps)
    print(f"preview of 512 x 512, depth {depth} base {base}: median {np.median(times['preview']):.3f} s, with the "
          f"map {np.median(times['preview + map']):.3f} s; ratio {ratio_summary(times, 'preview + map', 'preview')}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=19, help="epochs (10 steps each) of the strokes model")
    p.add_argument("--finetune-epochs", type=int, default=9, help="epochs of every arm's fine-tuning")
    p.add_argument("--correct", type=float, default=0.02, help="fraction of the pixels each correction paints")
    p.add_argument("--radius", type=int, default=5, help="brush radius of the dabs (px)")
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS[:4]))
    p.add_argument("--models", default=os.path.join(tempfile.gettempdir(), "napari-unet-uncertainty-models"),
                   help="directory where trained models are kept and reused")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a training option of the strokes model (napari_unet.train keyword), repeatable")
    p.add_argument("--tune-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a training option of the fine-tuning only (e.g. learning_rate=0.0002), repeatable")
    p.add_argument("--rounds", type=int, default=1, help="split each arm's correction budget and fine-tuning "
                   "epochs over this many rounds, each looking at the model the round before made")
    p.add_argument("--tta", action="store_true", help="score every model's segmentation of the unseen image "
                   "with test-time augmentation (8 views)")
    p.add_argument("--preview-cost", type=int, default=0, metavar="REPS",
                   help="only time a live preview with and without the map, REPS times alternated")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.preview_cost:
        print(f"# {time.strftime('%Y-%m-%d %H:%M')} {machine()}")
        return preview_cost(args.preview_cost)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {machine()}\n# hard stand-in, strokes {args.epochs} epochs, "
          f"d{args.depth}b{args.base_channels}; one correction of {100 * args.correct:g}% "
          f"(dabs r={args.radius}), fine-tune {args.finetune_epochs} epochs"
          + (f", in {args.rounds} rounds" if args.rounds > 1 else "") + (", scored with TTA" if args.tta else ""), flush=True)
    rows = [run_seed(s, args) for s in args.seeds]
    print("\n| arm | " + " | ".join(f"seed {r['seed']}" for r in rows) + " | median | mean | gain (mean) |")
    print("| --- |" + " --- |" * (len(rows) + 3))
    before = [r["before"] for r in rows]
    print(f"| before | " + " | ".join(f"{v:.3f}" for v in before)
          + f" | {np.median(before):.3f} | {np.mean(before):.3f} | |")
    for arm in args.arms:
        vals = [r[arm] for r in rows]
        print(f"| {arm} | " + " | ".join(f"{v:.3f}" for v in vals)
              + f" | {np.median(vals):.3f} | {np.mean(vals):.3f} | {np.mean(vals) - np.mean(before):+.3f} |")
    best = max(args.arms, key=lambda a: np.mean([r[a] for r in rows]))
    reached = [a for a in args.arms if np.median([r[a] for r in rows]) >= 0.91]
    print(f"\nbest arm (mean): {best}; arms whose median reaches the 0.91 target: {reached or 'none'}")


if __name__ == "__main__":
    main()
