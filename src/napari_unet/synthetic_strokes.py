"""Simulated sparse annotations: the strokes a person paints in napari for semantic training.

Part of the synthetic stand-in (`napari_unet.synthetic`, which re-exports `make_strokes`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

__all__ = ["make_strokes"]

_MAX_STROKES = 60  # background stroke attempts per painted plane


def make_strokes(labels: np.ndarray, *, fraction: float = 0.06, seed: int | None = None) -> np.ndarray:
    """Simulate the sparse annotation a person paints in napari for semantic training.

    A few whole nuclei are painted as foreground and a few thick, curvy background
    brush strokes are drawn away from the nuclei (people do not paint the borders).

    Parameters
    ----------
    labels : ndarray of int, shape (Y, X) or (Z, Y, X)
        Instance labels (0 = background), e.g. from :func:`make_nuclei`.  Not modified.
    fraction : float, default 0.06
        Approximate fraction of the pixels to annotate (about 1/3 nuclei, 2/3
        background).  In 3D the strokes are painted in a few Z planes (about one
        plane in ten, at least one) and ``fraction`` applies to each painted plane.
    seed : int, optional
        Seed of the random generator; the same seed gives the same output.

    Returns
    -------
    strokes : ndarray of uint8, same shape as ``labels``
        0 = not annotated, 1 = background, 2 = nucleus.  Every pixel of a painted
        nucleus (within the painted plane in 3D) is 2; background strokes (brush
        radius 3-5 px) stay at least 4 px away from every nucleus.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got shape {labels.shape}")
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    if labels.ndim == 2:
        return _paint_plane(labels, fraction, rng)
    nz = labels.shape[0]
    out = np.zeros(labels.shape, dtype=np.uint8)
    n_planes = int(min(nz, max(1, round(nz / 10))))
    edges = np.linspace(0, nz, n_planes + 1)
    for k in range(n_planes):
        a, b = int(math.floor(edges[k])), max(int(math.floor(edges[k + 1])), int(math.floor(edges[k])) + 1)
        z = int(rng.integers(a, min(b, nz)))
        out[z] = _paint_plane(labels[z], fraction, rng)
    return out


def _paint_plane(labels2d, fraction, rng, margin=4.0):
    """Paint sparse strokes on one 2D plane; returns a uint8 array (0/1/2)."""
    out = np.zeros(labels2d.shape, dtype=np.uint8)
    total = fraction * labels2d.size
    painted_nuc = _paint_whole_nuclei(out, labels2d, total / 3.0, rng)
    # background gets the rest of the budget, including what the nuclei did not use
    _paint_background(out, _distance_to_nuclei(labels2d), total - painted_nuc, margin, rng)
    return out


def _paint_whole_nuclei(out, labels2d, target, rng) -> int:
    """Mark random whole nuclei 2 in ``out`` up to about ``target`` pixels; returns the count."""
    ids, areas = np.unique(labels2d[labels2d > 0], return_counts=True)
    if not len(ids):
        return 0
    painted = 0
    chosen = []
    for k in rng.permutation(len(ids)):
        remaining = target - painted
        if remaining <= 0:
            break
        # take the nucleus unless it overshoots the budget by more than half its area
        if areas[k] <= remaining + 0.5 * areas[k]:
            chosen.append(ids[k])
            painted += int(areas[k])
    if chosen:
        out[np.isin(labels2d, chosen)] = 2
    return painted


def _distance_to_nuclei(labels2d) -> np.ndarray:
    """Euclidean distance of each pixel to the nearest nucleus pixel (inf if none)."""
    if np.any(labels2d > 0):
        return ndi.distance_transform_edt(labels2d == 0)
    return np.full(labels2d.shape, np.inf)


def _paint_background(out, dist, target, margin, rng) -> None:
    """Mark background brush strokes 1 in ``out`` until about ``target`` pixels are painted."""
    painted = 0
    attempts = 0
    while painted < 0.97 * target and attempts < _MAX_STROKES:
        attempts += 1
        n = _brush_stroke(out, dist, target - painted, margin, rng)
        if n is None:
            break  # no free pixel left far enough from the nuclei
        painted += n


def _brush_stroke(out, dist, remaining, margin, rng):
    """Paint one curvy stroke of at most ~``remaining`` pixels; returns its pixel count.

    Returns None when there is no place left to start a stroke.
    """
    brush = float(rng.uniform(3.0, 5.0))
    # the centre line keeps the whole brush ``margin`` away from the nuclei
    allowed = dist >= margin + brush + 0.5
    cand = np.flatnonzero(allowed & (out == 0))
    if cand.size == 0:
        return None
    length = min(rng.uniform(80, 220), remaining / (2 * brush) + 1)
    start = cand[rng.integers(cand.size)]
    W = out.shape[1]
    pos = np.array([start // W, start % W], dtype=float)
    pts, travelled = _walk_stroke(pos, rng.uniform(0, 2 * np.pi), length, allowed, rng)
    if travelled < 10:
        return 0  # stuck almost at once: too short to look like a stroke
    return _stamp_stroke(out, dist, pts, brush, margin)


def _walk_stroke(pos, heading, length, allowed, rng):
    """Centre line: a random walk with slowly varying curvature on ``allowed`` pixels.

    Returns the points visited and the distance travelled (stops early when blocked).
    """
    curv = 0.0
    pts = [pos.copy()]
    travelled = 0.0
    while travelled < length:
        curv = float(np.clip(curv + rng.normal(0, 0.02), -0.08, 0.08))
        step = _next_step(pos, heading + curv, allowed)
        if step is None:
            break
        pos, heading = step
        pts.append(pos.copy())
        travelled += 1.0
    return pts, travelled


def _next_step(pos, heading, allowed):
    """One-pixel step along ``heading``, turning as little as needed; None if all are blocked."""
    H, W = allowed.shape
    for turn in (0.0, 0.4, -0.4, 0.8, -0.8, 1.3, -1.3):
        h = heading + turn
        nxt = pos + np.array([math.sin(h), math.cos(h)])
        iy, ix = int(round(nxt[0])), int(round(nxt[1]))
        if 0 <= iy < H and 0 <= ix < W and allowed[iy, ix]:
            return nxt, h
    return None


def _stamp_stroke(out, dist, pts, brush, margin) -> int:
    """Mark the free pixels within ``brush`` of the centre line 1; returns how many."""
    H, W = out.shape
    pts = np.round(np.array(pts)).astype(int)
    pad = int(math.ceil(brush)) + 1
    y0, x0 = np.maximum(pts.min(0) - pad, 0)
    y1, x1 = np.minimum(pts.max(0) + pad + 1, (H, W))
    line = np.ones((y1 - y0, x1 - x0), dtype=bool)
    line[pts[:, 0] - y0, pts[:, 1] - x0] = False
    stroke = ndi.distance_transform_edt(line) <= brush
    box = out[y0:y1, x0:x1]
    stroke &= (box == 0) & (dist[y0:y1, x0:x1] >= margin)
    box[stroke] = 1
    return int(stroke.sum())
