"""Training patches: centres that prefer annotated pixels and balance classes, crops, augmentation.

Every random draw comes from the one generator given to `PatchSampler`, in a fixed order, so a seeded
run on the CPU is reproducible.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..conventions import AUGMENTATIONS, IGNORE

__all__ = ["PatchSampler", "crop_patch", "augment_patch", "augment_extra"]


def crop_patch(image: np.ndarray, target: np.ndarray, center: Sequence[int], patch_size: Sequence[int],
               rng: np.random.Generator):
    """The patch around ``center`` (jittered by up to a quarter patch), padded where the item is smaller.

    Returns
    -------
    (ndarray, ndarray)
        float32 image (C, *patch) and targets (*patch); padding carries IGNORE targets.
    """
    starts, pads = [], []
    for c, p, s in zip(center, patch_size, target.shape):
        jitter = int(rng.integers(-(p // 4), p // 4 + 1))
        start = int(c) - p // 2 + jitter
        start = min(max(start, 0), max(s - p, 0))
        starts.append(start)
        pads.append((0, max(0, p - s)))
    box = tuple(slice(st, st + p) for st, p in zip(starts, patch_size))
    img = image[(slice(None),) + box]
    tgt = target[box]
    if any(p[1] for p in pads):
        img = np.pad(img, [(0, 0)] + pads, mode="reflect" if all(s > 1 for s in img.shape[1:]) else "edge")
        tgt = np.pad(tgt, pads, constant_values=IGNORE)
    return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(tgt)


def augment_patch(img: np.ndarray, tgt: np.ndarray, rng: np.random.Generator, extra: Sequence[str] = ()):
    """Flips, 90 degree rotations in the last two axes (when square), gamma, scale/shift, noise.

    ``extra``: the optional augmentations of `augment_extra` too (none draws nothing from ``rng``, so
    runs without them are reproduced exactly).
    """
    sp = tgt.ndim
    for axis in range(sp):
        if rng.random() < 0.5:
            img, tgt = np.flip(img, axis + 1), np.flip(tgt, axis)
    if tgt.shape[-1] == tgt.shape[-2]:
        k = int(rng.integers(4))
        img, tgt = np.rot90(img, k, axes=(-2, -1)), np.rot90(tgt, k, axes=(-2, -1))
    img = np.ascontiguousarray(img)
    if extra:
        img, tgt = augment_extra(img, np.ascontiguousarray(tgt), rng, extra)
    # intensity: gamma on the normalized range, then scale/shift per channel, then noise
    if rng.random() < 0.3:
        gamma = float(np.exp(rng.uniform(-0.4, 0.4)))
        img = np.sign(img) * np.abs(img) ** gamma
    scale = rng.uniform(0.7, 1.3, size=(img.shape[0],) + (1,) * sp).astype(np.float32)
    shift = rng.uniform(-0.15, 0.15, size=(img.shape[0],) + (1,) * sp).astype(np.float32)
    img = img * scale + shift
    if rng.random() < 0.5:
        img = img + rng.normal(0, rng.uniform(0.01, 0.08), size=img.shape).astype(np.float32)
    return img.astype(np.float32, copy=False), np.ascontiguousarray(tgt)


def augment_extra(img: np.ndarray, tgt: np.ndarray, rng: np.random.Generator, names: Sequence[str]):
    """The optional augmentations (`napari_unet.conventions.AUGMENTATIONS`), each on about half the patches.

    ``"elastic"``: a smooth random deformation (displacements of up to ~4 px, interpolated from a
    3-point grid per axis), the same for image (linear) and targets (nearest); ``"blur"``: Gaussian blur of
    sigma 0.5-1.5 px; ``"contrast"``: a smooth multiplicative intensity field (about 0.7-1.4 across the
    patch), like uneven illumination. All are cheap on a CPU (docs/training-quality.md).
    """
    from scipy import ndimage as ndi

    unknown = sorted(set(names) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}: choose from {', '.join(AUGMENTATIONS)}")
    shape = tgt.shape
    if "elastic" in names and rng.random() < 0.5:
        grid = [_smooth_field(rng, shape, 2.0) for _ in shape]
        coords = np.indices(shape, dtype=np.float32) + np.stack(grid)
        img = np.stack([ndi.map_coordinates(c, coords, order=1, mode="reflect") for c in img])
        tgt = ndi.map_coordinates(tgt, coords, order=0, mode="reflect")
    if "blur" in names and rng.random() < 0.5:
        img = ndi.gaussian_filter(img, sigma=(0,) + (float(rng.uniform(0.5, 1.5)),) * len(shape))
    if "contrast" in names and rng.random() < 0.5:
        img = img * np.exp(_smooth_field(rng, shape, 0.15))[None]
    return img.astype(np.float32, copy=False), tgt


def _smooth_field(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Normal(0, sigma) values on a 3-point grid per axis, interpolated (cubic) to ``shape``: float32."""
    from scipy import ndimage as ndi

    coarse = rng.normal(0, sigma, size=(3,) * len(shape))
    return ndi.zoom(coarse, [s / 3 for s in shape], order=3, mode="nearest", grid_mode=True).astype(np.float32)


