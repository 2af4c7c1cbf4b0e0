"""From (image, labels) pairs to training data: validation, targets, patches and augmentation.

Label conventions (see DESIGN.md):

* ``semantic`` (sparse strokes): 0 = not annotated (ignored by the loss), 1..K = classes, 1 = background.
* ``instance`` (dense masks): 0 = background, every other id one object. The network learns three
  classes, background / interior / boundary, from which `postprocess` rebuilds separate objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "IGNORE", "INSTANCE_CLASSES", "check_labels", "ChannelsFirst", "as_channels_first", "iter_items",
    "compute_normalization", "semantic_targets", "instance_targets", "add_border_band",
    "TrainItem", "prepare_items", "PatchSampler",
]

IGNORE = -1
INSTANCE_CLASSES = ("background", "interior", "boundary")


def check_labels(labels, name: str = "labels") -> np.ndarray:
    """Return labels as a signed integer numpy array, or raise a ValueError that says what is wrong."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} contain negative values: use 0 for 'not annotated' and 1, 2, ... for classes")
        return arr.astype(np.int64, copy=False) if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8 else arr
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr).all()
        if finite and np.array_equal(arr, np.round(arr)) and (arr.size == 0 or arr.min() >= 0):
            return arr.astype(np.int64)
        raise ValueError(
            f"{name} must hold whole numbers (0 = not annotated, 1, 2, ... = classes), but they are "
            f"{arr.dtype} with non-integer values: pass a Labels layer or an integer array")
    raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")


class ChannelsFirst:
    """A lazy view of an image with its channel axis first (a length-1 axis when it has none).

    Indexing reads only the requested region from the underlying array (numpy, dask, zarr, memmap) and
    returns numpy. It supports what the pipeline needs: integers and slices (with steps).
    """

    def __init__(self, array, channel_axis: int | None):
        self.array = array
        shape = tuple(int(s) for s in np.shape(array))
        if channel_axis is None:
            self.axis = None
            self.shape = (1,) + shape
        else:
            if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
                raise TypeError(f"channel_axis must be an integer or None, got {channel_axis!r}")
            if not -len(shape) <= channel_axis < len(shape):
                raise ValueError(f"channel_axis={channel_axis} is out of range for an image with {len(shape)} axes")
            self.axis = int(channel_axis) % len(shape)
            self.shape = (shape[self.axis],) + shape[: self.axis] + shape[self.axis + 1:]
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        c, rest = key[0], key[1:]
        if self.axis is None:
            block = np.asarray(self.array[rest])
            return block[None][c] if isinstance(c, slice) else block if c in (0, -1) else block[None][c]
        full = list(rest)
        full.insert(self.axis, c)
        block = np.asarray(self.array[tuple(full)])
        if isinstance(c, slice):
            pos = sum(1 for k in full[: self.axis] if isinstance(k, slice))
            block = np.moveaxis(block, pos, 0)
        return block

    def __array__(self, dtype=None, copy=None):
        block = self[...]
        return block if dtype is None else block.astype(dtype)

    def __len__(self):
        return self.shape[0]


def as_channels_first(image, channel_axis: int | None) -> ChannelsFirst:
    """A lazy channels-first view of ``image`` (see `ChannelsFirst`)."""
    return ChannelsFirst(image, channel_axis)


def iter_items(spatial_shape: Sequence[int], dims: int):
    """Index tuples of the leading (stack/time) axes: a 2D model sees each plane of a stack as one item."""
    if len(spatial_shape) < dims:
        raise ValueError(
            f"a {dims}D model needs images with at least {dims} spatial axes, got shape {tuple(spatial_shape)}")
    lead = tuple(spatial_shape[: len(spatial_shape) - dims])
    return [idx for idx in np.ndindex(*lead)] if lead else [()]


