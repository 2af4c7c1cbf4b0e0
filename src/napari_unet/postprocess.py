"""From class probabilities to labels."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from .conventions import written_labels

__all__ = ["semantic_labels", "instance_labels", "split_objects", "distance_seeds", "SEED_HEIGHT", "item_spacing",
           "FRAGMENT_FRACTION"]

#: How far (px of distance to the edge) a seed's maximum must stand above its surroundings in
#: `instance_labels`: 0.5 splits touching nuclei that 1.0 merged, and was never worse on the outline
#: measurements (BENCHMARKS.md, "Seed height").
SEED_HEIGHT = 0.5
#: Objects smaller than this fraction of the item's median object are fragments, dropped by default:
#: in 3D most false objects of the anisotropic stand-in are pieces of 40-300 voxels next to nuclei of
#: ~800 (3D F1@0.5 0.816 -> 0.859 and 0.726 -> 0.809); in 2D they are debris (F1@0.5 of the hard
#: stand-in 0.942 -> 0.954 over 9 images; BENCHMARKS.md, "Fragments in 2D").
FRAGMENT_FRACTION = 0.2


def item_spacing(spacing, item_shape):
    """A model's voxel spacing where it applies to items of ``item_shape`` (a 2D model on a stack: None)."""
    return spacing if spacing is not None and len(spacing) == len(item_shape) else None


