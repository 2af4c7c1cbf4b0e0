"""Click post-processing variants on the same clicks: which way of picking the one object under a click works.

Loads the models `clicks.py --cache` trained, computes each click's window probabilities once (what
`segment_at` does), then applies every variant to those same probabilities, so the variants are compared
on identical model outputs. Reports, per model kind and variant, the fraction of clicks with IoU >= 0.5
(each seed's in brackets), why the failed clicks fail, and the post-processing's time per click
(the variants interleaved click by click, so the machine's load hits them alike).

Usage: python benchmarks/clicks_variants.py --cache /tmp/click-models16 --epochs 16 [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import os
import pickle
import time

import numpy as np
from scipy import ndimage as ndi

from napari_unet import interactive
from napari_unet.postprocess import instance_labels, semantic_labels, split_objects
from napari_unet.predict import predict
from napari_unet.synthetic import make_nuclei

from _common import machine
from clicks import interior_points, trained


def windows(model, image, truth, path=None):
    """Per click: (window probabilities, the click in the window, the true object in the window)."""
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    ids, points = interior_points(truth)
    out = []
    for i, p in zip(ids, points):
        key = interactive.window_around(p, image.shape, interactive.default_window(2))
        prob = predict(model, image[key], tile=None, device="cpu")
        local = tuple(int(q) - k.start for q, k in zip(p, key))
        out.append((prob.astype(np.float16), local, truth[key] == i))
    if path:
        with open(path, "wb") as f:
            pickle.dump(out, f)
    return out


# ---------------------------------------------------------------- variants: (prob, class_ids, point) -> mask
def semantic_split(h, sigma=0.5):
    def fn(prob, class_ids, point):
        labels = semantic_labels(prob, class_ids)
        v = labels[point]
        if not v:
            return np.zeros(labels.shape, bool)
        # the connected region under the click alone, with 3 px of margin (as one_object did before)
        components, _ = ndi.label(labels == v)
        region = components == components[point]
        box = tuple(slice(max(0, b.start - 3), b.stop + 3) for b in ndi.find_objects(region.astype(np.int8))[0])
        parts = split_objects(region[box], h=h, sigma=sigma)
        mask = np.zeros(labels.shape, bool)
        mask[box] = parts == parts[tuple(p - b.start for p, b in zip(point, box))]
        return mask
    return fn


def instance_split(h):
    def fn(prob, class_ids, point):
        labels = instance_labels(prob, h=h)
        return (labels == labels[point]) & (labels[point] > 0)
    return fn


def semantic_click(h):
    """What `one_object` does (h = SPLIT_HEIGHT): `split_at` of the clicked class's region."""
    def fn(prob, class_ids, point):
        labels = semantic_labels(prob, class_ids)
        v = labels[point]
        return interactive.split_at(labels == v, point, h) if v else np.zeros(labels.shape, bool)
    return fn


def with_reach(fn, reach):
    """``fn`` with `interactive.CLICK_REACH` set to ``reach`` while it runs."""
    def run(prob, class_ids, point):
        saved, interactive.CLICK_REACH = interactive.CLICK_REACH, reach
        try:
            return fn(prob, class_ids, point)
        finally:
            interactive.CLICK_REACH = saved
    return run


def semantic_fallback(inner, low=0.1):
    """``inner``, or where the click is background: the region around it where the foreground is at least
    half as likely as at the click (when that is at least ``low``), split the same way."""
    def fn(prob, class_ids, point):
        mask = inner(prob, class_ids, point)
        if mask.any() or 1 - prob[0][point] < low:
            return mask
        fg = 1 - prob[0]
        return interactive.split_at(fg >= fg[point] / 2, point)
    return fn


def instance_click(prob, class_ids, point):
    """What `one_object` does for an instance model: `split_at` of the interior, grown over the rim."""
    return interactive.one_object(prob, "instance", class_ids, point)[0]


