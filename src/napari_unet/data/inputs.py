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

__all__ = ["check_labels", "ChannelsFirst", "PlaneContext", "as_channels_first", "iter_items", "compute_normalization",
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
        self.channels = self.shape[0]  # the image's own (a `PlaneContext` has more in ``shape[0]``)

    def __getitem__(self, key):
        key = _full_key(key, self.ndim)
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


def _full_key(key, ndim: int) -> tuple:
    """An index as one entry per axis (Ellipsis expanded, missing trailing axes as full slices)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    return key + (slice(None),) * (ndim - len(key))


class PlaneContext:
    """A channels-first stack whose every plane also carries its ``planes`` neighbours on each side as channels.

    For a 2D model that reads a plane of a z-stack together with the planes above and below it (2.5D):
    channel ``j * C + c`` of plane ``z`` is channel ``c`` of plane ``z + j - planes``, the first and last
    planes repeated beyond the stack's ends. The planes are those of the axis just before the two
    spatial axes (Z of ``(C, Z, Y, X)``; of ``(C, T, Z, Y, X)`` too). Lazy like `ChannelsFirst`: an
    index reads only the planes it needs.
    """

    def __init__(self, base: ChannelsFirst, planes: int):
        if base.ndim < 4:
            raise ValueError(f"this model reads each plane with its {planes} neighbouring plane(s) on each side "
                             f"(context_planes={planes}): give it a stack (Z, Y, X), not an image of shape "
                             f"{tuple(base.shape[1:])}")
        self.base, self.planes = base, int(planes)
        self.shape = (base.shape[0] * (2 * self.planes + 1),) + tuple(base.shape[1:])
        self.dtype, self.ndim = base.dtype, base.ndim
        self.array, self.axis, self.channels = base.array, base.axis, base.channels  # as on `ChannelsFirst`

    def __getitem__(self, key):
        key = _full_key(key, self.ndim)
        axis, depth, k = self.ndim - 3, self.shape[self.ndim - 3], self.planes
        z = key[axis]
        wanted = np.arange(depth)[z] if isinstance(z, slice) else np.array([range(depth)[z]])
        if wanted.size == 0:  # an empty selection of planes: empty, with the channels of a full one
            block = np.asarray(self.base[(slice(None),) + key[1:]])
            return np.concatenate([block] * (2 * k + 1))[key[0]]
        low, high = max(int(wanted.min()) - k, 0), min(int(wanted.max()) + k, depth - 1)
        inner = key[1:axis] + (slice(low, high + 1),) + key[axis + 1:]
        block = np.asarray(self.base[(slice(None),) + inner])  # (C, ..., planes low..high, ...)
        at = sum(1 for i in key[1:axis] if isinstance(i, slice)) + 1  # where the planes are in ``block``
        neighbours = np.clip(wanted[:, None] + np.arange(-k, k + 1)[None], 0, depth - 1) - low
        out = np.take(block, neighbours, axis=at)  # (C, ..., wanted, 2k + 1, ...)
        out = np.moveaxis(out, at + 1, 0)  # (2k + 1, C, ..., wanted, ...): offset-major channels
        out = out.reshape((-1,) + out.shape[2:])
        if not isinstance(z, slice):
            out = np.take(out, 0, axis=at)
        return out[key[0]]

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


def as_channels_first(image, channel_axis: int | None, context_planes: int = 0):
    """A lazy channels-first view of ``image`` (see `ChannelsFirst`); with ``context_planes``, each plane
    also carries that many neighbouring planes on each side as channels (see `PlaneContext`)."""
    view = ChannelsFirst(image, channel_axis)
    return PlaneContext(view, context_planes) if context_planes else view


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


def _channels_first_pair(i, img, lab, name, channel_axis, context_planes=0):
    """The image of pair ``i`` channels first, after checking it against its labels."""
    if channel_axis is None and np.ndim(img) == lab.ndim + 1 and np.shape(img)[-1] in (3, 4) \
            and tuple(np.shape(img)[:-1]) == lab.shape:
        raise ValueError(f"image {i} looks like RGB(A) with shape {tuple(np.shape(img))}: pass "
                         "channel_axis=-1 to use its channels")
    img_cf = as_channels_first(img, channel_axis, context_planes)
    if tuple(img_cf.shape[1:]) != lab.shape:
        hint = "" if channel_axis is not None else " (if the image has a channel axis, declare it with channel_axis)"
        raise ValueError(f"image {i} has spatial shape {tuple(img_cf.shape[1:])} but {name} has shape "
                         f"{lab.shape}: they must match{hint}")
    return img_cf


def collect_annotated(images, labels, dims: int, channel_axis: int | None, mode: str,
                      context_planes: int = 0) -> AnnotatedItems:
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
        In semantic mode items without strokes are left out; instance labels are dense within an item,
        and the planes (items) of a stack that hold no object are left out as not annotated.
    context_planes : int
        A 2D model's neighbouring planes on each side read with each plane (`PlaneContext`); 0: none.

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
        img_cf = _channels_first_pair(i, img, lab, name, channel_axis, context_planes)
        if n_channels is None:
            n_channels = img_cf.shape[0]
        elif img_cf.shape[0] != n_channels:
            raise ValueError(f"image {i} has {img_cf.shape[0]} channels but image 0 has {n_channels}")
        for idx in iter_items(lab.shape, dims):
            values = np.unique(lab[idx])
            values = values[values > 0]
            # a plane of a stack without objects was most likely not annotated (a user paints a few
            # planes of a z-stack): left out, like an item without strokes; a whole image is kept as is
            if values.size == 0 and (mode == "semantic" or idx):
                continue
            seen.update(int(v) for v in values)
            out.append((img_cf, lab, idx))
    if not out or (mode == "instance" and not seen):
        what = "no annotation at all (every pixel is 0)" if mode == "semantic" else "no objects (every pixel is 0)"
        raise ValueError(f"the labels contain {what}: paint some {'strokes' if mode == 'semantic' else 'objects'} first")
    return AnnotatedItems(tuple(out), tuple(sorted(seen)), int(n_channels))
