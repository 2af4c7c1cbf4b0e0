"""Stitching planes of a blockwise or distributed run, from counts taken block by block.

A 2D instance model's stack labelled block by block (`napari_unet.blockwise`, `napari_unet.distributed`)
has its pieces joined within each plane by `napari_unet.blockwise.merge_blocks`. Linking those objects
across planes (`napari_unet.stitch`) needs, per object, its area and the first pixel it covers, and per
pair of objects of consecutive planes, the pixels they share. All three add up over blocks:

1. `block_overlaps` (one block, pure): its pieces' first pixels, and the pixels each piece shares with
   each piece of the block at the same place in the previous plane (two blocks in memory, never a plane);
2. `stitch_luts` (the whole stack, cheap: it grows with the number of objects, not pixels): those
   counts in merged ids, summed, linked by `napari_unet.stitch.match_objects` (cut at `dips`), chains joined,
   and each chain numbered in order of its first plane and first pixel, as `napari_unet.stitch.PlaneStitcher`
   numbers objects, and trimmed (`napari_unet.stitch.trimmed_sections`); the result is composed into each block's lookup table.

So the final ids are written in the one relabelling pass the blocks need anyway, and they equal the
in-process stitched labels whenever the planes hold the same objects.
"""
from __future__ import annotations

import numpy as np

__all__ = ["follows", "block_overlaps", "stitch_luts", "PlaneLinks"]


def follows(before, here) -> bool:
    """Whether the plane of leading index ``here`` is linked to the plane ``before``: same leading
    indices (time...), z one more. A time series of stacks is linked along z only."""
    before, here = tuple(before), tuple(here)
    return bool(here) and before[:-1] == here[:-1] and before[-1] + 1 == here[-1]


def block_overlaps(pieces: np.ndarray, previous: np.ndarray | None, core: tuple, item_shape: tuple):
    """What one block contributes to stitching (pure).

    Parameters
    ----------
    pieces : ndarray of int
        The block's core pieces, 1..n (`napari_unet.blockwise.BlockLabels.labels`).
    previous : ndarray of int or None
        The pieces of the block at the same place in the previous plane (None: no previous plane).
    core : tuple of slice
        Where the block lies in its plane.
    item_shape : tuple of int
        The plane's shape.

    Returns
    -------
    (ndarray of int64, ndarray of int64)
        Per piece 0..n, the flat index in the plane of its first pixel (entry 0 unused); and
        ``(piece, previous piece, pixels)`` rows for every pair that overlaps.
    """
    pieces = np.asarray(pieces)
    ids, first_local = np.unique(pieces.ravel(), return_index=True)
    coords = np.unravel_index(first_local, pieces.shape)
    first = np.full(int(ids[-1]) + 1 if ids.size else 1, np.iinfo(np.int64).max, np.int64)
    first[ids] = np.ravel_multi_index(tuple(c + s.start for c, s in zip(coords, core)), item_shape)
    if previous is None:
        return first, np.zeros((0, 3), np.int64)
    previous = np.asarray(previous)
    both = (pieces > 0) & (previous > 0)
    if not both.any():
        return first, np.zeros((0, 3), np.int64)
    pairs, counts = np.unique(np.stack([pieces[both].astype(np.int64), previous[both].astype(np.int64)]), axis=1,
                              return_counts=True)
    return first, np.concatenate([pairs.T, counts[:, None]], axis=1).astype(np.int64)


