"""Joining the pieces of blocks into objects: across the faces between blocks, and over a whole output.

Pure functions of `napari_unet.blockwise`'s method (steps 2-4 there): `face_pairs` finds the pieces
of two neighbouring blocks that are one object, `merge_blocks` joins them over all blocks and numbers
the objects, `relabel` writes a block's final ids. Used by the local driver (`napari_unet.blockwise`)
and the dask tasks (`napari_unet.blocktasks`) alike.
"""
from __future__ import annotations

from itertools import product

import numpy as np

__all__ = ["MERGE_OVERLAP", "face_pairs", "merge_blocks", "relabel", "block_neighbours"]

#: Two pieces on either side of a face are one object when they overlap on at least this fraction of
#: the smaller one's pixels on the face layers.
MERGE_OVERLAP = 0.5


def _counts(a: np.ndarray, b: np.ndarray) -> dict:
    """Pixels per pair of non-zero ids at the same positions of ``a`` and ``b``."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return {}
    pairs, n = np.unique(np.stack([a[both].astype(np.int64), b[both].astype(np.int64)]), axis=1, return_counts=True)
    return {(int(x), int(y)): int(k) for (x, y), k in zip(pairs.T, n)}


def face_pairs(lower: dict, upper: dict, axis: int) -> np.ndarray:
    """Pieces of two neighbouring blocks that are one object (pure).

    Parameters
    ----------
    lower, upper : dict
        The `BlockLabels.faces` of the block before and the block after a face along ``axis``.

    Returns
    -------
    ndarray of int64, shape (n, 2)
        ``(piece of lower, piece of upper)`` pairs: they overlap, on the two layers either side of the
        face as each block's context saw them, on at least `MERGE_OVERLAP` of the smaller piece's pixels.
    """
    low_inside, low_beyond = lower[(axis, 1)]
    up_inside, up_beyond = upper[(axis, -1)]
    overlap = _counts(low_beyond, up_inside)  # the lower block's view of the upper's first layer
    for key, n in _counts(low_inside, up_beyond).items():  # and the upper's view of the lower's last
        overlap[key] = overlap.get(key, 0) + n
    if not overlap:
        return np.zeros((0, 2), np.int64)
    size_low = np.bincount(np.concatenate([low_inside.ravel(), low_beyond.ravel()]).astype(np.int64))
    size_up = np.bincount(np.concatenate([up_inside.ravel(), up_beyond.ravel()]).astype(np.int64))
    keep = [(a, b) for (a, b), n in overlap.items() if n >= MERGE_OVERLAP * min(size_low[a], size_up[b])]
    return np.array(keep, np.int64).reshape(-1, 2)


def merge_blocks(sizes, edges, min_size: int = 1, min_fraction: float = 0.0, block_items=None):
    """Join the pieces of all blocks into objects with ids unique over the whole output (pure).

    Parameters
    ----------
    sizes : sequence of ndarray
        `BlockLabels.sizes` of each block, in output order (items first, then the block grid).
    edges : iterable of (int, int, ndarray)
        ``(lower block, upper block, pairs)``: positions in ``sizes`` and their `face_pairs`.
    min_size : int
        Objects with fewer pixels in all are dropped (0).
    min_fraction : float
        Objects smaller than this fraction of their item's median object (of those ``min_size``
        keeps) are dropped too, as `napari_unet.postprocess.instance_labels` does on a whole item.
    block_items : sequence of int, optional
        Per block, its item (plane) number; needed with ``min_fraction``.

    Returns
    -------
    (list of ndarray, int)
        Per block, a lookup table piece -> final id (index 0 -> 0), and the number of objects. Ids are
        1..N in order of the first block (and piece) holding each object.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    counts = [max(0, len(s) - 1) for s in sizes]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])
    if total == 0:
        return [np.zeros(1, np.int64) for _ in sizes], 0
    rows, cols = [], []
    for i, j, pairs in edges:
        if len(pairs):
            rows.append(offsets[i] + pairs[:, 0] - 1)
            cols.append(offsets[j] + pairs[:, 1] - 1)
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(total, total))
    _, component = connected_components(graph, directed=False)
    # components numbered in order of their first node, whatever scipy's own numbering
    _, first, component = np.unique(component, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    component = rank[component]
    pixels = np.bincount(component, weights=np.concatenate([s[1:] for s in sizes]) if total else None,
                         minlength=len(order))
    kept = pixels >= max(1, int(min_size))
    if min_fraction > 0:
        item = np.asarray(block_items, np.int64)[np.searchsorted(offsets, first[order], side="right") - 1]
        kept &= _not_fragments(pixels, kept, item, min_fraction)
    final = np.where(kept, np.cumsum(kept), 0).astype(np.int64)
    luts = [np.concatenate([[0], final[component[offsets[k]:offsets[k + 1]]]]).astype(np.int64)
            for k in range(len(sizes))]
    return luts, int(kept.sum())


def _not_fragments(pixels, kept, item, min_fraction: float) -> np.ndarray:
    """Per object (kept so far): at least ``min_fraction`` of its item's median kept object."""
    ok = np.ones(len(pixels), bool)
    for i in np.unique(item[kept]):
        mine = kept & (item == i)
        ok[mine] = pixels[mine] >= min_fraction * float(np.median(pixels[mine]))
    return ok


def relabel(labels: np.ndarray, lut: np.ndarray, dtype=np.int32) -> np.ndarray:
    """A block's pieces as final ids (pure)."""
    return lut[labels].astype(dtype, copy=False)


def block_neighbours(grid: tuple):
    """``(axis, lower position, upper position)`` of every face between two blocks of an item."""
    for position in product(*[range(n) for n in grid]):
        for axis in range(len(grid)):
            if position[axis] + 1 < grid[axis]:
                yield axis, position, position[:axis] + (position[axis] + 1,) + position[axis + 1:]