def compute_normalization(items: Sequence, low_pct: float = 1.0, high_pct: float = 99.8,
                          max_values: int = 2_000_000):
    """Per-channel percentiles over a strided subsample of items.

    Parameters
    ----------
    items : sequence of (ChannelsFirst, index)
        Channels-first images and the leading index of one item in each; only a strided subsample of
        each item is read.

    Returns
    -------
    (list of float, list of float)
        Intensities to map to 0 and to 1.
    """
    n_channels = items[0][0].shape[0]
    per_item = max(1, max_values // max(1, len(items)))
    samples = [[] for _ in range(n_channels)]
    for img, idx in items:
        sp = img.shape[1 + len(idx):]
        stride = max(1, int(np.ceil((np.prod(sp) / per_item) ** (1.0 / len(sp)))))
        block = np.asarray(img[(slice(None),) + tuple(idx) + (slice(None, None, stride),) * len(sp)])
        for c in range(n_channels):
            vals = block[c].astype(np.float64).ravel()
            samples[c].append(vals[np.isfinite(vals)])
    low, high = [], []
    for c in range(n_channels):
        vals = np.concatenate(samples[c])
        if vals.size == 0:
            raise ValueError("the image has no finite values (all NaN or inf): check the input file")
        lo, hi = np.percentile(vals, [low_pct, high_pct])
        if hi <= lo:  # flat channel: keep it finite and centred
            hi = lo + 1.0
        low.append(float(lo))
        high.append(float(hi))
    return low, high


def semantic_targets(labels: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """Map painted ids to output channels (``class_ids[k] -> k``); 0 and unknown ids -> IGNORE."""
    lut = np.full(int(max(max(class_ids), labels.max(initial=0))) + 1, IGNORE, dtype=np.int64)
    for k, cid in enumerate(class_ids):
        lut[cid] = k
    return lut[labels]


def instance_targets(labels: np.ndarray) -> np.ndarray:
    """Background (0) / interior (1) / boundary (2) from instance ids.

    The boundary is each object's inner rim (pixels touching another id or background), so touching
    objects are separated by two rim pixels that the network learns to find.
    """
    from skimage.segmentation import find_boundaries

    fg = labels > 0
    rim = find_boundaries(labels, mode="inner", connectivity=1) & fg
    out = np.zeros(labels.shape, dtype=np.int64)
    out[fg] = 1
    out[rim] = 2
    return out


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
                  min_validation_pixels: int = 200) -> list[TrainItem]:
    """Cut annotated regions out of items and build their targets.

    Parameters
    ----------
    annotated : list of (image, labels, index)
        ``image`` channels-first (lazy is fine), ``labels`` an integer numpy array of the same spatial
        shape, ``index`` the leading (stack/time) index of one item in both.

    Only the bounding box of the annotations plus half a patch of context is kept, so a sparse
    annotation of a huge stack costs little memory. When ``validation_fraction > 0`` and there are enough
    annotations, random blocks are held out: their targets move to ``val_target``.
    """
    from .model import normalize

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
            target = instance_targets(lab)
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


class PatchSampler:
    """Draws augmented training patches, preferring annotated pixels and balancing classes.

    Parameters
    ----------
    items : list of TrainItem
    patch_size : tuple of int
    rng : numpy.random.Generator
    annotated_fraction : float
        Probability that a patch is centred on an annotated pixel of a randomly chosen class.
    augment : bool
        Flips, 90 degree rotations in the last two axes (when square), intensity scale/shift/gamma, noise.
    """

    def __init__(self, items, patch_size, rng, annotated_fraction: float = 0.9, augment: bool = True,
                 max_coords: int = 200_000):
        self.items, self.patch_size, self.rng = items, tuple(patch_size), rng
        self.annotated_fraction, self.augment = annotated_fraction, augment
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

    def _center(self):
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
            i, center = self._center()
            img, tgt = self._crop(self.items[i], center, self.items[i].target)
            if self.augment:
                img, tgt = self._augment(img, tgt)
            imgs.append(img)
            tgts.append(tgt)
        return np.stack(imgs), np.stack(tgts)

    def _crop(self, item: TrainItem, center, target):
        shape = target.shape
        starts, pads = [], []
        for c, p, s in zip(center, self.patch_size, shape):
            jitter = int(self.rng.integers(-(p // 4), p // 4 + 1))
            start = int(c) - p // 2 + jitter
            start = min(max(start, 0), max(s - p, 0))
            starts.append(start)
            pads.append((0, max(0, p - s)))
        box = tuple(slice(st, st + p) for st, p in zip(starts, self.patch_size))
        img = item.image[(slice(None),) + box]
        tgt = target[box]
        if any(p[1] for p in pads):
            img = np.pad(img, [(0, 0)] + pads, mode="reflect" if all(
                s > 1 for s in img.shape[1:]) else "edge")
            tgt = np.pad(tgt, pads, constant_values=IGNORE)
        return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(tgt)

    def _augment(self, img, tgt):
        rng = self.rng
        sp = tgt.ndim
        for axis in range(sp):
            if rng.random() < 0.5:
                img, tgt = np.flip(img, axis + 1), np.flip(tgt, axis)
        if tgt.shape[-1] == tgt.shape[-2]:
            k = int(rng.integers(4))
            img, tgt = np.rot90(img, k, axes=(-2, -1)), np.rot90(tgt, k, axes=(-2, -1))
        img = np.ascontiguousarray(img)
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

    def validation_batches(self, batch_size: int, n_patches: int = 16):
        """A fixed list of (images, targets) batches over the held-out blocks (no augmentation)."""
        held = [(i, it) for i, it in enumerate(self.items) if it.val_target is not None
                and (it.val_target >= 0).any()]
        if not held:
            return []
        rng = np.random.default_rng(12345)
        patches = []
        for k in range(n_patches):
            i, it = held[k % len(held)]
            where = np.flatnonzero(it.val_target.ravel() >= 0)
            center = np.unravel_index(where[rng.integers(where.size)], it.val_target.shape)
            saved, self.rng = self.rng, rng
            try:
                patches.append(self._crop(it, center, it.val_target))
            finally:
                self.rng = saved
        return [(np.stack([p[0] for p in patches[s:s + batch_size]]),
                 np.stack([p[1] for p in patches[s:s + batch_size]]))
                for s in range(0, len(patches), batch_size)]
