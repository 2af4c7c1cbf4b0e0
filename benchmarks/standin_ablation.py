"""What each ingredient of the hard stand-in does to the scores: models trained once on the hard stand-in
(benchmarks/quality.py --stand-in hard --models DIR), tested on images with one ingredient left out.

Every realism piece draws from its own random stream, so leaving one out changes only what it adds (the
nuclei stay where they are; "clumps" changes the layout itself). The test images are those of the
quality protocols: the right half of the training image's seed (instance), the seed + 100 image (sparse).

Usage: python benchmarks/standin_ablation.py --models /tmp/standin-models --seeds 0 1 --epochs 20 --sparse-epochs 9
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import napari_unet as nu  # noqa: E402
from napari_unet.metrics import foreground_iou, matching, mean_f1, otsu_baseline  # noqa: E402
from napari_unet.synthetic import REALISM, Realism, make_nuclei  # noqa: E402
from quality import run_name  # noqa: E402


def configs():
    hard = REALISM["hard"]
    out = {"hard": hard}
    for piece in ("dim", "clumps", "defocus", "debris"):
        out[f"hard without {piece}"] = dataclasses.replace(hard, **{piece: 0.0})
    out["standard"] = Realism()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--sparse-epochs", type=int, default=9)
    p.add_argument("--only", choices=["instance", "sparse"], default=None)
    args = p.parse_args()
    nan = float("nan")
    rows = {}
    for seed in args.seeds:
        path = os.path.join(args.models, run_name("instance", "hard", seed, None, 16, 4, args.epochs) + ".pt")
        inst = nu.load_model(path) if args.only != "sparse" else None
        path = os.path.join(args.models, run_name("sparse", "hard", seed, None, 16, 4, args.sparse_epochs, "-band3") + ".pt")
        sparse = nu.load_model(path) if args.only != "instance" else None
        for name, real in configs().items():
            image, truth = make_nuclei((512, 512), seed=seed, realism=real)
            img, lab = image[:, 256:], truth[:, 256:]
            pred = nu.segment(inst, img) if inst is not None else None
            timg, ttruth = make_nuclei((512, 512), seed=seed + 100, realism=real)
            otsu = otsu_baseline(img)
            r = (matching(lab, pred)["f1"] if inst else nan, mean_f1(lab, pred) if inst else nan,
                 foreground_iou(ttruth, nu.segment(sparse, timg)) if sparse else nan,
                 matching(lab, otsu)["f1"], foreground_iou(ttruth, otsu_baseline(timg)))
            rows.setdefault(name, []).append(r)
            print(f"seed {seed} {name}: instance F1@0.5 {r[0]:.3f} mean F1 {r[1]:.3f} | sparse IoU {r[2]:.3f} | "
                  f"Otsu F1@0.5 {r[3]:.3f} IoU {r[4]:.3f}", flush=True)
    for name, r in rows.items():
        m = np.mean(r, axis=0)
        print(f"mean {name}: instance F1@0.5 {m[0]:.3f} mean F1 {m[1]:.3f} | sparse IoU {m[2]:.3f} | "
              f"Otsu F1@0.5 {m[3]:.3f} IoU {m[4]:.3f}", flush=True)


if __name__ == "__main__":
    main()