class PatchSampler:
    """Draws augmented training patches, preferring annotated pixels and balancing classes.

    Parameters
    ----------
    items : list of TrainItem
    patch_size : tuple of int
        Patch extent; the trainer may set a smaller one after running out of memory.
    rng : numpy.random.Generator
    annotated_fraction : float
        Probability that a patch is centred on an annotated pixel of a randomly chosen class.
    augment : bool
        Apply `augment_patch` to every patch.
    extra : sequence of str
        The optional augmentations to add (`augment_extra`).
    """

    def __init__(self, items, patch_size, rng, annotated_fraction: float = 0.9, augment: bool = True,
                 max_coords: int = 200_000, extra: Sequence[str] = ()):
        self.items, self.patch_size, self.rng = items, tuple(patch_size), rng
        self.annotated_fraction, self.augment, self.extra = annotated_fraction, augment, tuple(extra)
        self.n_classes = max(int(it.target.max()) for it in items) + 1
        # flat indices of annotated pixels per (class, item), subsampled to bound memory
        self.coords = [[] for _ in range(self.n_classes)]
        for i, it in enumerate(items):
            flat = it.target.ravel()
            for c in range(self.n_classes):
                where = np.flatnonzero(flat == c)
                if where.size > max_coords:
                    where = rng.choice(where, max_coords, replace=False)
                if where.size:
                    self.coords[c].append((i, where))
        self.present = [c for c in range(self.n_classes) if self.coords[c]]
        if not self.present:
            raise ValueError("no annotated pixels left for training: paint more annotations")

    def draw_center(self):
        """(item index, centre): an annotated pixel of a random class, or now and then any pixel."""
        rng = self.rng
        if rng.random() < self.annotated_fraction:
            c = self.present[rng.integers(len(self.present))]
            pools = self.coords[c]
            sizes = np.array([w.size for _, w in pools], float)
            i, where = pools[rng.choice(len(pools), p=sizes / sizes.sum())]
            flat = where[rng.integers(where.size)]
            return i, np.unravel_index(flat, self.items[i].target.shape)
        sizes = np.array([it.target.size for it in self.items], float)
        i = int(rng.choice(len(self.items), p=sizes / sizes.sum()))
        return i, tuple(int(rng.integers(s)) for s in self.items[i].target.shape)

    def sample(self, batch_size: int):
        """Return (images float32 (N, C, *patch), targets int64 (N, *patch))."""
        imgs, tgts = [], []
        for _ in range(batch_size):
            i, center = self.draw_center()
            item = self.items[i]
            img, tgt = crop_patch(item.image, item.target, center, self.patch_size, self.rng)
            if self.augment:
                img, tgt = augment_patch(img, tgt, self.rng, self.extra)
            imgs.append(img)
            tgts.append(tgt)
        return np.stack(imgs), np.stack(tgts)

    def validation_batches(self, batch_size: int, n_patches: int = 16):
        """A fixed list of (images, targets) batches over the held-out blocks (no augmentation).

        The patches come from a generator of their own, so every run validates on the same ones.
        """
        held = [it for it in self.items if it.val_target is not None and (it.val_target >= 0).any()]
        if not held:
            return []
        rng = np.random.default_rng(12345)
        patches = []
        for k in range(n_patches):
            it = held[k % len(held)]
            where = np.flatnonzero(it.val_target.ravel() >= 0)
            center = np.unravel_index(where[rng.integers(where.size)], it.val_target.shape)
            patches.append(crop_patch(it.image, it.val_target, center, self.patch_size, rng))
        return [(np.stack([p[0] for p in patches[s:s + batch_size]]),
                 np.stack([p[1] for p in patches[s:s + batch_size]]))
                for s in range(0, len(patches), batch_size)]
