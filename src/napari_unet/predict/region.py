"""The prediction of any region of a plan's items, equal to what the whole plan computes there.

Blockwise and distributed prediction (`napari_unet.blockwise`, `napari_unet.distributed`) compute one
block (plus its context) at a time: the region is read with the plan's halo around it, from an origin
aligned to the network's pooling grid, and run through `run_blocks` with tiles fitted to it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..tiling import fit_tile_size, plan_tiles
from .run import run_blocks

__all__ = ["region_predictions"]


class _Window:
    """A channels-first image seen through a spatial window (leading axes unchanged)."""

    def __init__(self, image, start, shape, dims: int):
        self.image, self.start, self.dims = image, tuple(start), dims
        self.shape = tuple(image.shape[: len(image.shape) - dims]) + tuple(shape)
        self.ndim = len(self.shape)
        self.dtype = image.dtype

    def __getitem__(self, key):
        lead, spatial = key[: len(key) - self.dims], key[len(key) - self.dims:]
        return self.image[tuple(lead) + tuple(slice(s.start + o, s.stop + o) for s, o in zip(spatial, self.start))]


class _RegionSink:
    """Collects a sub-plan's predictions of a few items in one buffer (probabilities or classes)."""

    def __init__(self, items, shape, num_classes: int, wants: str):
        self.wants = wants
        self.position = {index: k for k, index in enumerate(items)}
        lead = (num_classes,) if wants == "probabilities" else ()
        self.buffer = np.empty((len(items),) + lead + tuple(shape), np.float32 if lead else np.int64)

    def write(self, index, region, values):
        if self.wants == "classes" and values.ndim != len(region):
            values = values.argmax(0)
        self.buffer[self.position[index]][(Ellipsis,) + tuple(region)] = values

    def item_done(self, index):
        return None


def region_predictions(plan, items, region, wants: str = "probabilities") -> np.ndarray:
    """The network's prediction over ``region`` of some items of a plan, as in a whole-plan run.

    The region is read with the plan's halo of context around it (from an origin aligned to the
    network's pooling grid, stopping at the true item border as a whole pass does), so in 2D (exact
    halo) the values equal the plan's own up to float rounding, and are bit-identical when the region
    covers whole items (the plan's own tiles are used then).

    Parameters
    ----------
    plan : napari_unet.predict.PredictionPlan
    items : sequence of int
        Indices into ``plan.items``.
    region : tuple of slice
        Spatial region of those items.
    wants : {"probabilities", "classes"}

    Returns
    -------
    ndarray
        float32 ``(len(items), K, *region)`` probabilities or int64 ``(len(items), *region)`` classes.
    """
    model = plan.model
    align, halo, shape = 2**model.depth, plan.halo, plan.item_shape
    view = tuple(slice(max(0, (r.start - halo) // align * align), min(s, r.stop + halo)) for r, s in zip(region, shape))
    view_shape = tuple(v.stop - v.start for v in view)
    if view_shape == tuple(shape):
        tiles, tile_size = plan.tiles, plan.tile_size
    else:
        tile_size = None if plan.tile_size is None else tuple(
            fit_tile_size(v, t, halo, align) for v, t in zip(view_shape, plan.tile_size))
        tiles = tuple(plan_tiles(view_shape, tile_size, halo, align))
    indices = tuple(plan.items[i] for i in items)
    image = plan.image if view_shape == tuple(shape) else _Window(plan.image, [v.start for v in view],
                                                                      view_shape, model.dims)
    batches = -(-len(tiles) * len(indices) // plan.batch_size)
    workers = max(1, min(plan.workers, batches))  # fewer passes than planned: each takes the others' threads
    sub = dataclasses.replace(plan, image=image, items=indices, item_shape=view_shape, tiles=tiles,
                              tile_size=tile_size, workers=workers,
                              threads=max(1, plan.threads * plan.workers // workers))
    sink = _RegionSink(indices, view_shape, model.num_classes, wants)
    for _ in run_blocks(sub, sink):
        pass
    inner = tuple(slice(r.start - v.start, r.stop - v.start) for r, v in zip(region, view))
    return sink.buffer[(slice(None),) * (sink.buffer.ndim - model.dims) + inner]