def semantic_labels(prob: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """Most probable class per pixel, written as `napari_unet.conventions.written_labels` says.

    Parameters
    ----------
    prob : ndarray
        ``(K, *spatial)`` probabilities (or logits: only the argmax matters).
    class_ids : sequence of int
        Painted label id of each of the K channels.
    """
    return written_labels(class_ids)[np.argmax(prob, axis=0)]


def split_objects(mask: np.ndarray, h: float = 1.0, sigma: float = 1.0, spacing=None) -> np.ndarray:
    """Split a binary mask into convex blobs at their necks: a distance-transform seeded watershed.

    A few pixels of bridge are enough to merge two touching nuclei into one connected region. Seeds are
    the maxima of the (``sigma``-smoothed) distance to the mask's edge that stand at least ``h`` px above
    their surroundings: one per convex blob even when blobs touch (a connected part without such a
    maximum is a seed of its own, so a small blob is never flooded from next door). Seeds grow over
    the mask following that distance, so touching blobs meet at their neck.

    Parameters
    ----------
    mask : ndarray of bool
        Any number of dimensions. Not modified.
    h : float
        Minimal height (px of distance) of a seed's maximum: larger merges more, smaller splits more.
    sigma : float
        Smoothing of the distance map (px) before its maxima are found.
    spacing : sequence of float, optional
        Voxel size per axis relative to the finest (`ModelConfig.spacing`): distances, ``h`` and
        ``sigma`` are then in units of the finest axis. Default isotropic.

    Returns
    -------
    ndarray of int32
        0 outside the mask, 1..N blobs.
    """
    from skimage.segmentation import watershed

    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    _, dist, seeds = distance_seeds(mask, h, sigma, spacing)
    return watershed(-dist, markers=seeds, mask=mask).astype(np.int32, copy=False)


def distance_seeds(mask: np.ndarray, h: float, sigma: float, spacing=None) -> tuple:
    """`split_objects`' seeds: (distance to the edge, its ``sigma``-smoothed map, labelled seeds).

    Seeds are the maxima of the smoothed distance standing ``h`` above their surroundings; a connected
    part of ``mask`` without one is a seed of its own. ``spacing`` as in `split_objects`.
    """
    from skimage.morphology import h_maxima

    spacing = _spacing(spacing, mask.ndim)
    edt = ndi.distance_transform_edt(mask, sampling=spacing)
    dist = ndi.gaussian_filter(edt, sigma if spacing is None else [sigma / s for s in spacing])
    peaks = h_maxima(dist, h).astype(bool) & mask
    parts, _ = ndi.label(mask)
    has_peak = np.zeros(parts.max() + 1, bool)
    has_peak[parts[peaks]] = True
    has_peak[0] = True
    seeds, _ = ndi.label(peaks | ~has_peak[parts])
    return edt, dist, seeds


def instance_labels(prob: np.ndarray, min_size: int | None = None, threshold: float = 0.5,
                    h: float = SEED_HEIGHT, spacing=None, sigma: float = 1.0,
                    min_fraction: float | None = None) -> np.ndarray:
    """Separate objects from background / interior / boundary probabilities with a seeded watershed.

    The interior mask (pixels where the interior is the most likely class) usually separates touching
    objects, but a few pixels of bridge are enough to merge two nuclei. Seeds are therefore the maxima of
    the (slightly smoothed) distance to the interior mask's edge that stand at least ``h`` px above their
    surroundings: one per convex blob even when blobs touch (an interior region without such a maximum
    is a seed of its own). Seeds grow over the interior following that distance, so touching objects
    meet at their neck; the rest of the foreground (background probability below ``threshold``: the
    rims) goes to the nearest grown seed. Foreground regions without any interior become objects of
    their own; objects smaller than ``min_size``, or than ``min_fraction`` of the median object, are dropped.

    Parameters
    ----------
    prob : ndarray
        float ``(3, *spatial)``: background, interior, boundary.
    min_size : int, optional
        Smallest object kept, in pixels (default 12 in 2D, 40 in 3D).
    threshold : float
        Background probability under which a pixel is foreground.
    h : float
        Minimal height (px of distance) of a seed's maximum: larger merges more, smaller splits more.
    spacing : sequence of float, optional
        Voxel size per spatial axis relative to the finest (a model's ``config.spacing``): seeds and
        the growth over the rims measure distances in these units. Default isotropic.
    sigma : float
        Smoothing (px) of the distance map before its maxima are found (`split_objects`).
    min_fraction : float, optional
        Objects smaller than this fraction of the median object's size are dropped too (fragments);
        default `FRAGMENT_FRACTION`; 0 keeps every object of at least ``min_size``.

    Returns
    -------
    ndarray of int32
        0 = background, 1..N objects.
    """
    from skimage.segmentation import relabel_sequential

    if prob.shape[0] != 3:
        raise ValueError(f"instance post-processing needs 3 channels (background, interior, boundary), got {prob.shape[0]}")
    spatial = prob.ndim - 1
    if min_size is None:
        min_size = 12 if spatial == 2 else 40
    foreground = prob[0] < threshold
    if not foreground.any():
        return np.zeros(prob.shape[1:], np.int32)
    interior = (prob[1] > prob[2]) & (prob[1] > prob[0]) & foreground
    spacing = _spacing(spacing, spatial)
    if min_fraction is None:
        min_fraction = FRAGMENT_FRACTION
    cores = split_objects(interior, h=h, sigma=sigma, spacing=spacing)
    # grow the cores over the rest of the foreground (the rims): each pixel takes the label of the
    # nearest core pixel, so a rim pixel between two touching objects goes to the closer one
    fg_parts, _ = ndi.label(foreground)
    if cores.max() > 0:
        _, nearest = ndi.distance_transform_edt(cores == 0, sampling=spacing, return_indices=True)
        labels = np.where(foreground, cores[tuple(nearest)], 0)
        del nearest
    else:
        labels = np.zeros_like(cores)
    # foreground regions without any interior (small or faint objects) are objects of their own
    has_core = np.zeros(fg_parts.max() + 1, bool)
    has_core[fg_parts[cores > 0]] = True
    orphans = foreground & ~has_core[fg_parts]
    labels[orphans] = fg_parts[orphans] + labels.max()
    _drop_small(labels, min_size, min_fraction)
    return relabel_sequential(labels)[0].astype(np.int32, copy=False)


def _drop_small(labels: np.ndarray, min_size: int, min_fraction: float) -> None:
    """Zero (in place) the objects under ``min_size`` pixels or ``min_fraction`` of the median object."""
    sizes = np.bincount(labels.ravel())
    present = sizes[1:][sizes[1:] >= max(min_size, 1)]  # the median of the objects min_size keeps
    cut = max(min_size, min_fraction * float(np.median(present)) if present.size and min_fraction > 0 else 0)
    if cut > 1:
        too_small = sizes < cut
        too_small[0] = False
        labels[too_small[labels]] = 0


def _spacing(spacing, ndim: int):
    """None for isotropic voxels, else the spacing as a tuple of ``ndim`` floats (ValueError otherwise)."""
    if spacing is None or all(float(v) == 1.0 for v in spacing):
        return None  # the isotropic path, exactly as without a spacing
    if len(spacing) != ndim:
        raise ValueError(f"spacing must have one voxel size per spatial axis ({ndim}), got {list(spacing)}")
    return tuple(float(v) for v in spacing)
