"""3D instance quality on the realistic 3D stand-in: a 3D model against a 2D model + stitching.

Protocol (issue 15): a synthetic stack ``make_nuclei(shape, spacing=, attenuation=, depth_blur=)`` (planes
3x further apart than the pixels, 60 % of the light lost at the deepest plane, a PSF 50 % wider there);
the left half (along X) trains, the right half is segmented and scored in 3D against the true nuclei:
F1 at IoU 0.5 and the mean F1 over IoU 0.5-0.9 (`napari_unet.metrics`).

* ``3d:<variant>``: a 3D instance model (default network) trained ``--steps-3d`` steps; variants differ
  in what they are told (``iso``: nothing, isotropic pooling; ``aniso``: the voxel spacing) or in
  their patch (see ``VARIANTS``);
* ``2d``: a 2D instance model (default network) trained ``--steps-2d`` steps on the planes, its
  objects linked across planes (`stitch_planes`, the default threshold).

Equal *steps*, not wall clock: the machine is shared, so each model trains the number of steps it does
in 120 s on a quiet 2-core CPU (``--steps-3d``/``--steps-2d``; how they were measured is in
benchmarks/results/vol3d.md). Every run uses one torch thread (``--threads``).

``--cache DIR`` keeps the trained models (and, for benchmarks/post_3d.py, the held-out probabilities):
a model already there is loaded instead of trained, so post-processing variants score the same networks.

Usage: python benchmarks/quality_3d.py [--seeds 0 1] [--models 3d:iso 3d:aniso 2d] [--steps-3d 150] [--cache DIR]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import napari_unet as nu
from napari_unet.metrics import matching, mean_f1
from napari_unet.synthetic import make_nuclei

from _common import machine

#: What each 3D variant passes to `napari_unet.train` beyond the protocol's arguments.
VARIANTS = {
    "iso": {},
    "aniso": {"spacing": "volume"},  # the stack's own voxel spacing, declared
    "aniso-flat": {"spacing": "volume", "patch_size": (16, 96, 96)},
    "iso-flat": {"patch_size": (16, 96, 96)},
    "aniso-thick": {"spacing": "volume", "instance_boundary": "thick"},
    "aniso-touching": {"spacing": "volume", "instance_boundary": "touching"},
    "aniso-edge": {"spacing": "volume", "edge_weight": 2.0},
    "aniso-dice": {"spacing": "volume", "loss": "ce+dice"},
    "aniso-16x128": {"spacing": "volume", "patch_size": (16, 128, 128)},
    # about isotropic in tissue at spacing 3 (72 x 80 x 80 px), 1.17x the default patch's voxels
    "aniso-24x80": {"spacing": "volume", "patch_size": (24, 80, 80)},
    # the boundary class drawn with the spacing (`instance_targets(spacing=)`): the default since
    # benchmarks/results/vol3d2.md; its first runs patched it in (cached "3d-aniso" models predate it)
    "aniso-rimxy": {"spacing": "volume"},
    # training precision (`mixed_precision`): the cached models above were trained in fp32; bf16 is the
    # default on CPUs with bf16 units since the sixth session (BENCHMARKS.md)
    "aniso-bf16": {"spacing": "volume", "mixed_precision": True},
    "aniso-fp32": {"spacing": "volume", "mixed_precision": False},
    "bf16": {"mixed_precision": True},  # for 2D models: "2d:bf16"
    "bf16-b32": {"mixed_precision": True, "base_channels": 32},  # a bf16 step of 32 channels: 1.1x an fp32 one of 16
    "fp32": {"mixed_precision": False},
    # 2D models that read each plane with K planes above and below it (`context_planes=K`, tenth session)
    **{f"bf16-b32-ctx{k}": {"mixed_precision": True, "base_channels": 32, "context_planes": k} for k in range(1, 6)},
    "fp32-ctx3": {"mixed_precision": False, "context_planes": 3},  # what an fp32 CPU trains (16 base channels)
}


def model_dims(name) -> int:
    """2 for the protocol's 2D models ("2d", "2d:VARIANT"), else 3 ("3d:VARIANT")."""
    return 2 if name.split(":")[0] == "2d" else 3
STEPS_PER_EPOCH = 10  # the protocol's regions are small: `train` makes 10 steps per epoch


def stand_in(shape, seed, spacing, attenuation, depth_blur):
    """The realistic stack and its truth, split into the training (left) and scored (right) halves."""
    image, truth = make_nuclei(tuple(shape), seed=seed, spacing=tuple(spacing), attenuation=attenuation,
                               depth_blur=depth_blur)
    half = shape[2] // 2
    return (image[..., :half], truth[..., :half]), (image[..., half:], truth[..., half:])


