"""Interactive segmentation without a viewer: click to segment, and corrections back into training labels.

`segment_at` is what a click in the viewer does: segment a window around a point and return the one
object found there. `to_training_labels` turns a (corrected) segmentation into labels to train on,
marking as background only the parts the model has looked at (`region_box` boxes).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .conventions import BACKGROUND, NOT_ANNOTATED

__all__ = ["SegmentHit", "segment_at", "one_object", "split_at", "window_around", "default_window", "DEFAULT_WINDOW_2D",
           "DEFAULT_WINDOW_3D", "region_box", "to_training_labels"]

#: A click splits harder than `segment` (`napari_unet.postprocess.split_objects`): the height, in px of
#: distance, a blob's centre must stand above its neck to be an object of its own, and the smoothing of
#: the distance map. A person points at one object; a network trained for a minute often bridges two
#: touching nuclei (benchmarks/clicks.py: h=1 gave 0.83-0.87 of clicks one object, 0.25 gives 0.96+).
SPLIT_HEIGHT = 0.25
SPLIT_SIGMA = 0.5
#: `split_at`: the seeds within this fraction of the clicked object's inscribed radius of its centre are
#: its own (benchmarks/results/clicks.md: 0.7 kept; 1.0 merges more neighbours, 0.5 splits more).
CLICK_REACH = 0.7

#: Window segmented around a click by a 2D model (rows, columns of the clicked plane)...
DEFAULT_WINDOW_2D = (256, 256)
#: ...and by a 3D model (planes, rows, columns): one forward pass, within the click latency target.
DEFAULT_WINDOW_3D = (32, 128, 128)


@dataclass(frozen=True)
class SegmentHit:
    """The object found at a point.

    Attributes
    ----------
    mask : ndarray of bool
        The object inside the window (the window's shape: the model's spatial axes); all False when
        the point is background.
    origin : tuple of int
        Position of the window's first pixel in the image's spatial coordinates, leading stack/time
        indices included (so ``image[origin[:-mask.ndim] + window slices]`` is the window).
    value : int
        Class id (semantic model, as written in segmentations) under the point, or 1 for an instance
        model's object; 0 for background.
    seconds : float
        Time the call took (reading the window included).
    """

    mask: np.ndarray
    origin: tuple
    value: int
    seconds: float

    @property
    def key(self) -> tuple:
        """Index of the window in the image's spatial axes (leading indices, then slices)."""
        n_lead = len(self.origin) - self.mask.ndim
        lead = tuple(self.origin[:n_lead])
        return lead + tuple(slice(a, a + s) for a, s in zip(self.origin[n_lead:], self.mask.shape))


def default_window(dims: int) -> tuple:
    """The window `segment_at` uses for a model of ``dims`` spatial axes."""
    return DEFAULT_WINDOW_2D if dims == 2 else DEFAULT_WINDOW_3D


def window_around(point: Sequence[int], shape: Sequence[int], window: Sequence[int]) -> tuple:
    """The window of size ``window`` around ``point``, moved (not cut) to lie inside ``shape``.

    Parameters
    ----------
    point : sequence of int
        A pixel of an array of ``shape``.
    shape : sequence of int
        Spatial shape of the image.
    window : sequence of int
        Window size over the last ``len(window)`` axes; an axis shorter than its window is taken whole.
        The leading axes are the point's indices.

    Returns
    -------
    tuple
        The leading indices (ints) followed by one slice per window axis: an index into the image.
    """
    try:  # a click's coordinates: numbers (floats are rounded down, as napari's cursor is), finite
        point = [int(p) for p in point]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"the point must be a sequence of finite numbers, one per spatial axis, got {point!r}") \
            from None
    shape, window = [int(s) for s in shape], [int(w) for w in window]
    if len(point) != len(shape):
        raise ValueError(f"the point {tuple(point)} needs one coordinate per spatial axis of shape {tuple(shape)}")
    if any(not 0 <= p < s for p, s in zip(point, shape)):
        raise ValueError(f"the point {tuple(point)} is outside the image of shape {tuple(shape)}")
    if not 0 < len(window) <= len(shape) or any(w < 1 for w in window):
        raise ValueError(f"window={tuple(window)} must give a positive size for each of the model's axes")
    n_lead = len(shape) - len(window)
    key = list(point[:n_lead])
    for p, s, w in zip(point[n_lead:], shape[n_lead:], window):
        w = min(w, s)
        start = min(max(p - w // 2, 0), s - w)
        key.append(slice(start, start + w))
    return tuple(key)


def _resolve_window(window, dims: int) -> tuple:
    if window is None:
        return default_window(dims)
    if isinstance(window, (int, np.integer)) and not isinstance(window, bool):
        return (int(window),) * dims
    window = tuple(window) if isinstance(window, (tuple, list, np.ndarray)) else (window,)
    if len(window) != dims or not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) for w in window):
        raise ValueError(f"window must be an integer or {dims} integers for a {dims}D model, got {window!r}")
    return tuple(int(w) for w in window)


