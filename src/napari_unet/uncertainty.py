"""Where the model hesitates: a per-pixel map from its class probabilities, and where to paint next.

The map is ``1 - (p_first - p_second)``: one minus the margin between the two most probable classes
of a pixel. It is 0 where the model is sure of one class and 1 where two classes tie, whatever the
number of classes (entropy would also count the spread over classes no one would paint there, and
never reaches 1 with three classes or more unless all tie). It is the question a person answers with a
stroke: "which of these two is it?". Probabilities come from the prediction pipeline
(`napari_unet.predict`); `hesitation` only reads them.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["hesitation", "predict_hesitation", "suggest_strokes"]

#: Spatial planes (first spatial axis) read at a time from a lazy probability array.
_SLAB_BYTES = 64 * 2**20


def hesitation(probabilities, *, out=None) -> np.ndarray:
    """How much the model hesitates at each pixel: ``1 - (p_first - p_second)``, in [0, 1].

    Parameters
    ----------
    probabilities : array-like
        Class probabilities ``(K, *spatial)``, K >= 2, spatial axes last (2D, 3D, or with leading
        axes): what `napari_unet.predict` returns. Any real dtype and any scale: each pixel's values
        are divided by their sum first, so probabilities stored as uint8 0-255 work too. Lazy arrays
        (zarr, dask) are read a slab at a time. Never modified.
    out : ndarray, optional
        Float array shaped like the spatial axes to write into.

    Returns
    -------
    ndarray
        float32 (or ``out``) shaped ``probabilities.shape[1:]``: 0 where one class is certain, 1 where
        the two leading classes tie, and 1 where every class is 0 (nothing is known there).

    Raises
    ------
    ValueError
        Fewer than two classes, negative or non-finite values.
    TypeError
        A non-numeric dtype.

    Examples
    --------
    >>> hesitation(np.array([[0.5, 1.0], [0.5, 0.0]]))
    array([1., 0.], dtype=float32)
    """
    shape = tuple(np.shape(probabilities))
    dtype = np.dtype(getattr(probabilities, "dtype", np.asarray(probabilities).dtype))
    if dtype.kind not in "biuf":
        raise TypeError(f"probabilities have dtype {dtype}: pass class probabilities as numbers")
    if len(shape) < 2 or shape[0] < 2:
        raise ValueError(f"probabilities of shape {shape}: expected (classes >= 2, *spatial), e.g. what "
                         "napari_unet.predict returns")
    if out is None:
        out = np.empty(shape[1:], np.float32)
    elif tuple(out.shape) != shape[1:]:
        raise ValueError(f"out has shape {tuple(out.shape)}: expected {shape[1:]}")
    rows = shape[1]
    per_row = max(1, int(np.prod(shape, dtype=np.int64)) // max(rows, 1) * 4)
    step = max(1, _SLAB_BYTES // per_row)
    for start in range(0, rows, step):
        part = np.asarray(probabilities[:, start:start + step], dtype=np.float32)
        out[start:start + step] = _margin_map(part)
    return out


def _margin_map(p: np.ndarray) -> np.ndarray:
    """``1 - (top1 - top2) / sum`` over axis 0 of a float32 block (a new array)."""
    if not np.isfinite(p).all():
        raise ValueError("probabilities contain NaN or infinite values: predict them again")
    if (p < 0).any():
        raise ValueError("probabilities contain negative values: pass probabilities (softmax), not logits")
    first, second = np.maximum(p[0], p[1]), np.minimum(p[0], p[1])
    for c in p[2:]:  # K is small: a running top two is cheaper than sorting along the class axis
        second = np.maximum(second, np.minimum(first, c))
        first = np.maximum(first, c)
    total = p.sum(axis=0)
    margin = np.divide(first - second, total, out=np.zeros_like(total), where=total > 0)
    return np.clip(1.0 - margin, 0.0, 1.0)


def predict_hesitation(model, image, **plan_options) -> np.ndarray:
    """Predict an image and return where the model hesitates (`hesitation` of `napari_unet.predict`).

    Parameters
    ----------
    model : Model or path
    image : array-like
        Spatial axes last; see `napari_unet.predict.plan_prediction`.
    **plan_options
        ``tile``, ``device``, ``channel_axis``...: see `napari_unet.predict.plan_prediction`.

    Returns
    -------
    ndarray
        float32 in [0, 1] shaped like the image's spatial axes.
    """
    from .predict import predict

    return hesitation(predict(model, image, **plan_options))


def suggest_strokes(hesitation_map, annotated=None, *, count: int = 10, radius: int = 6,
                    spacing: int | None = None) -> np.ndarray:
    """Where to paint next: centres of the ``count`` most hesitant brush-sized spots not yet painted.

    The map is averaged over a brush-sized window (a spot, not a lone noisy pixel), annotated pixels
    and those within ``radius`` of them are excluded, and spots are picked greedily, each at least
    ``spacing`` pixels (per axis) from the ones before.

    Parameters
    ----------
    hesitation_map : array-like
        2D or 3D map, e.g. from `hesitation` (higher = paint here).
    annotated : array-like, optional
        Labels of the same shape; non-zero pixels are already painted (napari-unet's strokes).
    count : int
        Most spots returned (fewer when the free area runs out).
    radius : int
        Brush radius in pixels: the averaging window and the distance kept from painted pixels.
    spacing : int, optional
        Least distance between two suggestions along each axis; default ``2 * radius + 1`` (spots
        do not overlap).

    Returns
    -------
    ndarray
        int64 ``(n, ndim)`` pixel indices, most hesitant first (n <= count).
    """
    values = np.asarray(hesitation_map, dtype=np.float32)
    if values.ndim not in (2, 3) or not np.isfinite(values).all():
        raise ValueError(f"hesitation_map of shape {values.shape}: pass a finite 2D or 3D map (see hesitation)")
    if count < 0 or radius < 0:
        raise ValueError("count and radius must be >= 0")
    spacing = 2 * radius + 1 if spacing is None else int(spacing)
    score = ndi.uniform_filter(values, size=2 * radius + 1, mode="nearest")
    if annotated is not None:
        painted = np.asarray(annotated) != 0
        if painted.shape != values.shape:
            raise ValueError(f"annotated has shape {painted.shape}: expected the map's {values.shape}")
        if painted.any():
            near = ndi.distance_transform_edt(~painted) <= radius if radius else painted
            score[near] = -np.inf
    picks = []
    half = max(spacing - 1, 0)
    while len(picks) < count:
        flat = int(np.argmax(score))
        if not np.isfinite(score.flat[flat]):
            break
        centre = np.unravel_index(flat, score.shape)
        picks.append(centre)
        score[tuple(slice(max(c - half, 0), c + half + 1) for c in centre)] = -np.inf
    return np.array(picks, dtype=np.int64).reshape(-1, values.ndim)
