"""Labels -> training targets: class indices per pixel, the border band, held-out validation blocks.

Semantic labels map painted ids to output channels (0 = not annotated -> IGNORE); instance labels become
background / interior / boundary (`napari_unet.conventions`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..conventions import IGNORE, INSTANCE_BOUNDARIES

__all__ = ["semantic_targets", "instance_targets", "add_border_band", "TrainItem", "prepare_items"]


def semantic_targets(labels: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """Map painted ids to output channels (``class_ids[k] -> k``); 0 and unknown ids -> IGNORE."""
    largest = int(max(max(class_ids), labels.max(initial=0)))
    if largest < 2**16:  # a lookup table: fastest
        lut = np.full(largest + 1, IGNORE, dtype=np.int64)
        for k, cid in enumerate(class_ids):
            lut[cid] = k
        return lut[labels]
    # a huge id (a sentinel such as 2**32 - 1) must not allocate a table that size: search the classes
    ids = np.asarray(class_ids, dtype=np.int64)
    order = np.argsort(ids)
    pos = np.clip(np.searchsorted(ids[order], labels), 0, ids.size - 1)
    return np.where(ids[order][pos] == labels, order[pos], IGNORE).astype(np.int64)


def instance_targets(labels: np.ndarray, boundary: str = "inner", spacing=None) -> np.ndarray:
    """Background (0) / interior (1) / boundary (2) from instance ids.

    Parameters
    ----------
    labels : ndarray of int
        Instance ids, 0 = background.
    boundary : {"inner", "thick", "touching"}
        How the boundary class is drawn (`napari_unet.conventions.INSTANCE_BOUNDARIES`). ``"inner"``: each
        object's inner rim, 1 px (pixels 4-connected to another id or the background), so touching objects
        are separated by two rim pixels; ``"thick"``: the inner rim 2 px wide; ``"touching"``: only the
        rim where an object touches another object (an outline against the background stays interior).
        The rim is always inside its object: prediction counts it as foreground.
    spacing : sequence of float, optional
        Voxel size per axis relative to the finest (`ModelConfig.spacing`). ``"inner"`` and ``"thick"``
        rims are then 1 and 2 px wide in units of the finest axis: along an axis whose step is longer
        (the planes of an anisotropic stack) a neighbour is too far for a rim against the background,
        and only a neighbour of another id makes a rim (touching objects stay separated).
    """
    fg = labels > 0
    lab = np.asarray(labels)
    if boundary == "touching":
        above = np.where(fg, lab, lab.max(initial=0) + 1).astype(np.int64)  # the background never the min
        low = ndi.minimum_filter(above, footprint=_cross(lab.ndim, 1))
        high = ndi.maximum_filter(lab.astype(np.int64), footprint=_cross(lab.ndim, 1))
        rim = fg & ((low < lab) | (high > lab))
    elif boundary in ("inner", "thick"):
        radius = 1 if boundary == "inner" else 2
        near = [True] * lab.ndim if spacing is None else [float(v) <= radius for v in spacing]
        foot = _cross(lab.ndim, radius)
        foot = foot[tuple(slice(None) if n else slice(radius, radius + 1) for n in near)]
        # a pixel within the footprint of another id (or the background): min or max differs from its own
        rim = fg & ((ndi.minimum_filter(lab, footprint=foot) != lab) | (ndi.maximum_filter(lab, footprint=foot) != lab))
        for axis in np.flatnonzero(~np.asarray(near)):
            rim |= _touching_along(lab, int(axis))
    else:
        raise ValueError(f"boundary must be one of {', '.join(map(repr, INSTANCE_BOUNDARIES))}, got {boundary!r}")
    out = np.zeros(labels.shape, dtype=np.int64)
    out[fg] = 1
    out[rim] = 2
    return out


def _touching_along(lab: np.ndarray, axis: int) -> np.ndarray:
    """Object pixels whose neighbour one step along ``axis`` (either side) is another object."""
    out = np.zeros(lab.shape, bool)
    a = [slice(None)] * lab.ndim
    b = [slice(None)] * lab.ndim
    a[axis], b[axis] = slice(1, None), slice(None, -1)
    hi, lo = lab[tuple(a)], lab[tuple(b)]
    differ = (hi != lo) & (hi > 0) & (lo > 0)
    out[tuple(a)] |= differ
    out[tuple(b)] |= differ
    return out


def _cross(ndim: int, radius: int) -> np.ndarray:
    """The diamond (city-block ball) of ``radius``: the pixels within ``radius`` 4-connected steps."""
    return ndi.iterate_structure(ndi.generate_binary_structure(ndim, 1), radius)


def add_border_band(target: np.ndarray, intensity: np.ndarray, width: int, background: int = 0,
                    min_contrast: float = 0.1) -> np.ndarray:
    """Label the unpainted rim around painted objects as background where the image says it is.

    People paint whole nuclei and background strokes well away from them, never the border in between;
    a network trained on that alone grows objects into the unseen rim. Each unannotated pixel within
    ``width`` px of a painted non-background region is taken as background when its intensity is closer to
    the painted background than to the object it surrounds. A stroke inside a larger object (bright all
    around) or an unpainted neighbour touching a painted nucleus is therefore left alone.

    Parameters
    ----------
    target : ndarray of int
        Class index per pixel, IGNORE where not annotated. Not modified.
    intensity : ndarray of float
        Normalized intensity (channel mean), same shape.
    width : int
        Rim width in pixels (0 disables).
    background : int
        Class index of the background.
    min_contrast : float
        Objects whose mean differs from the background mean by less than this (normalized units) get no
        rim: the intensity says nothing about where they end.
    """
    annotated_bg = target == background
    objects = (target != IGNORE) & ~annotated_bg
    if width <= 0 or not objects.any() or not annotated_bg.any():
        return target
    bg_mean = float(intensity[annotated_bg].mean())
    comps, n = ndi.label(objects)
    comp_mean = np.asarray(ndi.mean(intensity, comps, index=np.arange(1, n + 1)), dtype=np.float32)
    dist, nearest = ndi.distance_transform_edt(~objects, return_indices=True)
    band = (target == IGNORE) & (dist <= width)
    if not band.any():
        return target
    owner = comps[tuple(ix[band] for ix in nearest)]
    obj_mean = comp_mean[owner - 1]
    vals = intensity[band]
    contrast = obj_mean - bg_mean
    # closer to background than to the object, on the object's side of the midpoint
    is_bg = (np.abs(contrast) >= min_contrast) & ((vals - bg_mean) * np.sign(contrast) < 0.5 * np.abs(contrast))
    out = target.copy()
    band_idx = np.flatnonzero(band)
    out.flat[band_idx[is_bg]] = background
    return out


@dataclass
class TrainItem:
    """One training region: normalized float32 image (C, *spatial) and class targets (IGNORE = no loss)."""

    image: np.ndarray
    target: np.ndarray
    val_target: np.ndarray | None = None


def _bbox_with_margin(mask: np.ndarray, margin: Sequence[int]):
    idx = np.nonzero(mask)
    return tuple(slice(max(0, int(i.min()) - m), min(s, int(i.max()) + 1 + m))
                 for i, m, s in zip(idx, margin, mask.shape))


def _validation_blocks(shape, block: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of randomly chosen blocks (about ``fraction`` of them) held out for validation."""
    grid = tuple(max(1, -(-s // block)) for s in shape)
    chosen = rng.random(grid) < fraction
    mask = chosen
    for axis, s in enumerate(shape):
        mask = np.repeat(mask, block, axis=axis)
    return mask[tuple(slice(0, s) for s in shape)]


def prepare_items(annotated, mode: str, class_ids: Sequence[int], norm, patch_size: Sequence[int],
                  border_band: int, validation_fraction: float, rng: np.random.Generator,
                  min_validation_pixels: int = 200, boundary: str = "inner", spacing=None) -> list[TrainItem]:
    """Cut annotated regions out of items and build their targets.

    Parameters
    ----------
    annotated : sequence of (image, labels, index)
        ``image`` channels-first (lazy is fine), ``labels`` an integer numpy array of the same spatial
        shape, ``index`` the leading (stack/time) index of one item in both (`AnnotatedItems.items`).

    Only the bounding box of the annotations plus half a patch of context is kept, so a sparse
    annotation of a huge stack costs little memory. When ``validation_fraction > 0`` and there are enough
    annotations, random blocks are held out: their targets move to ``val_target``. ``boundary``,
    ``spacing``: the instance boundary class and the voxel spacing it is drawn with (`instance_targets`).
    """
    from ..model import normalize

    items = []
    margin = [p // 2 for p in patch_size]
    for image, labels, idx in annotated:
        lab = labels[idx]
        annotated_mask = lab > 0 if mode == "semantic" else np.ones(lab.shape, bool)
        box = _bbox_with_margin(annotated_mask, margin)
        lab = lab[box]
        img = normalize(np.asarray(image[(slice(None),) + idx + box]), *norm)
        if not np.isfinite(img).all():
            img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
        if mode == "semantic":
            target = semantic_targets(lab, class_ids)
            target = add_border_band(target, img.mean(axis=0), border_band, background=0)
        else:
            target = instance_targets(lab, boundary, spacing)
        items.append(TrainItem(img, target))
    if validation_fraction > 0:
        _split_validation(items, validation_fraction, len(patch_size), rng, min_validation_pixels)
    return items


def _split_validation(items, fraction, dims, rng, min_pixels):
    block = 64 if dims == 2 else 32
    n_classes = max(int(it.target.max()) for it in items) + 1
    for attempt in range(5):  # a few draws: each class must appear on both sides
        masks = [_validation_blocks(it.target.shape, block, fraction, rng) for it in items]
        val_counts = np.zeros(n_classes, int)
        train_counts = np.zeros(n_classes, int)
        for it, m in zip(items, masks):
            t = it.target
            val_counts += np.bincount(t[m & (t >= 0)], minlength=n_classes)[:n_classes]
            train_counts += np.bincount(t[~m & (t >= 0)], minlength=n_classes)[:n_classes]
        if val_counts.min() >= min_pixels // n_classes and val_counts.sum() >= min_pixels \
                and train_counts.min() > 0:
            for it, m in zip(items, masks):
                it.val_target = np.where(m, it.target, IGNORE)
                it.target = np.where(m, IGNORE, it.target)
            return
    # too few annotations to hold some out: train on everything, keep the last model