def segment_at(model, image, point, *, window=None, device="auto", channel_axis=None) -> SegmentHit:
    """Segment a window around ``point`` and return the object there (what a click in the viewer does).

    Parameters
    ----------
    model : napari_unet.Model
    image : array-like
        numpy, dask, zarr...; spatial axes last. Only the window is read.
    point : sequence of int
        Pixel coordinates over the image's spatial axes (a stack's plane index included for a 2D
        model on a stack).
    window : int or tuple of int, optional
        Size of the window over the model's axes (an int: the same on each). Default
        `DEFAULT_WINDOW_2D` for 2D models, `DEFAULT_WINDOW_3D` for 3D models. Clamped inside the image
        (`window_around`).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    channel_axis : int, optional
        Axis of ``image`` holding channels (None: a single-channel image).

    Returns
    -------
    SegmentHit
        The one object under the point (`one_object`): semantic models, the region of the class under
        the point split where touching objects meet (`split_at`), so a click gives one nucleus of a
        clump; instance models, the object whose interior is under the point, split the same way.
    """
    from .data import as_channels_first
    from .predict import predict

    t0 = time.perf_counter()
    source = as_channels_first(image, channel_axis, model.config.context_planes)
    if source.shape[0] != model.in_channels:
        raise ValueError(f"the model takes {model.config.image_channels} channel(s) and the image has "
                         f"{source.channels}: set channel_axis= to the image's channel axis")
    spatial = source.shape[1:]
    if len(spatial) < model.dims:
        raise ValueError(f"this is a {model.dims}D model but the image has {len(spatial)} spatial axes")
    key = window_around(point, spatial, _resolve_window(window, model.dims))
    pixels = np.asarray(source[(slice(None),) + key])  # reads only the window (and its context planes)
    prob = predict(model.for_prepared_input(), pixels, tile=None, device=device, channel_axis=0)
    n_lead = len(spatial) - model.dims
    local = tuple(int(p) - k.start for p, k in zip(list(point)[n_lead:], key[n_lead:]))
    from .postprocess import item_spacing

    mask, value = one_object(prob, model.mode, model.config.class_ids, local,
                             spacing=item_spacing(model.config.spacing, prob.shape[1:]))
    origin = tuple(key[:n_lead]) + tuple(k.start for k in key[n_lead:])
    return SegmentHit(mask, origin, value, time.perf_counter() - t0)


