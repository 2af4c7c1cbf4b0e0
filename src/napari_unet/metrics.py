"""Segmentation quality metrics and the classical Otsu baseline.

All functions work on 2D and 3D arrays and never modify their inputs.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["matching", "mean_f1", "foreground_iou", "otsu_baseline", "iou_table"]

#: IoU thresholds of `mean_f1`: 0.5, 0.55, ..., 0.9.
MEAN_F1_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))


def _as_labels(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind in "ui":
        return a
    if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.array_equal(a, np.round(a)):
        return a.astype(np.int64)
    raise TypeError(f"{name} must be an integer label image, got dtype {a.dtype}")


def iou_table(gt, pred):
    """IoU of every overlapping pair of objects.

    Parameters
    ----------
    gt, pred : ndarray of int
        Label images of the same shape (0 = background).

    Returns
    -------
    gt_ids, pred_ids : ndarray of int64
        Ids of the objects in ``gt`` and ``pred`` (background excluded, sorted).
    pairs : ndarray of int64, shape (K, 2)
        Indices into ``gt_ids`` / ``pred_ids`` of each overlapping pair.
    iou : ndarray of float64, shape (K,)
        Intersection over union of each pair.
    """
    gt = _as_labels(gt, "gt")
    pred = _as_labels(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred must have the same shape, got {gt.shape} and {pred.shape}")
    g = gt.ravel()
    p = pred.ravel()
    gt_ids, g_inv = np.unique(g, return_inverse=True)
    pred_ids, p_inv = np.unique(p, return_inverse=True)
    g_inv = g_inv.ravel().astype(np.int64)
    p_inv = p_inv.ravel().astype(np.int64)
    g_area = np.bincount(g_inv, minlength=len(gt_ids))
    p_area = np.bincount(p_inv, minlength=len(pred_ids))
    # drop the background entry (index of value 0, if present)
    g_bg = int(np.searchsorted(gt_ids, 0)) if np.any(gt_ids == 0) else -1
    p_bg = int(np.searchsorted(pred_ids, 0)) if np.any(pred_ids == 0) else -1
    both = np.ones(g.shape, dtype=bool)
    if g_bg >= 0:
        both &= g_inv != g_bg
    if p_bg >= 0:
        both &= p_inv != p_bg
    # contingency table of the overlapping (object, object) pairs
    n_p = len(pred_ids)
    codes, inter = np.unique(g_inv[both] * n_p + p_inv[both], return_counts=True)
    gi, pi = codes // n_p, codes % n_p
    iou = inter / (g_area[gi] + p_area[pi] - inter)

    # re-index to object ids without background
    def _reindex(ids, bg):
        keep = np.ones(len(ids), dtype=bool)
        if bg >= 0:
            keep[bg] = False
        new = np.cumsum(keep) - 1
        return ids[keep].astype(np.int64), new

    gt_obj, g_new = _reindex(gt_ids, g_bg)
    pred_obj, p_new = _reindex(pred_ids, p_bg)
    pairs = np.stack([g_new[gi], p_new[pi]], axis=1).astype(np.int64) if len(gi) else np.zeros((0, 2), np.int64)
    return gt_obj, pred_obj, pairs, iou.astype(np.float64)


def matching(gt, pred, iou_threshold: float = 0.5) -> dict:
    """Match predicted objects to ground-truth objects by intersection over union.

    A predicted object and a ground-truth object match when their IoU is strictly
    greater than ``iou_threshold``.  For thresholds >= 0.5 a match is necessarily
    unique; for lower thresholds an optimal one-to-one assignment (maximal number of
    matches, then maximal total IoU) is used.

    Parameters
    ----------
    gt : ndarray of int
        Ground-truth instance labels (0 = background), 2D or 3D.
    pred : ndarray of int
        Predicted instance labels, same shape as ``gt``.
    iou_threshold : float, default 0.5
        Minimal IoU (exclusive) for a pair to count as a true positive.

    Returns
    -------
    dict
        ``f1``, ``precision``, ``recall`` (floats), ``tp``, ``fp``, ``fn`` (ints) and
        ``mean_matched_iou`` (mean IoU of the true positives, 0.0 if there are none).
        If neither image contains an object every score is 1.0; if only one of them is
        empty f1, precision and recall are 0.0.
    """
    _check_threshold(iou_threshold)
    gt_ids, pred_ids, pairs, iou = iou_table(gt, pred)
    return _match_table(len(gt_ids), len(pred_ids), pairs, iou, iou_threshold)


def _check_threshold(iou_threshold) -> None:
    if not 0 <= iou_threshold < 1:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")


def _match_table(n_gt: int, n_pred: int, pairs, iou, iou_threshold: float) -> dict:
    """`matching`'s scores from an `iou_table` (so several thresholds share one table)."""
    if n_gt == 0 and n_pred == 0:
        return dict(f1=1.0, precision=1.0, recall=1.0, tp=0, fp=0, fn=0, mean_matched_iou=1.0)

    valid = iou > iou_threshold
    pairs, iou = pairs[valid], iou[valid]
    if iou_threshold < 0.5 and len(iou):
        from scipy.optimize import linear_sum_assignment

        rows, r_inv = np.unique(pairs[:, 0], return_inverse=True)
        cols, c_inv = np.unique(pairs[:, 1], return_inverse=True)
        big = min(len(rows), len(cols)) + 1.0  # makes the number of matches dominate
        weight = np.zeros((len(rows), len(cols)))
        weight[r_inv, c_inv] = big + iou
        r, c = linear_sum_assignment(weight, maximize=True)
        ok = weight[r, c] > 0
        matched_iou = weight[r[ok], c[ok]] - big
    else:
        matched_iou = iou

    tp = int(len(matched_iou))
    fp = n_pred - tp
    fn = n_gt - tp
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gt if n_gt else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn)
    return dict(
        f1=float(f1),
        precision=float(precision),
        recall=float(recall),
        tp=tp,
        fp=int(fp),
        fn=int(fn),
        mean_matched_iou=float(matched_iou.mean()) if tp else 0.0,
    )


