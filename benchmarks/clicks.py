"""Click to segment gives one object: IoU of `napari_unet.segment_at` with the true object, and its latency.

A strokes-trained (semantic) and an instance-trained model with the Train widget's CPU network
(`conventions.interactive_network`) are trained on one synthetic image (``--epochs``, 10 steps each), then every
nucleus of an unseen image with many touching nuclei (``--touching``) is clicked at its most interior
point (the maximum of its distance transform). Reports the fraction of clicks whose mask has IoU >= 0.5
with the clicked nucleus (all of them, and the touching ones alone), and the median / 95th percentile
latency of a click.

Usage: python benchmarks/clicks.py [--seeds 0 1 2] [--epochs 8] [--cache /tmp/click-models] [--kinds semantic] [--opt edge_weight=3]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy import ndimage as ndi

import napari_unet as nu
from napari_unet.conventions import interactive_network
from napari_unet.synthetic import make_nuclei, make_strokes

from _common import machine, options_tag, training_options


def trained(kind, seed, epochs, cache, **options):
    """A model trained on image ``seed``: strokes (semantic) or the dense masks (instance).

    A fixed number of epochs (10 steps each here), not a time budget: the machine is shared, and a busy
    minute once gave 12 steps where a quiet one gives about 80.
    """
    path = os.path.join(cache, f"{kind}-{seed}-e{epochs}{options_tag(options)}.pt") if cache else None
    if path and os.path.exists(path):
        return nu.load_model(path)
    depth, base = interactive_network(False)
    image, truth = make_nuclei((512, 512), seed=seed)
    labels = make_strokes(truth, fraction=0.06, seed=seed) if kind == "semantic" else truth
    model = nu.train(image, labels, mode=kind, epochs=epochs, depth=depth, base_channels=base, seed=seed,
                     **options)
    if path:
        os.makedirs(cache, exist_ok=True)
        nu.save_model(model, path)
    return model


def interior_points(truth):
    """Each object's most interior pixel (the maximum of its distance transform)."""
    ids = np.arange(1, int(truth.max()) + 1)
    # distance to the object's own edge: a touching neighbour counts as its edge
    edges = ndi.morphological_gradient(truth, size=3) > 0
    dist = ndi.distance_transform_edt(~edges & (truth > 0))
    return ids, ndi.maximum_position(dist, truth, ids)


def touching_ids(truth):
    grown = ndi.grey_dilation(truth, size=3)
    pairs = (grown != truth) & (truth > 0) & (grown > 0)
    return set(np.unique(truth[pairs]).tolist())


def click_all(model, image, truth):
    """IoU of each click's mask with its object, seconds per click, and whether the model found the object
    (its own segmentation covers at least half of it: else no click post-processing can give it)."""
    ids, points = interior_points(truth)
    seen = nu.segment(model, image, device="cpu") > 0
    found = np.asarray(ndi.mean(seen, truth, ids)) >= 0.5
    ious, seconds = [], []
    for i, p in zip(ids, points):
        hit = nu.segment_at(model, image, p, device="cpu")
        mask = np.zeros(truth.shape, bool)
        mask[hit.key] = hit.mask
        obj = truth == i
        ious.append((mask & obj).sum() / max((mask | obj).sum(), 1))
        seconds.append(hit.seconds)
    return ids, np.asarray(ious), np.asarray(seconds), found


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=8, help="training epochs (10 steps each; 8: what a quiet "
                                                            "2-core CPU does in about 60 s)")
    p.add_argument("--touching", type=float, default=0.6)
    p.add_argument("--cache", default=None, help="folder keeping the trained models between runs")
    p.add_argument("--kinds", nargs="+", choices=["semantic", "instance"], default=["semantic", "instance"])
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a training option passed to nu.train, e.g. edge_weight=3 (repeatable)")
    args = p.parse_args()
    options = training_options(args.opt)
    print(f"# {time.strftime('%Y-%m-%d')} {machine()}; network {interactive_network(False)}, "
          f"{args.epochs} epochs of training, touching={args.touching}"
          + "".join(f", {k}={v!r}" for k, v in options.items()))
    for kind in args.kinds:
        rows, lat = [], []
        for s in args.seeds:
            model = trained(kind, s, args.epochs, args.cache, **options)
            image, truth = make_nuclei((512, 512), seed=s + 100, touching=args.touching)
            ids, ious, secs, found = click_all(model, image, truth)
            touch = np.isin(ids, list(touching_ids(truth)))
            good = ious >= 0.5
            rows.append((good.sum(), ids.size, good[touch].sum(), touch.sum(), good[found].sum(), found.sum()))
            lat += secs[1:].tolist()  # the first click builds the network's prediction copy
            print(f"{kind} seed {s}: {good.mean():.3f} of {ids.size} clicks IoU>=0.5 (touching {good[touch].mean():.3f} "
                  f"of {touch.sum()}; of the {found.sum()} objects the model found {good[found].mean():.3f}), "
                  f"median IoU {np.median(ious):.3f}", flush=True)
        g, n, gt, nt, gf, nf = np.sum(rows, axis=0)
        lat = np.asarray(lat)
        print(f"{kind}: {g / n:.3f} of {n} clicks IoU>=0.5, touching {gt / max(nt, 1):.3f} of {nt}, found by the "
              f"model {gf / max(nf, 1):.3f} of {nf}; latency median {np.median(lat):.3f} s, "
              f"p95 {np.percentile(lat, 95):.3f} s", flush=True)


if __name__ == "__main__":
    main()