def one_object(prob: np.ndarray, mode: str, class_ids, point, spacing=None) -> tuple:
    """The object under ``point`` from a window's class probabilities, and its class or instance id.

    Instance models: the interior under the point split by `split_at` and grown over its rim (as
    `instance_labels` grows its cores); a point on a rim takes the window's instance there
    (`instance_labels` with ``h=SPLIT_HEIGHT``). Semantic models: the region of the class under the point
    split by `split_at`, so a clump of nuclei of one class gives the clicked nucleus, never the clump.

    Parameters
    ----------
    prob : ndarray
        ``(K, *window)`` probabilities of the model's classes.
    mode : {"semantic", "instance"}
    class_ids : sequence of int
        The model's painted class ids (semantic).
    point : tuple of int
        Position in the window.
    spacing : sequence of float, optional
        Voxel size per axis (`ModelConfig.spacing`): distances are measured in those units.

    Returns
    -------
    (ndarray of bool, int)
        The mask (all False on background) and the value: the class id as written in segmentations, or
        1 for an instance model's object; 0 for background.
    """
    from .postprocess import semantic_labels

    if mode == "instance":
        mask = _instance_at(prob, point, spacing)
        return mask, int(mask.any())
    labels = semantic_labels(prob, class_ids)
    value = int(labels[point])
    if not value:
        return np.zeros(labels.shape, bool), 0
    return split_at(labels == value, point, spacing=spacing), value


def _instance_at(prob: np.ndarray, point, spacing=None) -> np.ndarray:
    """The instance model's object at ``point``: its interior split by `split_at`, grown over its rim."""
    from scipy import ndimage as ndi

    from .postprocess import instance_labels

    foreground = prob[0] < 0.5
    interior = (prob[1] > prob[2]) & (prob[1] > prob[0]) & foreground
    if interior[point]:
        parts, at = _click_parts(interior, point, SPLIT_HEIGHT, SPLIT_SIGMA, spacing)
        # each foreground pixel goes to the nearest interior part (as instance_labels grows its cores)
        _, nearest = ndi.distance_transform_edt(parts == 0, sampling=spacing, return_indices=True)
        mask = (parts[tuple(nearest)] == at) & foreground
    else:  # on a rim or an object without interior: the window's instance there
        labels = instance_labels(prob, h=SPLIT_HEIGHT, spacing=spacing, min_fraction=0)  # the clicked one, however small
        mask = (labels == labels[point]) & (labels[point] > 0)
    pieces, _ = ndi.label(mask)
    return (pieces == pieces[point]) & mask  # the connected piece under the click


def split_at(mask: np.ndarray, point, h: float = SPLIT_HEIGHT, sigma: float = SPLIT_SIGMA,
             spacing=None) -> np.ndarray:
    """The part of ``mask`` at ``point`` once split where touching objects meet, knowing the click is on it.

    As `napari_unet.postprocess.split_objects` (a distance-transform seeded watershed), except that the
    seeds near the clicked object's centre are one: the centre is the top of the seed whose basin holds
    the click, and every seed reaching within `CLICK_REACH` (0.7) of the object's inscribed radius
    there is the clicked object's own. So an elongated or bumpy object is not cut around its centre, while the neighbours
    keep their seeds (``h``) and a bridge to them is cut.

    Parameters
    ----------
    mask : ndarray of bool
        Any number of dimensions; ``mask[point]`` True.
    point : tuple of int
    h, sigma : float
        Height of the neighbours' seeds and smoothing of the distance map, as in `split_objects`.
    spacing : sequence of float, optional
        Voxel size per axis, as in `split_objects`: distances in those units.

    Returns
    -------
    ndarray of bool
        The clicked object (all False when ``mask[point]`` is False).
    """
    mask = np.asarray(mask, bool)
    point = tuple(int(p) for p in point)
    if not mask[point]:
        return np.zeros(mask.shape, bool)
    from scipy import ndimage as ndi

    # only the connected region under the point is split (a few px of margin for the smoothing): faster
    components, _ = ndi.label(mask)
    region = components == components[point]
    box = tuple(slice(max(0, s.start - 3), s.stop + 3) for s in ndi.find_objects(region.astype(np.int8))[0])
    parts, at = _click_parts(region[box], tuple(p - b.start for p, b in zip(point, box)), h, sigma, spacing)
    out = np.zeros(mask.shape, bool)
    out[box] = parts == at
    return out