def mean_f1(gt, pred, thresholds=MEAN_F1_THRESHOLDS) -> float:
    """Object F1 averaged over IoU thresholds: how well the outlines fit, not only how many objects are found.

    The IoU table is computed once and matched at each threshold (as `matching` does), so this costs
    about one `matching` call.

    Parameters
    ----------
    gt : ndarray of int
        Ground-truth instance labels (0 = background), 2D or 3D.
    pred : ndarray of int
        Predicted instance labels, same shape as ``gt``.
    thresholds : sequence of float, default 0.5, 0.55, ..., 0.9
        IoU thresholds (each in [0, 1), exclusive as in `matching`).

    Returns
    -------
    float
        The mean of ``matching(gt, pred, t)["f1"]`` over ``thresholds``; 1.0 for a perfect prediction.
    """
    thresholds = [float(t) for t in np.atleast_1d(thresholds)]
    if not thresholds:
        raise ValueError("thresholds must hold at least one IoU threshold, e.g. 0.5")
    for t in thresholds:
        _check_threshold(t)
    gt_ids, pred_ids, pairs, iou = iou_table(gt, pred)
    return float(np.mean([_match_table(len(gt_ids), len(pred_ids), pairs, iou, t)["f1"] for t in thresholds]))


def foreground_iou(gt, pred) -> float:
    """IoU of the foreground masks ``gt > 0`` and ``pred > 0`` (1.0 if both are empty).

    Parameters
    ----------
    gt, pred : ndarray
        Label images or masks of the same shape.

    Returns
    -------
    float
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred must have the same shape, got {gt.shape} and {pred.shape}")
    a = gt != 0
    b = pred != 0
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return float(np.count_nonzero(a & b) / union)


def otsu_baseline(image, min_size: int = 10) -> np.ndarray:
    """Classical baseline: global Otsu threshold and connected components.

    Parameters
    ----------
    image : ndarray
        2D or 3D intensity image (spatial axes only).
    min_size : int, default 10
        Connected components smaller than this many pixels are removed.

    Returns
    -------
    labels : ndarray of int32
        Instance labels 1..N (0 = background), full connectivity.
    """
    from skimage.filters import threshold_otsu

    img = np.asarray(image, dtype=np.float32)
    if img.size == 0 or not np.isfinite(img).all() or img.min() == img.max():
        return np.zeros(img.shape, dtype=np.int32)
    mask = img > threshold_otsu(img)
    structure = ndi.generate_binary_structure(img.ndim, img.ndim)
    labels, n = ndi.label(mask, structure=structure)
    if n == 0:
        return labels.astype(np.int32)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]
