"""Linking a 2D model's objects across the planes of a z-stack into 3D objects.

A 2D instance model applied to a stack gives every object of every plane an id of its own. Stitching
relabels each plane against the previous one: an object takes the id of the previous plane's object it
overlaps best (highest intersection over union, each previous object continued by one object at most)
when at least ``threshold`` of the smaller of the two lies inside the other; otherwise it gets a new id.
A nucleus seen in 20 planes becomes one 3D object. The threshold is on the smaller object, not on the
union as in cellpose's ``stitch_threshold``, because near the top and bottom of a nucleus its section
shrinks fast from plane to plane: the IoU of two sections of one nucleus falls to 0.2-0.3 there, and an
IoU rule cuts the caps off as objects of their own (benchmarks/stitch_quality.py). A link is cut where
the chain's section area dips (`dips`): there one nucleus ends and the one stacked under it begins,
whose first section lies inside the upper one's last (benchmarks/results/vol3d2.md). Once linked, each
object loses its small end sections (a 2D model's caps of out-of-focus light) and objects seen in one
plane only are dropped (`trimmed_sections`, benchmarks/results/vol3d3.md; ``stitch_trim=False``
keeps the links alone, for thin objects that are real). Planes are handled one at a time and only the
previous plane is kept (`PlaneStitcher`), so the stack is never held in memory: it works while a
prediction writes plane by plane into a zarr array, and on label stacks of any size (`stitch_planes`).
The rule (`match_objects`) and the new ids (in order of each object's first pixel) depend only on which
pixels form each object, never on the ids it came with: blockwise and distributed runs apply it to
overlaps counted block by block (`napari_unet.stitchblocks`) and give the same labels.
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["DEFAULT_STITCH_THRESHOLD", "DIP_RATIO", "PlaneStitcher", "link_planes", "stitch_planes", "check_stitch",
           "can_stitch", "match_objects", "dips", "drop_dips", "per_plane_labels", "TRIM_RATIO", "MIN_PLANES", "DEEP_OBJECTS",
           "trimmed_sections", "zero_ids", "check_trim"]

#: Default fraction of the smaller of two overlapping objects that must lie inside the other for them to
#: be linked. On the true objects of synthetic stacks every value from 0.1 to 0.8 links all nuclei
#: (F1@0.5 in 3D 1.00; still 0.99 at 0.8 with only every 6th plane kept, 0.94-0.98 at 0.9); on a trained
#: 2D model's objects 0.8 scored best (mean F1@0.5 3D 0.75 against 0.67 at 0.5, better in all four runs:
#: benchmarks/stitch_quality.py), since a strict rule stops chains of fragments from joining neighbours.
DEFAULT_STITCH_THRESHOLD = 0.8
#: A chain of sections is cut where its area dips: a section no larger than this fraction of both the
#: chain's largest section so far and the next section. A convex nucleus' sections grow then shrink, so
#: a dip is where one nucleus ends and the one stacked under it begins (the first section of the lower
#: one lies inside the last of the upper one, and the overlap rule alone links them). On a 2D model's
#: objects of the anisotropic stand-in, 0.85 gave F1@0.5 in 3D 0.704 and 0.791 against 0.658 and 0.771
#: without (0.7: 0.701, 0.778), and never cut a true nucleus (benchmarks/results/vol3d2.md).
DIP_RATIO = 0.85
#: Once a stack is linked, a chain's end sections (top and bottom) smaller than this fraction of its
#: largest section are dropped: a 2D model sees a nucleus' blurred light in the planes above and below
#: it (on the anisotropic stand-in its objects span 1.1-1.3 planes more than the true nuclei), and
#: those caps are small. 0.3 gave 3D F1@0.5 / mean F1 0.737 / 0.390, 0.832 / 0.335, 0.784 / 0.340 on
#: three seeds against 0.727 / 0.372, 0.832 / 0.325, 0.773 / 0.324 without (benchmarks/results/vol3d3.md).
TRIM_RATIO = 0.3
#: Linked objects with fewer sections than this are dropped: most single-plane objects of a 2D model on
#: a z-stack are false detections (3D F1@0.5 0.745 -> 0.777 on three seeds, benchmarks/results/vol3d3.md).
MIN_PLANES = 2
#: ... but only when the stack's median object spans at least this many planes: in a stack whose planes
#: are so far apart that its objects are seen in one or two planes, a single-plane object is a real one.
DEEP_OBJECTS = 3


def check_stitch(threshold, *, mode: str, dims: int, spatial_ndim: int, labels: bool = True):
    """The stitching threshold as a float, or None; refuses stitching where it means nothing.

    Parameters
    ----------
    threshold : float, True or None
        None or False: no stitching; True: `DEFAULT_STITCH_THRESHOLD`; a number in (0, 1).
    mode, dims : str, int
        The model's.
    spatial_ndim : int
        Spatial axes of the image (a stack has more than the model's ``dims``).
    labels : bool
        Whether labels are computed (stitching links labels).

    Raises
    ------
    ValueError
        For a 3D model, a semantic model, a single plane, no labels, or a threshold outside (0, 1).
    """
    if threshold is None or threshold is False:
        return None
    if threshold is True:
        threshold = DEFAULT_STITCH_THRESHOLD
    if not isinstance(threshold, numbers.Real) or not 0 < float(threshold) < 1:
        raise ValueError(f"stitch_planes must be an overlap between 0 and 1 (e.g. {DEFAULT_STITCH_THRESHOLD}), "
                         f"got {threshold!r}; for no stitching, leave stitch_planes=None")
    if dims != 2:
        raise ValueError("stitch_planes links the planes of a 2D model's objects; a 3D model segments objects "
                         "in 3D already: leave stitch_planes=None")
    if mode != "instance":
        raise ValueError("stitch_planes links objects, but this is a semantic model: its classes need no "
                         "stitching across planes (each pixel's class is its own); leave stitch_planes=None")
    if spatial_ndim <= dims:
        raise ValueError("stitch_planes links the planes of a stack, but the image is a single 2D plane: "
                         "leave stitch_planes=None")
    if not labels:
        raise ValueError("stitch_planes links labels: ask for labels (labels=True), or leave stitch_planes=None")
    return float(threshold)


def check_trim(trim, threshold) -> bool:
    """``stitch_trim`` as a bool (`trimmed_sections` on or off); turning it off needs ``threshold``
    (`check_stitch`'s): without linking there is nothing to trim."""
    if not isinstance(trim, (bool, np.bool_)):
        raise TypeError(f"stitch_trim must be True or False, got {trim!r}")
    if not trim and threshold is None:
        raise ValueError("stitch_trim=False keeps objects linked across planes untrimmed, but nothing is linked: "
                         "link the planes (stitch_planes=True), or leave out stitch_trim=False")
    return bool(trim)


def can_stitch(model, spatial_ndim: int) -> bool:
    """Whether stitching applies: a 2D instance model on an image with a stack axis."""
    return model.dims == 2 and model.mode == "instance" and spatial_ndim > model.dims


def _overlap(inter, area_current, area_previous):
    """What the threshold applies to: the fraction of the smaller object inside the other (the rule
    benchmarks/stitch_quality.py swaps for cellpose's IoU to compare them)."""
    return inter / np.minimum(area_current, area_previous)


def match_objects(current, previous, inter, area_current, area_previous, first_current, first_previous,
                  threshold: float) -> np.ndarray:
    """Which overlapping pairs of objects of two consecutive planes are linked (pure; the one rule).

    Every argument but ``threshold`` has one entry per overlapping pair: the two objects (any ids),
    the pixels they share, their areas, and the flat index of each one's first pixel in its plane.
    Pairs are taken best IoU first (ties: by first pixels), when at least ``threshold`` of the smaller
    object lies inside the other and neither object is linked yet. Nothing here depends on the ids'
    values, so any numbering of the same objects links them the same way.

    Returns
    -------
    ndarray of bool
        Per pair: linked.
    """
    inter = np.asarray(inter, np.int64)
    area_current, area_previous = np.asarray(area_current, np.int64), np.asarray(area_previous, np.int64)
    iou = inter / (area_current + area_previous - inter)
    candidates = np.flatnonzero(_overlap(inter, area_current, area_previous) >= threshold)
    order = candidates[np.lexsort((np.asarray(first_previous)[candidates], np.asarray(first_current)[candidates],
                                   -iou[candidates]))]
    linked = np.zeros(len(inter), bool)
    taken_current: set = set()
    taken_previous: set = set()
    for k in order:  # each object continues one object at most, and is continued by one at most
        c, p = int(current[k]), int(previous[k])
        if c not in taken_current and p not in taken_previous:
            linked[k] = True
            taken_current.add(c)
            taken_previous.add(p)
    return linked


def dips(area_previous, peak_previous, area_current, ratio: float = DIP_RATIO) -> np.ndarray:
    """Which links (per entry: previous section's area, its chain's largest area so far, the current
    section's area) join two objects at a dip of the section area (pure; the one dip rule)."""
    area_previous = np.asarray(area_previous, np.float64)
    return (area_previous <= ratio * np.asarray(peak_previous)) & (area_previous <= ratio * np.asarray(area_current))


def drop_dips(links, area, plane, ratio: float = DIP_RATIO) -> np.ndarray:
    """The links (``(current, previous)`` object rows, one-to-one) that `dips` keeps, walking planes in order.

    ``area`` and ``plane`` give each object's section area and plane number (indexed by object id).
    """
    links = np.asarray(links, np.int64).reshape(-1, 2)
    peak = np.asarray(area, np.int64).copy()  # per object: its chain's largest section up to it
    keep = np.ones(len(links), bool)
    order = np.argsort(np.asarray(plane)[links[:, 0]], kind="stable")
    for z in np.unique(np.asarray(plane)[links[:, 0]]):
        rows = order[np.asarray(plane)[links[order, 0]] == z]
        cur, prev = links[rows, 0], links[rows, 1]
        cut = dips(area[prev], peak[prev], area[cur], ratio)
        keep[rows[cut]] = False
        peak[cur[~cut]] = np.maximum(peak[prev[~cut]], area[cur[~cut]])
    return links[keep]


def trimmed_sections(chain, plane, area, ratio: float = TRIM_RATIO, min_planes: int = MIN_PLANES) -> np.ndarray:
    """Which sections of linked chains are dropped (pure; the one trimming rule).

    Per section: its chain (3D object), its plane number and its area. A chain's leading and trailing
    sections smaller than ``ratio`` of its largest section are dropped, then chains left with fewer
    than ``min_planes`` sections, when the median chain (after its ends are trimmed) spans at least
    `DEEP_OBJECTS` planes.

    Returns
    -------
    ndarray of bool
        Per section: dropped.
    """
    chain, plane, area = (np.asarray(a, np.int64).ravel() for a in (chain, plane, area))
    order = np.lexsort((plane, chain))
    starts = np.flatnonzero(np.r_[True, chain[order][1:] != chain[order][:-1]]) if len(order) else []
    kept = []
    for rows in np.split(order, starts[1:]) if len(order) else ():
        big = np.flatnonzero(area[rows] >= ratio * area[rows].max())
        kept.append(rows[big[0]:big[-1] + 1])
    deep = bool(kept) and np.median([len(k) for k in kept]) >= DEEP_OBJECTS
    dropped = np.ones(len(chain), bool)
    for keep in kept:
        if len(keep) >= (min_planes if deep else 1):
            dropped[keep] = False
    return dropped


def link_planes(previous: np.ndarray | None, current, threshold: float, next_id: int, peaks: dict | None = None):
    """Relabel one plane against the (already relabelled) previous plane.

    Parameters
    ----------
    previous : ndarray of int or None
        The previous plane's final ids (None: ``current`` starts a new stack).
    current : array-like of int
        This plane's labels (0 = background, any ids).
    threshold : float
        Smallest fraction of the smaller of two overlapping objects inside the other for them to be linked.
    next_id : int
        The first unused id.
    peaks : dict, optional
        Final id -> its chain's largest section area so far (the previous plane's objects): links at a
        dip of the area are cut (`dips`). Updated in place for this plane's objects. None: no dip rule.

    Returns
    -------
    (ndarray of int32, int)
        The relabelled plane (a new array) and the next unused id. New objects get ids in the order of
        their first pixel (row by row), so the result depends only on which pixels form each object.
    """
    current = np.asarray(current)
    if previous is None:
        previous = np.zeros(current.shape, np.int32)
    cur_ids, cur_first, inverse, cur_area = np.unique(current.ravel(), return_index=True, return_inverse=True,
                                                      return_counts=True)
    prev_ids, prev_first, prev_area = np.unique(previous.ravel(), return_index=True, return_counts=True)
    both = (current.ravel() != 0) & (previous.ravel() != 0)
    prev_in = previous.ravel()[both].astype(np.int64)
    stride = int(prev_in.max()) + 1 if prev_in.size else 1
    codes, inter = np.unique(inverse[both].astype(np.int64) * stride + prev_in, return_counts=True)
    ci, prev = codes // stride, codes % stride
    pi = np.searchsorted(prev_ids, prev)
    linked = match_objects(ci, prev, inter, cur_area[ci], prev_area[pi], cur_first[ci], prev_first[pi], threshold)
    if peaks is not None:
        rows = np.flatnonzero(linked)
        peak = np.array([peaks.get(int(i), 0) for i in prev[rows]], np.int64)
        linked[rows[dips(prev_area[pi[rows]], np.maximum(peak, prev_area[pi[rows]]), cur_area[ci[rows]])]] = False
    new = np.zeros(len(cur_ids), np.int64)  # per index into cur_ids: the final id
    new[ci[linked]] = prev[linked]
    fresh = np.flatnonzero((new == 0) & (cur_ids != 0))
    fresh = fresh[np.argsort(cur_first[fresh], kind="stable")]
    new[fresh] = next_id + np.arange(len(fresh))
    next_id += len(fresh)
    if next_id - 1 > np.iinfo(np.int32).max:
        raise ValueError("more than 2**31 objects across the stack: the labels no longer fit in int32")
    if peaks is not None:
        _update_peaks(peaks, new, cur_area, ci[linked], prev[linked])
    return new.astype(np.int32)[inverse].reshape(current.shape), next_id


def _update_peaks(peaks: dict, new, cur_area, linked_current, linked_previous):
    """Keep, for this plane's final ids only, their chain's largest section area."""
    before = {int(c): peaks.get(int(p), 0) for c, p in zip(linked_current, linked_previous)}
    peaks.clear()
    for k in np.flatnonzero(new):
        peaks[int(new[k])] = max(int(cur_area[k]), before.get(int(k), 0))


class PlaneStitcher:
    """Relabels planes one by one, in order, keeping only the previous plane (and each plane's section
    areas per id, for `dropped`: the trimming pass once every plane is added).

    Parameters
    ----------
    threshold : float
        Smallest fraction of the smaller of two overlapping objects inside the other for them to be linked.

    Attributes
    ----------
    next_id : int
        The first id not used yet (ids are unique over everything added).
    """

    def __init__(self, threshold: float = DEFAULT_STITCH_THRESHOLD):
        self.threshold = float(threshold)
        self.next_id = 1
        self._previous = None
        self._index = None
        self._peaks: dict = {}  # the previous plane's ids -> their chain's largest section (`dips`)
        self._indices: list = []  # per plane added: its index
        self._sections: list = []  # per plane added: (ids, areas) of its objects, for `dropped`

    def add(self, plane, index: tuple | None = None) -> np.ndarray:
        """This plane's labels with linked ids (a new int32 array).

        ``index`` is the plane's leading index, e.g. ``(t, z)``: the last entry counts planes, the others
        start a new chain when they change (a time series of stacks is linked along z only), as does a
        gap in z. None: the plane follows the previous one.
        """
        index = None if index is None else tuple(int(i) for i in index)
        follows = self._previous is not None and (
            index is None or self._index is None
            or (index[:-1] == self._index[:-1] and index[-1:] == tuple(i + 1 for i in self._index[-1:])))
        if not follows:
            self._peaks.clear()
        out, self.next_id = link_planes(self._previous if follows else None, plane, self.threshold, self.next_id,
                                        self._peaks)
        self._previous, self._index = out, index
        ids, areas = np.unique(out, return_counts=True)
        self._indices.append(index)
        self._sections.append((ids[ids > 0], areas[ids > 0]))
        return out

    def dropped(self):
        """Once every plane is added: ``(index, ids)`` for each plane with sections that
        `trimmed_sections` drops (zero them there). Memory grows with the objects, not the pixels."""
        if not self._sections:
            return []
        chain = np.concatenate([ids for ids, _ in self._sections])
        area = np.concatenate([a for _, a in self._sections])
        plane = np.repeat(np.arange(len(self._sections)), [len(ids) for ids, _ in self._sections])
        drop = trimmed_sections(chain, plane, area)
        return [(self._indices[z], chain[drop & (plane == z)]) for z in np.unique(plane[drop])]


def zero_ids(out, index, ids) -> None:
    """Zero the objects ``ids`` in ``out[index]`` (one plane read and written)."""
    plane = np.asarray(out[index])
    out[index] = np.where(np.isin(plane, ids), 0, plane).astype(plane.dtype, copy=False)


def stitch_planes(labels, threshold: float = DEFAULT_STITCH_THRESHOLD, *, out=None, trim: bool = True):
    """Link the per-plane objects of a label stack into 3D objects, one plane at a time.

    Parameters
    ----------
    labels : array-like of int, shape (..., Z, Y, X)
        Per-plane instance labels (numpy, zarr, dask...; ids need not be unique across planes). Read one
        plane at a time; leading axes before Z (time) are stitched separately.
    threshold : float
        Smallest fraction of the smaller of two overlapping objects (this plane's and the previous
        plane's) inside the other for them to be linked.
    out : array-like, optional
        Where to write the linked labels (int32 or wider; may be ``labels`` itself, e.g. a zarr array);
        default a new int32 array. Only two planes are in memory at a time.
    trim : bool
        Drop each chain's small end sections (under `TRIM_RATIO` of its largest) and, when the median
        object spans `DEEP_OBJECTS` planes or more, the objects seen in fewer than `MIN_PLANES` planes
        (`trimmed_sections`: mostly a 2D model's blurred caps and false detections), in a second pass
        over the planes concerned; ids stay as linked, so they may have gaps. False: the links only
        (what ``napari_unet.segment(..., stitch_trim=False)`` and ``--no-stitch-trim`` give).

    Returns
    -------
    array
        ``out``: ids unique over the whole stack, one per 3D object.

    Examples
    --------
    >>> stack = np.zeros((3, 4, 4), int); stack[:, 1:3, 1:3] = 1
    >>> int(stitch_planes(stack).max())
    1
    """
    shape = tuple(np.shape(labels))
    threshold = check_stitch(threshold, mode="instance", dims=2, spatial_ndim=len(shape))
    first = np.asarray(labels[(0,) * (len(shape) - 2)])
    if first.dtype.kind not in "ui":
        raise TypeError(f"labels must be integer instance labels, got dtype {first.dtype}")
    if out is None:
        out = np.zeros(shape, np.int32)
    elif tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)} but the labels have shape {shape}")
    stitcher = PlaneStitcher(threshold)
    for index in np.ndindex(*shape[:-2]):
        out[index] = stitcher.add(np.asarray(labels[index]), index)
    for index, ids in stitcher.dropped() if trim else ():  # a second pass over the planes whose chains are trimmed
        zero_ids(out, index, ids)
    return out


def per_plane_labels(labels) -> np.ndarray:
    """A 3D label stack cut into per-plane sections, each with an id of its own (stitching's inverse).

    What a perfect 2D instance model gives on a stack: for measuring the linking alone.
    """
    from skimage.segmentation import relabel_sequential

    labels = np.asarray(labels)
    out, offset = np.zeros_like(labels), 0
    for z in range(len(labels)):
        plane = relabel_sequential(labels[z])[0]
        out[z] = np.where(plane > 0, plane + offset, 0)
        offset += int(plane.max())
    return out