def _click_parts(mask: np.ndarray, point: tuple, h: float, sigma: float, spacing=None) -> tuple:
    """(watershed parts of ``mask``, the id of the clicked one): `split_at`'s work on a mask."""
    from skimage.segmentation import watershed

    from .postprocess import distance_seeds

    edt, dist, seeds = distance_seeds(mask, h, sigma, spacing)
    basins = watershed(-dist, markers=seeds, mask=mask)  # what split_objects gives
    # the clicked object's centre: the top of the seed whose basin the click is in; every seed reaching
    # within CLICK_REACH of the object's inscribed radius there is the clicked object's own
    mine = seeds == basins[point]
    top = np.unravel_index(np.argmax(np.where(mine, dist, -np.inf)), mask.shape)
    step = spacing or (1.0,) * mask.ndim  # edt is in these units: so is the reach
    d2 = sum(((g - c) * v) ** 2 for g, c, v in zip(np.indices(mask.shape, sparse=True), top, step))
    own = np.unique(seeds[(seeds > 0) & (d2 <= (CLICK_REACH * edt[top]) ** 2)])
    if own.size <= 1:
        return basins, basins[point]
    seeds[np.isin(seeds, own)] = own[0]
    merged = watershed(-dist, markers=seeds, mask=mask)
    return merged, merged[point]


def region_box(region, shape) -> tuple:
    """A region (slices and integers over the leading axes of ``shape``) as ``((start, stop), ...)``."""
    box = []
    for i, size in enumerate(shape):
        r = region[i] if i < len(region) else slice(None)
        if isinstance(r, slice):
            start, stop, _ = r.indices(int(size))
        else:
            start, stop = int(r), int(r) + 1
        box.append((start, stop))
    return tuple(box)


def to_training_labels(segmentation, mode: str, class_ids=None, click_classes=None, covered=None) -> np.ndarray:
    """Turn a (corrected) segmentation into training labels.

    Parameters
    ----------
    segmentation : array-like of int
        0 = background; object ids or class ids elsewhere. Read whole.
    mode : {"semantic", "instance"}
        Semantic: every object becomes its class id and 0 becomes background (1), so the whole
        segmentation is a dense annotation. Instance: copied as is (0 = background, one id per object).
    class_ids : sequence of int, optional
        The model's painted class ids (1 = background). Ids in the segmentation that are class ids keep
        their value; others (objects added by a click or painted by hand) take their class from
        ``click_classes`` or else the first foreground class.
    click_classes : dict, optional
        Object id -> class id, recorded for objects added by click to segment.
    covered : list of boxes, optional
        Semantic: the parts the model segmented (`region_box` boxes, e.g. the windows of clicks or the
        tiles of a cancelled run). Unlabelled pixels outside them stay 0 (not annotated) instead of
        becoming background: the model never looked there. None: the whole segmentation is covered.

    Returns
    -------
    ndarray
        uint8 for semantic labels when the ids allow, int32 otherwise. The input is not modified.
    """
    seg = np.asarray(segmentation)
    if mode == "instance":
        return seg.astype(np.int32, copy=True)
    if mode != "semantic":
        raise ValueError(f"mode must be 'semantic' or 'instance', got {mode!r}")
    class_ids = [int(c) for c in (class_ids or [BACKGROUND, BACKGROUND + 1])]
    click_classes = {int(k): int(v) for k, v in (click_classes or {}).items()}
    foreground = [c for c in class_ids if c != BACKGROUND] or [BACKGROUND + 1]
    ids, inverse = np.unique(seg, return_inverse=True)
    values = np.empty(len(ids), dtype=np.int64)
    for i, v in enumerate(ids.tolist()):
        if v == 0:
            values[i] = BACKGROUND
        elif v in click_classes:
            values[i] = click_classes[v]
        elif v in class_ids and v != BACKGROUND:
            values[i] = v
        else:
            values[i] = foreground[0]
    dtype = np.uint8 if values.max(initial=0) < 256 else np.int32
    labels = values.astype(dtype)[inverse.reshape(seg.shape)]
    if covered is not None:
        seen = np.zeros(seg.shape, bool)
        for box in covered:
            seen[tuple(slice(a, b) for a, b in box)] = True
        labels[(seg == 0) & ~seen] = NOT_ANNOTATED
    return labels
