"""Tile grids for seam-free inference (numpy only).

A tile is read from the image padded (edge mode, at the far end only) to a multiple of ``align`` (the
network's ``2**depth``). Tile origins are multiples of ``align`` so every tile sees the same pooling grid
as a whole-image pass; tiles at the border are shifted inward instead of padded, so they see the same
border as the whole image. Each output pixel is written by exactly one tile, from a part of that tile
that has at least ``halo`` pixels of real context on every side that is not the image border. With
``halo >= halo_for_depth(depth)`` the result equals the whole-image pass up to float rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Sequence

import numpy as np

__all__ = ["Tile", "plan_tiles", "padded_shape", "read_padded", "normalize_tile_size", "tiling_cost", "fit_tile_size",
           "choose_tile_size"]


@dataclass(frozen=True)
class Tile:
    """One tile of a plan.

    Attributes
    ----------
    input : tuple of slice
        Region of the padded image the network sees.
    output : tuple of slice
        Region of the (unpadded) image this tile writes.
    crop : tuple of slice
        Region of the tile's prediction that goes to ``output`` (relative to ``input``).
    """

    input: tuple
    output: tuple
    crop: tuple


def padded_shape(shape: Sequence[int], align: int) -> tuple:
    """Round every axis up to a multiple of ``align``."""
    return tuple(int(-(-s // align) * align) for s in shape)


def _grid_1d(size: int, padded: int, tile: int, halo: int):
    """(start, out_start, out_stop) per tile along one axis."""
    if tile >= padded:
        return [(0, 0, size)]
    step = tile - 2 * halo
    starts = list(range(0, padded - tile, step)) + [padded - tile]
    starts = sorted(set(starts))
    # Split each overlap in its middle: both neighbours keep >= halo of context there.
    bounds = [0] + [(a + b + tile) // 2 for a, b in zip(starts[:-1], starts[1:])] + [size]
    return [(s, min(lo, size), min(hi, size)) for s, lo, hi in zip(starts, bounds[:-1], bounds[1:])]


def normalize_tile_size(tile, ndim: int, halo: int, align: int) -> tuple | None:
    """Check and round a user tile size (int or tuple, or None for whole image) to the alignment.

    Raises
    ------
    ValueError
        If a tile size is not positive or leaves no room inside the halo.
    """
    if tile is None:
        return None
    sizes = (tile,) * ndim if np.isscalar(tile) else tuple(tile)
    if len(sizes) != ndim:
        raise ValueError(f"tile has {len(sizes)} sizes but the model works on {ndim} spatial axes")
    out = []
    minimum = 2 * halo + align
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0:
            raise ValueError(f"tile size must be a positive integer, got {s!r}")
        asked, s = int(s), int(s) // align * align
        if s < minimum:
            raise ValueError(
                f"tile size {asked} is too small for this network: it needs {halo} px of context on each "
                f"side, so use a tile of at least {minimum} (or tile=None for one pass over the whole image)")
        out.append(s)
    return tuple(out)


def plan_tiles(shape: Sequence[int], tile: Sequence[int] | None, halo: int, align: int) -> list[Tile]:
    """Plan the tiles covering an image of spatial ``shape``.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the (unpadded) image.
    tile : sequence of int or None
        Tile size per axis (multiples of ``align``, larger than ``2 * halo``), or None for one tile.
    halo : int
        Context kept on each inner side of a tile (multiple of ``align`` keeps origins aligned).
    align : int
        Alignment of tile origins and sizes (``2**depth``).

    Returns
    -------
    list of Tile
        Every pixel of ``shape`` is in exactly one tile's ``output``.
    """
    padded = padded_shape(shape, align)
    if tile is None:
        tile = padded
    per_axis = [_grid_1d(s, p, min(t, p), halo) for s, p, t in zip(shape, padded, tile)]
    tiles = []
    for combo in product(*per_axis):
        inp, outp, crop = [], [], []
        for (start, lo, hi), p, t in zip(combo, padded, tile):
            t = min(t, p)
            inp.append(slice(start, start + t))
            outp.append(slice(lo, hi))
            crop.append(slice(lo - start, hi - start))
        tiles.append(Tile(tuple(inp), tuple(outp), tuple(crop)))
    return tiles


def read_padded(image, region: tuple, spatial_shape: Sequence[int], index: tuple = ()) -> np.ndarray:
    """Read ``image[..., index, region]`` where ``region`` may run past the far end; pad there in edge mode.

    Parameters
    ----------
    image : array-like
        Any array supporting slicing (numpy, dask, zarr, memmap, `napari_unet.data.ChannelsFirst`); only
        the region is read, never the whole array.
    region : tuple of slice
        Region of the spatial axes (the last ``len(region)`` axes), in padded coordinates.
    spatial_shape : sequence of int
        Unpadded size of those axes.
    index : tuple of int
        Position along the stack axes just before the spatial ones (a plane of a stack); axes before
        those (channels) are kept whole.
    """
    inner = tuple(slice(r.start, min(r.stop, s)) for r, s in zip(region, spatial_shape))
    lead = (slice(None),) * (np.ndim(image) - len(region) - len(index))
    block = np.asarray(image[lead + tuple(index) + inner])
    pad = [(0, 0)] * len(lead) + [(0, r.stop - min(r.stop, s)) for r, s in zip(region, spatial_shape)]
    if any(p[1] for p in pad):
        block = np.pad(block, pad, mode="edge")
    return block


def fit_tile_size(size: int, max_tile: int, halo: int, align: int) -> int:
    """The smallest tile covering one axis of ``size`` pixels with the fewest tiles of at most ``max_tile``.

    `plan_tiles` steps by ``tile - 2 * halo`` and shifts the last tile inward, so a tile size that is
    not fitted to the image wastes up to a whole step on the last tile (with a halo of 96, a 2500 px axis
    in tiles of 1136 takes 3 tiles, 1.36x the pixels; fitted, 2 tiles of 1360, 1.09x).

    Parameters
    ----------
    size : int
        Axis length (unpadded).
    max_tile : int
        Largest tile allowed (a multiple of ``align``, larger than ``2 * halo``).
    halo, align : int
        As in `plan_tiles`.

    Returns
    -------
    int
        A multiple of ``align``, at most ``max(max_tile, padded size)``.
    """
    padded = int(-(-int(size) // align) * align)
    if max_tile >= padded:
        return padded
    step = max_tile - 2 * halo
    if step <= 0:
        raise ValueError(f"tile {max_tile} leaves no room inside a halo of {halo}")
    n = int(-(-(padded - 2 * halo) // step))  # fewest tiles: n * tile - (n - 1) * 2 * halo >= padded
    tile = -(-(padded + 2 * halo * (n - 1)) // n)
    return int(min(max_tile, -(-tile // align) * align))


def choose_tile_size(shape: Sequence[int], halo: int, align: int, max_pixels: float, *,
                     cache_pixels: float | None = None, slowdown: float = 0.15,
                     tile_overhead: float = 2.0**16) -> tuple:
    """Tile sizes that minimise the estimated time to predict an image of spatial ``shape``.

    Candidate tilings are `fit_tile_size` of every axis for a range of largest sides; each is scored by
    the pixels it computes (halo overhead included), times a per-pixel slowdown for tiles larger than
    ``cache_pixels`` (on CPU, big tiles no longer fit the caches: measured 1.45-1.6x slower per pixel at
    2048^2 than at 512^2, see BENCHMARKS.md), plus a fixed cost per tile.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of one item.
    halo, align : int
        As in `plan_tiles`.
    max_pixels : float
        Largest tile (pixels or voxels) the memory budget allows.
    cache_pixels : float, optional
        Tiles above this size are penalised by ``1 + slowdown * log2(pixels / cache_pixels)``;
        None for no penalty (GPUs get faster with bigger tiles).
    slowdown : float
        Penalty per doubling of the tile beyond ``cache_pixels``.
    tile_overhead : float
        Fixed cost of one tile, in pixels (reading, launching, cropping).

    Returns
    -------
    tuple of int
        Tile size per axis (multiples of ``align``); the padded shape itself when one tile is best.
    """
    padded = padded_shape(shape, align)
    best, best_cost, seen = None, np.inf, set()
    for side in range(2 * halo + align, max(padded) + align, align):
        tile = tuple(fit_tile_size(s, side, halo, align) for s in shape)
        if tile in seen:
            continue
        seen.add(tile)
        pixels = float(np.prod(tile))
        if pixels > max_pixels and best is not None:
            break  # tiles only grow with the side from here on
        n = math.prod(len(_grid_1d(s, p, t, halo)) for s, p, t in zip(shape, padded, tile))
        per_pixel = 1.0
        if cache_pixels is not None and pixels > cache_pixels:
            per_pixel += slowdown * float(np.log2(pixels / cache_pixels))
        cost = n * (pixels * per_pixel + tile_overhead)
        if cost < best_cost:
            best, best_cost = tile, cost
    return best


def tiling_cost(tiles: list[Tile], shape: Sequence[int]) -> float:
    """Pixels computed divided by pixels of the image (1.0 = no overlap overhead)."""
    computed = sum(math.prod(s.stop - s.start for s in t.input) for t in tiles)
    return computed / float(math.prod(shape))
