"""What a package says about its model: sizes and halo, name, description, README, cover."""
from __future__ import annotations

import re

import numpy as np

from ..conventions import BACKGROUND
from ..model import Model

__all__ = ["declared_halo", "valid_sizes", "default_name", "default_description", "identifier", "readme_text",
           "cover_image"]


def declared_halo(model: Model) -> int:
    """The halo a tiling consumer should crop: napari-unet's own default (`predict.plan.default_halo`).

    2D: the exact halo (tiled == whole image). 3D: a smaller one, as napari-unet itself uses there.
    """
    from ..predict.plan import default_halo

    return int(default_halo(model))


def valid_sizes(model: Model) -> tuple[int, int]:
    """(min, step) of each spatial input axis: multiples of ``2**depth`` larger than twice the halo."""
    step = 2**model.depth
    return 2 * declared_halo(model) + step, step


def default_name(model: Model) -> str:
    c = model.config
    classes = ", ".join(n for n in c.class_names if n != "background")
    name = f"napari-unet {c.dims}D {c.mode} UNet ({classes})" if classes else f"napari-unet {c.dims}D {c.mode} UNet"
    name = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", name)  # the spec's alphabet for names
    return name if len(name) <= 64 else name[:63].rstrip(" -") + ")"  # the zoo warns above 64 characters


def default_description(model: Model) -> str:
    c = model.config
    what = ("semantic segmentation into " + ", ".join(c.class_names) if c.mode == "semantic" else
            "instance segmentation (background / interior / boundary probabilities; objects are separated by a "
            "seeded watershed in napari-unet)")
    trained = (f"trained on painted annotations in napari-unet for {c.trained_steps} steps ({c.trained_seconds:.0f} s)"
               if c.trained_steps else "not trained yet")
    return (f"A {c.dims}D UNet (depth {c.depth}, {c.base_channels} base channels) for {what}, {trained}. "
            "Outputs class probabilities.")


def identifier(names) -> list[str]:
    """Channel names as the spec wants them (identifiers), unique: 'class 2' -> 'class_2'."""
    out = []
    for k, n in enumerate(names):
        ident = re.sub(r"\W+", "_", str(n)).strip("_").lower() or f"class{k}"
        if not ident[0].isalpha():
            ident = f"c{ident}"
        while ident in out:
            ident = f"{ident}_{k}"
        out.append(ident)
    return out


def readme_text(model: Model) -> str:
    """The package's documentation (README.md), with the '# Validation' section the zoo asks for."""
    c = model.config
    low, step = valid_sizes(model)
    lines = [
        f"# {default_name(model)}", "", default_description(model), "",
        "Exported by napari-unet as a bioimage.io model package (format 0.5).", "",
        "## Inputs", "",
        f"- `raw`: axes batch, channel ({c.in_channels}), {', '.join('zyx'[3 - c.dims:])}; any intensities.",
        f"- Valid sizes: at least {low} pixels per spatial axis, in steps of {step}.",
        "- Preprocessing: fixed linear scaling per channel, mapping the intensities "
        f"{[round(float(v), 4) for v in c.norm_low]} to 0 and {[round(float(v), 4) for v in c.norm_high]} to 1 "
        "(the percentiles napari-unet stored at training time).", "",
        "## Outputs", "",
        f"- `probabilities`: one channel per class ({', '.join(c.class_names)}), softmax included in the network.",
        f"- Halo: {declared_halo(model)} pixels to crop from each side of a tile when tiling.",
    ]
    if c.mode == "instance":
        lines.append("- Instances: napari-unet separates objects with a seeded watershed on these probabilities; "
                     "other tools give the three class maps only.")
    lines += [
        "", "## Use", "",
        "- napari-unet: `napari-unet predict this.zip image.tif -o labels.tif`, or **Load model…** in napari.",
        "- bioimageio.core: `bioimageio predict this.zip ...`; ilastik (neural network workflow) and deepImageJ "
        "(TorchScript weights) open the package as well.", "",
        "## Validation", "",
        (f"Trained for {c.trained_steps} steps ({c.trained_seconds:.0f} s, patch {c.patch_size}, batch "
         f"{c.batch_size}); best loss on held-out annotated blocks: {c.best_val_loss}." if c.trained_steps else
         "This model was not trained."),
        "", "The held-out blocks come from the same images as the training strokes, so this is no independent "
        "validation: check the segmentation of new images before relying on it.",
    ]
    return "\n".join(lines) + "\n"


def cover_image(path, raw: np.ndarray, prob: np.ndarray, model: Model) -> None:
    """A PNG (2:1): the test input beside it with its segmentation overlaid (middle plane of a 3D input)."""
    import imageio.v3 as iio

    img = raw[0] if model.dims == 2 else raw[0, raw.shape[1] // 2]
    cls = np.argmax(prob if model.dims == 2 else prob[:, prob.shape[1] // 2], axis=0)
    lo, hi = np.percentile(img, (1, 99.8))
    gray = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    ids = list(model.config.class_ids)
    # the channel left uncoloured: instance channel 0, or the semantic background class (if painted)
    background = 0 if model.mode == "instance" else ids.index(BACKGROUND) if BACKGROUND in ids else -1
    palette = np.array([[1.0, 0.2, 0.2], [0.2, 1.0, 0.3], [0.3, 0.5, 1.0], [1.0, 0.9, 0.2], [0.9, 0.3, 1.0]])
    overlay = rgb.copy()
    for k in range(prob.shape[0]):
        if k != background:
            mask = cls == k
            overlay[mask] = 0.45 * rgb[mask] + 0.55 * palette[(k - 1) % len(palette)]
    both = np.concatenate([rgb, overlay], axis=1)
    iio.imwrite(path, (both * 255).round().astype(np.uint8))
