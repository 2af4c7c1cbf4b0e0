"""Post-processing variants on the cached models of benchmarks/quality_3d.py (no training).

Run quality_3d.py with ``--cache DIR`` first; this script loads the same models from DIR, predicts the
held-out half once (the probabilities are cached too) and scores post-processing variants on them:

* 3D models: the seed height ``h``, the distance smoothing ``sigma`` and the fragment fraction
  ``min_fraction`` of `instance_labels` (with the model's declared spacing);
* the 2D model + stitching: the 2D seed height, the fragment fraction of the sections, the stitching
  threshold, with and without the dip rule (`napari_unet.stitch.dips`), and a diagnosis of the sections
  (sections per plane against the truth's; predicted sections split inside one true section, sections
  matching no true section, and how well the sections would score if every section were linked to the
  true nucleus it overlaps most: the ceiling of any linking rule).

Usage: python benchmarks/post_3d.py --cache DIR [--seeds 0 1] [--models 3d:aniso 2d] [--steps-3d 150]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import napari_unet as nu
from napari_unet.metrics import matching, mean_f1
from napari_unet.postprocess import instance_labels
from napari_unet.stitch import link_planes, stitch_planes

from _common import machine
from quality_3d import cached_probabilities, model_path, stand_in


def score(truth, pred):
    m = matching(truth, pred)
    return dict(found=m["tp"] + m["fp"], tp=m["tp"], f1=m["f1"], mean_f1=mean_f1(truth, pred))


def planes(prob, **kw):
    """Per-plane instance labels of a 2D model's stack probabilities (K, Z, Y, X); ids unique per plane."""
    return np.stack([instance_labels(prob[:, z], **kw) for z in range(prob.shape[1])])


def diagnose(truth, sections):
    """What the 2D model's sections are, plane by plane, against the true sections."""
    n_true = n_pred = split = extra = matched = 0
    for z in range(truth.shape[0]):
        t, p = truth[z], sections[z]
        ids = np.unique(p[p > 0])
        n_true += len(np.unique(t[t > 0]))
        n_pred += len(ids)
        matched += matching(t, p)["tp"]
        owners = []
        for i in ids:
            under = t[p == i]
            owner = np.bincount(under).argmax()
            if owner == 0 or (under == owner).mean() < 0.5:
                extra += 1  # mostly background, or no true section under most of it
            else:
                owners.append(owner)
        split += len(owners) - len(set(owners))  # true sections covered by more than one predicted section
    return dict(true_sections=n_true, sections=n_pred, matched_2d=matched, split=split, extra=extra)


def oracle_link(truth, sections):
    """Each section linked to the true nucleus it overlaps most; sections mostly over background dropped."""
    out = np.zeros_like(truth)
    for z in range(truth.shape[0]):
        for i in np.unique(sections[z][sections[z] > 0]):
            sel = sections[z] == i
            out[z][sel] = np.bincount(truth[z][sel]).argmax()
    return out


def linked_without_dips(sections, threshold):
    """`stitch_planes` before the dip rule: the overlap rule alone."""
    out, previous, next_id = np.zeros_like(sections), None, 1
    for z, plane in enumerate(sections):
        out[z], next_id = link_planes(previous, plane, threshold, next_id)
        previous = out[z]
    return out


def run_3d(name, prob, truth, spacing, heights, sigmas, fractions):
    for h in heights:
        for sigma in sigmas:
            for f in fractions:
                r = score(truth, instance_labels(prob, h=h, sigma=sigma, spacing=spacing, min_fraction=f))
                yield dict(model=name, variant=f"h={h} sigma={sigma} fragments<{f}", **r)


def run_2d(prob, truth, heights, thresholds, fractions):
    for h in heights:
        for f in fractions:
            sections = planes(prob, h=h, min_fraction=f)
            d = diagnose(truth, sections)
            o = score(truth, oracle_link(truth, sections))
            yield dict(model="2d", variant=f"h={h} fragments<{f} oracle-link", **o, **d)
            for t in thresholds:
                for dips, linked in (("no dips", linked_without_dips(sections, t)), ("dips", stitch_planes(sections, t))):
                    yield dict(model="2d", variant=f"h={h} fragments<{f} stitch {t} {dips}", **score(truth, linked))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--models", nargs="+", default=["3d:aniso", "2d"])
    p.add_argument("--steps-3d", type=int, default=150)
    p.add_argument("--steps-2d", type=int, default=400)
    p.add_argument("--heights", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 1.5])
    p.add_argument("--heights-2d", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.8])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.2],
                   help="min_fraction of instance_labels: fragments dropped (3D objects and 2D sections)")
    p.add_argument("--shape", type=int, nargs=3, default=[32, 192, 256])
    p.add_argument("--spacing", type=int, nargs=3, default=[3, 1, 1])
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {machine()}; stack {args.shape} spacing {args.spacing}", flush=True)
    rows = []
    for seed in args.seeds:
        _, (test_img, test_lab) = stand_in(args.shape, seed, args.spacing, 0.6, 0.5)
        for name in args.models:
            steps = args.steps_2d if name == "2d" else args.steps_3d
            path = model_path(args.cache, name, seed, steps)
            model = nu.load_model(path)
            prob = cached_probabilities(path, model, test_img)
            runs = (run_2d(prob, test_lab, args.heights_2d, args.thresholds, args.fractions) if name == "2d" else
                    run_3d(name, prob, test_lab, model.config.spacing, args.heights, args.sigmas,
                           args.fractions))
            for r in runs:
                rows.append(dict(seed=seed, **r))
                extra = "".join(f" {k} {r[k]}" for k in ("true_sections", "sections", "matched_2d", "split", "extra")
                                if k in r)
                print(f"{name} seed {seed} {r['variant']:28s}: {r['found']} found, {r['tp']} matched; F1@0.5 "
                      f"{r['f1']:.3f}  mean F1 {r['mean_f1']:.3f}{extra}", flush=True)
    for key in dict.fromkeys((r["model"], r["variant"]) for r in rows):
        sel = [r for r in rows if (r["model"], r["variant"]) == key]
        print(f"mean {key[0]} {key[1]:28s} ({len(sel)} seeds): F1@0.5 {np.mean([r['f1'] for r in sel]):.3f}  "
              f"mean F1 {np.mean([r['mean_f1'] for r in sel]):.3f}", flush=True)


if __name__ == "__main__":
    main()