def stitch_luts(luts, sizes, firsts, overlaps, block_items, threshold: float, trim: bool = True):
    """Each block's lookup table piece -> 3D id, from the within-plane merge and the block counts (pure).

    Parameters
    ----------
    luts : sequence of ndarray
        Per block, piece -> object id within the planes (`napari_unet.blockwise.merge_blocks`; 0: dropped).
    sizes : sequence of ndarray
        Per block, pixels of each piece (`BlockLabels.sizes`).
    firsts : sequence of ndarray
        Per block, `block_overlaps`' first pixels.
    overlaps : iterable of (int, int, ndarray)
        ``(block, block at the same place in the previous plane, its block_overlaps rows)``.
    block_items : sequence of int
        Per block, its plane (item) number: chains are numbered in plane order.
    threshold : float
        As `napari_unet.stitch.match_objects`.
    trim : bool
        Drop the sections `napari_unet.stitch.trimmed_sections` drops (False: the links alone).

    Returns
    -------
    list of ndarray
        Per block, piece -> 3D id (ids 1..N: in order of each chain's first plane, then first pixel).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from .stitch import drop_dips, match_objects, trimmed_sections

    n = max((int(lut.max()) for lut in luts), default=0)
    if n == 0:
        return [np.asarray(lut, np.int64) for lut in luts]
    area = np.zeros(n + 1, np.int64)
    first = np.full(n + 1, np.iinfo(np.int64).max, np.int64)
    item = np.zeros(n + 1, np.int64)
    for lut, size, f, i in zip(luts, sizes, firsts, block_items):
        ids = np.asarray(lut)[1:]
        np.add.at(area, ids, np.asarray(size, np.int64)[1:len(ids) + 1])
        np.minimum.at(first, ids, f[1:len(ids) + 1])
        item[ids] = i
    current, previous, pixels = [], [], []
    for k, lower, rows in overlaps:
        if len(rows):
            current.append(np.asarray(luts[k])[rows[:, 0]])
            previous.append(np.asarray(luts[lower])[rows[:, 1]])
            pixels.append(rows[:, 2])
    links = np.zeros((0, 2), np.int64)
    if current:
        cur, prev, px = np.concatenate(current), np.concatenate(previous), np.concatenate(pixels)
        keep = (cur > 0) & (prev > 0)
        codes, where = np.unique(cur[keep] * (n + 1) + prev[keep], return_inverse=True)
        inter = np.bincount(where, weights=px[keep]).astype(np.int64)
        cur, prev = codes // (n + 1), codes % (n + 1)
        linked = match_objects(cur, prev, inter, area[cur], area[prev], first[cur], first[prev], threshold)
        links = drop_dips(np.stack([cur[linked], prev[linked]], axis=1), area, item)
    graph = coo_matrix((np.ones(len(links), np.int8), (links[:, 0], links[:, 1])), shape=(n + 1, n + 1))
    _, chain = connected_components(graph, directed=False)
    # each chain is a path through consecutive planes: its start is the one object continuing nothing
    continues = np.zeros(n + 1, bool)
    continues[links[:, 0]] = True
    objects = np.flatnonzero(area[1:] > 0) + 1
    starts = objects[~continues[objects]]
    starts = starts[np.lexsort((first[starts], item[starts]))]
    chain_id = np.zeros(int(chain.max()) + 1, np.int64)
    chain_id[chain[starts]] = np.arange(1, len(starts) + 1)
    final = chain_id[chain]
    final[0] = 0
    if trim:
        final[objects[trimmed_sections(final[objects], item[objects], area[objects])]] = 0  # trimmed chains
    return [final[np.asarray(lut)] for lut in luts]


class PlaneLinks:
    """The stitching counts of a run's blocks, gathered in any order, then turned into lookup tables.

    Parameters
    ----------
    threshold : float
        As `napari_unet.stitch.match_objects`.
    per_item : int
        Blocks per plane (blocks are numbered plane by plane, then along the block grid).
    index_of : callable
        Plane number -> its leading index, e.g. ``(t, z)`` (`follows` decides which planes are linked).
    trim : bool
        Whether the linked chains are trimmed (`stitch_luts`).
    """

    def __init__(self, threshold: float, per_item: int, index_of, trim: bool = True):
        self.threshold, self.per_item, self.index_of = float(threshold), int(per_item), index_of
        self.trim = bool(trim)
        self.firsts: dict = {}
        self.overlaps: dict = {}

    def previous(self, k: int) -> int | None:
        """The block at the same place in the plane before block ``k``'s, if that plane is linked to it."""
        i = k // self.per_item
        return k - self.per_item if i > 0 and follows(self.index_of(i - 1), self.index_of(i)) else None

    def count(self, k: int, pieces, core: tuple, item_shape: tuple, read):
        """Block ``k``'s counts: ``(first pixels, previous block or None, overlap rows)``; ``read(j)``
        gives the pieces of the same ``core`` in plane ``j``."""
        lower = self.previous(k)
        first, rows = block_overlaps(pieces, None if lower is None else read(lower // self.per_item), core,
                                     item_shape)
        return first, lower, rows

    def put(self, k: int, first, lower, rows) -> None:
        self.firsts[k] = first
        if lower is not None:
            self.overlaps[k] = (lower, rows)

    def luts(self, luts, sizes) -> list:
        """`stitch_luts` of the within-plane lookup tables, once every block's counts are in."""
        return stitch_luts(luts, sizes, [self.firsts[k] for k in range(len(luts))],
                           [(k, lower, rows) for k, (lower, rows) in self.overlaps.items()],
                           [k // self.per_item for k in range(len(luts))], self.threshold, self.trim)
