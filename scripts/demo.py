#!/usr/bin/env python
"""napari-unet demo.

With a display: opens napari with the nuclei sample (an image and example strokes) and both widgets
docked, ready for Train.

Headless (``--headless``, what ``make demo`` runs without $DISPLAY): builds a 512x512 synthetic
nuclei image with painted strokes, trains a UNet on the strokes for about a minute (printing progress),
segments the image and writes to ``--out``:

* ``labels.tif``   the segmentation (written atomically: temporary name, then renamed),
* ``overlay.png``  the image with the segmentation outlines (yellow) and the strokes it learned from,
* ``model.pt``     the trained model (``napari-unet predict model.pt image.tif -o labels.tif``),

then prints the foreground IoU against the generator's ground truth, next to a global Otsu threshold.
Headless mode imports no Qt and needs no display.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--headless", action="store_true", help="no viewer: train, segment and write results")
    p.add_argument("--out", default="demo-output", help="output folder in headless mode (default: %(default)s)")
    p.add_argument("--time-budget", type=float, default=60.0, help="seconds of training (default: %(default)s)")
    p.add_argument("--size", type=int, default=512, help="side of the synthetic image (default: %(default)s)")
    p.add_argument("--depth", type=int, default=3, help="UNet depth (default: %(default)s)")
    p.add_argument("--base-channels", type=int, default=16,
                   help="feature maps of the first level (default: %(default)s; a small network trains enough "
                        "steps in a minute on a laptop CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="CPU threads for PyTorch (default: all cores but one, %(default)s here: with every core "
                        "in its pool, PyTorch's threads spin-wait whenever anything else runs, and a training "
                        "step on a busy 2-core machine was 3x slower)")
    return p.parse_args(argv)


def gui() -> int:
    """Open napari with the sample data and both widgets docked."""
    import napari

    viewer = napari.Viewer(title="napari-unet demo")
    viewer.open_sample("napari-unet", "nuclei")
    viewer.window.add_plugin_dock_widget("napari-unet", "Train UNet")
    viewer.window.add_plugin_dock_widget("napari-unet", "Segment with UNet")
    print("Press Train in the 'Train UNet' panel, then Segment in 'Segment with UNet'.")
    napari.run()
    return 0


def overlay_rgb(image, labels, strokes):
    """uint8 RGB: the image (1-99.8 percentile stretch), strokes tinted, segmentation outlines in yellow."""
    import numpy as np
    from skimage.segmentation import find_boundaries

    img = image.astype(np.float32)
    lo, hi = np.percentile(img, (1, 99.8))
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    tint = {1: (0.2, 0.4, 1.0), 2: (1.0, 0.2, 0.6)}  # background strokes blue, nucleus strokes magenta
    for value, color in tint.items():
        m = strokes == value
        rgb[m] = 0.55 * rgb[m] + 0.45 * np.asarray(color)
    edges = find_boundaries(labels, mode="inner")
    rgb[edges] = (1.0, 0.85, 0.0)
    return (rgb * 255).round().astype(np.uint8)


def write_png_atomically(path: Path, rgb) -> None:
    import imageio.v3 as iio

    from napari_unet.outputs import atomic_path

    with atomic_path(path) as tmp:  # keeps the .png extension, which imageio needs
        iio.imwrite(tmp, rgb)


def headless(args) -> int:
    """Train on synthetic strokes, segment, write the results and print the scores."""
    from napari_unet.device import thread_policy

    with thread_policy(threads=args.threads):
        return _headless_run(args)


def _headless_run(args) -> int:
    import numpy as np
    from scipy import ndimage as ndi

    import napari_unet as nu
    from napari_unet.io import LABELS_ATTRS
    from napari_unet.outputs import OutputFile
    from napari_unet.metrics import foreground_iou, matching, otsu_baseline
    from napari_unet.synthetic import make_sample

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    image, strokes, truth = make_sample((args.size, args.size), seed=args.seed)
    painted = np.count_nonzero(strokes) / strokes.size
    print(f"sample: {args.size}x{args.size} nuclei image, {int(truth.max())} nuclei, {100 * painted:.1f}% of the "
          f"pixels painted (1 = background, 2 = nucleus) [{time.perf_counter() - t0:.1f} s]")

    print(f"training a {args.depth}-level UNet ({args.base_channels} base channels) for {args.time_budget:.0f} s, "
          "semantic mode, from the strokes:")
    last, next_print = None, 0.0
    for ev in nu.iter_train([image], [strokes], mode="semantic", depth=args.depth, base_channels=args.base_channels,
                            time_budget=args.time_budget, seed=args.seed, device=args.device):
        last = ev
        if ev.kind == "start":
            print(f"  {ev.message}")
        elif ev.kind in ("step", "validation") and ev.elapsed >= next_print:
            next_print = ev.elapsed + 5.0
            val = f"  best validation {ev.best_val_loss:.4f}" if ev.best_val_loss is not None else ""
            print(f"  {ev.elapsed:5.1f} s  step {ev.step:4d}  {100 * ev.fraction:3.0f}%  loss {ev.loss:.4f}{val}",
                  flush=True)
    model = last.model
    print(f"  {last.message}")

    t1 = time.perf_counter()
    labels = nu.segment(model, image, device=args.device)
    print(f"segmented in {time.perf_counter() - t1:.1f} s")

    with OutputFile(out / "labels.tif", labels.shape, labels.dtype, attrs=LABELS_ATTRS) as f:
        f.array[...] = labels
    write_png_atomically(out / "overlay.png", overlay_rgb(image, labels, strokes))
    nu.save_model(model, out / "model.pt")

    otsu = otsu_baseline(image)
    iou, iou_otsu = foreground_iou(truth, labels), foreground_iou(truth, otsu)
    f1 = matching(truth, ndi.label(labels > 0)[0])["f1"]
    f1_otsu = matching(truth, otsu)["f1"]
    print(f"wrote {out / 'labels.tif'}, {out / 'overlay.png'}, {out / 'model.pt'}")
    print(f"foreground IoU vs ground truth: UNet {iou:.3f}   Otsu baseline {iou_otsu:.3f}")
    print(f"object F1 at IoU 0.5 (connected components): UNet {f1:.3f}   Otsu baseline {f1_otsu:.3f}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.headless:
        return headless(args)
    return gui()


if __name__ == "__main__":
    sys.exit(main())