def trained(name, train_img, train_lab, seed, steps, spacing, cache=None):
    """The protocol's model ``name``: trained, or loaded from ``cache`` (a folder) when trained before.

    Returns (model, training seconds; 0 when loaded). The cache also keeps the held-out half's
    probabilities (`cached_probabilities`), so post-processing variants reuse the same networks.
    """
    dims, variant = model_dims(name), (name.split(":", 1)[1] if ":" in name else None)
    path = None if cache is None else model_path(cache, name, seed, steps)
    if path is not None and path.exists():
        return nu.load_model(path), 0.0
    kwargs = {k: (tuple(spacing) if v == "volume" else v) for k, v in VARIANTS.get(variant, {}).items()}
    t = time.perf_counter()
    model = nu.train(train_img, train_lab, mode="instance", dims=dims, epochs=max(1, steps // STEPS_PER_EPOCH),
                     seed=seed, **kwargs)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        nu.save_model(model, path)
    return model, time.perf_counter() - t


def model_path(cache, name, seed, steps):
    """Where ``trained`` keeps a model in the ``cache`` folder."""
    return Path(cache) / f"{name.replace(':', '-')}-seed{seed}-steps{steps}.pt"


def cached_probabilities(model_path, model, image):
    """The model's probabilities on ``image``, kept next to the cached model file (``.prob.npy``)."""
    path = Path(str(model_path) + ".prob.npy")
    if not path.exists():
        np.save(path, nu.predict(model, image).astype(np.float32))
    return np.load(path)


def run_model(name, train_part, test_part, seed, steps, spacing, cache=None):
    """Train one model of the protocol (or load it from ``cache``) and score it on the held-out half."""
    (train_img, train_lab), (test_img, test_lab) = train_part, test_part
    dims = model_dims(name)
    model, t_train = trained(name, train_img, train_lab, seed, steps, spacing, cache)
    t = time.perf_counter()
    pred = nu.segment(model, test_img, **({"stitch_planes": True} if dims == 2 else {}))
    t_pred = time.perf_counter() - t
    m = matching(test_lab, pred)
    extra = {}
    if dims == 3 and model.config.spacing is None:  # ablation: the same network, distances in physical units
        spaced = nu.Model(model.network, replace(model.config, spacing=tuple(spacing)))
        post = nu.segment(spaced, test_img)
        extra = dict(post_f1=matching(test_lab, post)["f1"], post_mean_f1=mean_f1(test_lab, post))
    return dict(**extra, model=name, seed=seed, steps=model.config.trained_steps, patch=model.config.patch_size,
                nuclei=m["tp"] + m["fn"], found=m["tp"] + m["fp"], tp=m["tp"], f1=m["f1"],
                mean_f1=mean_f1(test_lab, pred),
                train_s=t_train, predict_s=t_pred)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--models", nargs="+", default=["3d:iso", "3d:aniso", "2d"],
                   help="2d, or 3d:<variant> with a variant of " + ", ".join(VARIANTS))
    p.add_argument("--steps-3d", type=int, default=150)
    p.add_argument("--steps-2d", type=int, default=400)
    p.add_argument("--shape", type=int, nargs=3, default=[32, 192, 256], help="Z Y X voxels of the stack")
    p.add_argument("--spacing", type=int, nargs=3, default=[3, 1, 1])
    p.add_argument("--attenuation", type=float, default=0.6)
    p.add_argument("--depth-blur", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", help="folder keeping the trained models (reused when present) and their probabilities")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {machine()}; {args.threads} torch thread(s); stack {args.shape} "
          f"spacing {args.spacing} attenuation {args.attenuation} depth blur {args.depth_blur}", flush=True)
    rows = []
    for seed in args.seeds:
        parts = stand_in(args.shape, seed, args.spacing, args.attenuation, args.depth_blur)
        for name in args.models:
            steps = args.steps_2d if model_dims(name) == 2 else args.steps_3d
            r = run_model(name, *parts, seed, steps, args.spacing, args.cache)
            rows.append(r)
            print(f"{name:14s} seed {seed}: {r['steps']} steps, patch {r['patch']}; {r['nuclei']} nuclei, "
                  f"{r['found']} found, {r['tp']} matched; F1@0.5 {r['f1']:.3f}  mean F1 0.5-0.9 "
                  f"{r['mean_f1']:.3f}  (train {r['train_s']:.0f} s, predict {r['predict_s']:.0f} s)"
                  + (f"; with the spacing in post-processing only: F1@0.5 {r['post_f1']:.3f}  mean F1 "
                     f"{r['post_mean_f1']:.3f}" if "post_f1" in r else ""), flush=True)
    for name in args.models:
        sel = [r for r in rows if r["model"] == name]
        print(f"mean {name:14s} ({len(sel)} seeds): F1@0.5 {np.mean([r['f1'] for r in sel]):.3f}  "
              f"mean F1 {np.mean([r['mean_f1'] for r in sel]):.3f}", flush=True)


if __name__ == "__main__":
    main()
