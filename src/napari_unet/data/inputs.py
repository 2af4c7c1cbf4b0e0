"""What training reads: labels checked, images as lazy channels-first views, items, normalization.

`collect_annotated` validates (image, labels) pairs and keeps the items (planes of a stack for a 2D
model) that hold annotations; the label conventions are `napari_unet.conventions`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["check_labels", "ChannelsFirst", "as_channels_first", "iter_items", "compute_normalization",
           "AnnotatedItems", "collect_annotated"]


def check_labels(labels, name: str = "labels") -> np.ndarray:
    """Return labels as a signed integer numpy array, or raise a ValueError that says what is wrong."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} contain negative values: use 0 for 'not annotated' and 1, 2, ... for classes")
        if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8:
            _check_int64(arr, name)
            return arr.astype(np.int64, copy=False)
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr).all()
        if finite and np.array_equal(arr, np.round(arr)) and (arr.size == 0 or arr.min() >= 0):
            _check_int64(arr, name)
            return arr.astype(np.int64)
        raise ValueError(
            f"{name} must hold whole numbers (0 = not annotated, 1, 2, ... = classes), but they are "
            f"{arr.dtype} with non-integer values: pass a Labels layer or an integer array")
    raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")


def _check_int64(arr, name: str) -> None:
    # int64 holds the ids; larger ones would wrap to negative ids (or to 0: "no annotation") silently
    if arr.size and arr.max() >= 2**63:
        raise ValueError(f"{name} hold ids of 2**63 or more: renumber them "
                         "(e.g. skimage.segmentation.relabel_sequential)")


class ChannelsFirst:
    """A lazy view of an image with its channel axis first (a length-1 axis when it has none).

    Indexing reads only the requested region from the underlying array (numpy, dask, zarr, memmap) and
    returns numpy. It supports what the pipeline needs: integers and slices (with steps).
    """

    def __init__(self, array, channel_axis: int | None):
        _check_array(array)
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


def _check_array(image) -> None:
    """Refuse what is not an array of real numbers, before numpy or torch fail deep inside on it."""
    if not (hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__")):
        hint = ": read a file with napari_unet.io.read_image(path) first" if isinstance(image, (str, os.PathLike)) \
            else ": pass one array per image" if isinstance(image, (list, tuple)) else ""
        raise TypeError(f"an image must be an array (numpy, dask, zarr...), got {type(image).__name__}{hint}")
    if np.dtype(image.dtype).kind not in "biuf":
        raise TypeError(f"cannot use an image of dtype {image.dtype}: images must hold real numbers")
    if 0 in tuple(image.shape):  # else reported later as "no finite values" or "no annotation"
        raise ValueError(f"the image is empty (shape {tuple(image.shape)}): every axis needs at least one pixel")


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
        stride = max(1, int(np.ceil((math.prod(sp) / per_item) ** (1.0 / len(sp)))))
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




@dataclass(frozen=True)
class AnnotatedItems:
    """The annotated items of a training set (see `collect_annotated`).

    Attributes
    ----------
    items : tuple of (ChannelsFirst, ndarray, tuple)
        (channels-first image, its labels, the leading stack index of one item in both).
    classes : tuple of int
        Label values other than 0 found in the items, sorted.
    n_channels : int
        Channels of every image.
    """

    items: tuple
    classes: tuple
    n_channels: int

    @property
    def item_shapes(self) -> list:
        """Spatial shape of each item."""
        return [lab[idx].shape for _, lab, idx in self.items]


def _as_list(x, name):
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError(f"{name} is empty: give at least one array")
        return list(x)
    return [x]


def _channels_first_pair(i, img, lab, name, channel_axis):
    """The image of pair ``i`` channels first, after checking it against its labels."""
    if channel_axis is None and np.ndim(img) == lab.ndim + 1 and np.shape(img)[-1] in (3, 4) \
            and tuple(np.shape(img)[:-1]) == lab.shape:
        raise ValueError(f"image {i} looks like RGB(A) with shape {tuple(np.shape(img))}: pass "
                         "channel_axis=-1 to use its channels")
    img_cf = as_channels_first(img, channel_axis)
    if tuple(img_cf.shape[1:]) != lab.shape:
        hint = "" if channel_axis is not None else " (if the image has a channel axis, declare it with channel_axis)"
        raise ValueError(f"image {i} has spatial shape {tuple(img_cf.shape[1:])} but {name} has shape "
                         f"{lab.shape}: they must match{hint}")
    return img_cf


def collect_annotated(images, labels, dims: int, channel_axis: int | None, mode: str) -> AnnotatedItems:
    """Validate (image, labels) pairs and keep the items that hold annotations.

    Parameters
    ----------
    images, labels : array-like or list of array-like
        One labels array per image, of the image's spatial shape (spatial axes last).
    dims : {2, 3}
        Spatial axes of one item: leading axes beyond them index separate items.
    channel_axis : int or None
        The images' channel axis (never guessed).
    mode : {"semantic", "instance"}
        In semantic mode items without strokes are left out; instance labels are dense.

    Raises
    ------
    ValueError
        Saying which pair is wrong and how, or that nothing is annotated.
    """
    images, labels = _as_list(images, "images"), _as_list(labels, "labels")
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} label arrays: give one labels per image")
    out, seen, n_channels = [], set(), None
    for i, (img, lab) in enumerate(zip(images, labels)):
        name = f"labels[{i}]" if len(labels) > 1 else "labels"
        lab = check_labels(lab, name)
        img_cf = _channels_first_pair(i, img, lab, name, channel_axis)
        if n_channels is None:
            n_channels = img_cf.shape[0]
        elif img_cf.shape[0] != n_channels:
            raise ValueError(f"image {i} has {img_cf.shape[0]} channels but image 0 has {n_channels}")
        for idx in iter_items(lab.shape, dims):
            values = np.unique(lab[idx])
            values = values[values > 0]
            if mode == "semantic" and values.size == 0:
                continue
            seen.update(int(v) for v in values)
            out.append((img_cf, lab, idx))
    if not out or (mode == "instance" and not seen):
        what = "no annotation at all (every pixel is 0)" if mode == "semantic" else "no objects (every pixel is 0)"
        raise ValueError(f"the labels contain {what}: paint some {'strokes' if mode == 'semantic' else 'objects'} first")
    return AnnotatedItems(tuple(out), tuple(sorted(seen)), int(n_channels))