def instance_calibrated(prob, class_ids, point):
    """The kept instance path on probabilities whose background is rescaled to the window's own levels:
    the foreground threshold is halfway between the median background probability of the pixels the
    model calls background and of those it calls foreground (0.5 for a confident model; higher for an
    under-trained one whose background is 0.87, not 1), clipped to [0.5, 0.8]."""
    fg = np.argmax(prob, axis=0) > 0
    if fg.all() or not fg.any():
        return instance_click(prob, class_ids, point)
    t = float(np.clip((np.median(prob[0][~fg]) + np.median(prob[0][fg])) / 2, 0.5, 0.8))
    # the same decision at threshold t: background scaled so that t becomes 0.5 (the rest renormalized)
    scaled = prob.copy()
    scaled[0] = prob[0] * 0.5 / t
    rest = np.clip(1 - scaled[0], 0, None) / np.maximum(prob[1] + prob[2], 1e-6)
    scaled[1:] = prob[1:] * rest
    return instance_click(scaled, class_ids, point)


VARIANTS = {
    "semantic": {"split h=0.25": semantic_split(0.25), "split h=0.5": semantic_split(0.5),
                 "click split h=0.1": semantic_click(0.1), "click split h=0.25 (one_object)": semantic_click(0.25),
                 **{f"click split h=0.25 reach={r}": with_reach(semantic_click(0.25), r) for r in (0.5, 0.7)},
                 "split h=0.25 + fallback": semantic_fallback(semantic_split(0.25)),
                 "click split h=0.25 + fallback": semantic_fallback(semantic_click(0.25))},
    "instance": {"instance_labels h=0.1": instance_split(0.1), "instance_labels h=0.25": instance_split(0.25),
                 "click split h=0.25 (one_object)": instance_click,
                 "click split + calibrated background threshold": instance_calibrated,
                 **{f"click split h=0.25 reach={r}": with_reach(instance_click, r) for r in (0.5, 0.7)}},
}


def why(mask, obj):
    if not mask.any():
        return "empty (background at the click)"
    inter = (mask & obj).sum()
    if mask.sum() > 1.5 * obj.sum():
        return "merged (mask > 1.5x the object)"
    if inter < 0.5 * obj.sum():
        return "part (mask < half the object)"
    return "other"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--cache", required=True)
    p.add_argument("--touching", type=float, default=0.6)
    p.add_argument("--kinds", nargs="+", choices=["semantic", "instance"], default=["semantic", "instance"])
    p.add_argument("--only", nargs="*", default=None, help="variant names to run (default all)")
    args = p.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} {machine()}; {args.epochs} epochs, touching={args.touching}")
    for kind in args.kinds:
        per, reasons, seconds = {}, {}, {}
        names = {n: f for n, f in VARIANTS[kind].items() if not args.only or n in args.only}
        for s in args.seeds:
            model = trained(kind, s, args.epochs, args.cache)
            image, truth = make_nuclei((512, 512), seed=s + 100, touching=args.touching)
            clicks = windows(model, image, truth, os.path.join(args.cache, f"windows-{kind}-{s}-e{args.epochs}.pkl"))
            good = {name: [] for name in names}
            for prob, point, obj in clicks:  # the variants interleaved click by click: their times pair up
                prob = prob.astype(np.float32)
                for name, fn in names.items():
                    t0 = time.perf_counter()
                    mask = fn(prob, model.config.class_ids, point)
                    seconds.setdefault(name, []).append(time.perf_counter() - t0)
                    iou = (mask & obj).sum() / max((mask | obj).sum(), 1)
                    good[name].append(iou >= 0.5)
                    if iou < 0.5:
                        r = why(mask, obj)
                        reasons.setdefault(name, {}).setdefault(r, 0)
                        reasons[name][r] += 1
            for name in names:
                per.setdefault(name, []).append(np.asarray(good[name]))
        for name, goods in per.items():
            allg = np.concatenate(goods)
            print(f"{kind:8s} {name:34s} {allg.mean():.3f} of {allg.size}  (seeds "
                  + ", ".join(f"{g.mean():.3f}" for g in goods) + f"), post-processing median "
                  f"{1000 * np.median(seconds[name]):.1f} ms, p95 {1000 * np.percentile(seconds[name], 95):.1f} ms", flush=True)
            print(f"{kind:8s} {'':34s} failures: {reasons.get(name, {})}", flush=True)


if __name__ == "__main__":
    main()
