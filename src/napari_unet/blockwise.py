"""Blockwise prediction: labels of any size, block by block, with instance ids consistent across blocks.

An instance segmentation separates objects over a whole plane or volume, so `predict.sinks` keeps an
item's probabilities in memory. Here an item is cut into blocks (a grid of ``block`` pixels per side,
aligned to the output's chunks) and each block is labelled on its own, from the probabilities of the
block plus a ``margin`` of context on every side:

1. `label_block` labels the context with the same seeded watershed as a whole item
   (`napari_unet.postprocess.instance_labels`, without the size filter), keeps the block's *core*
   (ids 1..n), and keeps two layers of pixels at each of its faces: its own last layer and the first
   layer beyond the face as *its* context labelled it (ids of objects that do not reach the core are 0).
2. `face_pairs` compares, across each shared face, one block's view of its neighbour's first layer
   with what the neighbour wrote there (and the other way round): pieces that overlap on at least half
   of the smaller one's face pixels are the same object.
3. `merge_blocks` joins those pairs over the whole item (connected components of a graph whose nodes
   are the blocks' pieces: an object crossing many blocks, or larger than one, becomes one node set),
   drops objects smaller than ``min_size`` pixels in all, and gives every object one id, unique over
   the whole output (and over a stack, in item order).
4. `relabel` writes each block's final ids.

Why this gives the whole-item partition: every step of the post-processing is local to a cluster of
touching objects (thresholds, distances inside an object, seeds, watershed inside the interior, rims
to the nearest core), and the size filter comes last. When each block's context holds every object
that reaches its core (objects and touching clusters narrower than the margin), each block's core is
the whole-item result restricted to it, both sides of a face agree exactly, and the merge rebuilds the
whole-item objects. Larger objects are still joined into one object across faces (each side sees its
part of the object crossing the face), but how a cluster larger than the margin is split into touching
neighbours may differ from the whole-item result near the block borders.

Steps 2-4 live in `napari_unet.blockmerge`. With ``stitch_planes`` (a 2D instance model on a stack),
each block also counts its overlaps with the same block of the previous plane and step 4 writes ids
linked across planes (`napari_unet.stitchblocks`): no second pass, no whole plane in memory.

The block functions are pure (arrays in, arrays out): the local driver here (`iter_blockwise`) and the
dask driver (`napari_unet.distributed`) compose the same functions. Memory is bounded by one block's
context, whatever the size of the item.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import product

import numpy as np

from .blockmerge import block_neighbours, face_pairs, merge_blocks, relabel
from .postprocess import FRAGMENT_FRACTION
from .postprocess import item_spacing
from .predict.region import region_predictions

__all__ = ["BlockLabels", "block_grid", "core_region", "context_region", "default_block", "default_margin",
           "region_predictions", "label_block", "face_pairs", "merge_blocks", "relabel", "block_neighbours",
           "iter_blockwise", "segment_blockwise", "instance_labels_blockwise"]

# --------------------------------------------------------------------------------------- geometry
def default_block(model, device=None) -> tuple:
    """Block side per spatial axis: 2048 in 2D; in 3D 256 on a GPU, 128 on CPU (a 3D block's context
    probabilities and distance maps take ~100 B/voxel: ~0.3 GB at 128^3 with its margin)."""
    if model.dims == 2:
        return (2048, 2048)
    side = 256 if device is not None and getattr(device, "type", "cpu") == "cuda" else 128
    return (side,) * 3


def default_margin(model) -> int:
    """Context around a block for instance labels: 64 px in 2D, 32 in 3D (objects up to about that
    size, and touching clusters up to about that size, come out exactly as in a whole-item pass)."""
    return 64 if model.dims == 2 else 32


def _sizes(value, dims: int, what: str) -> tuple:
    sizes = (value,) * dims if np.isscalar(value) else tuple(value)
    if len(sizes) != dims:
        raise ValueError(f"{what} has {len(sizes)} sizes but the model works on {dims} spatial axes")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"{what} must be positive whole numbers, got {value!r}")
    return tuple(int(s) for s in sizes)


def block_grid(item_shape, block) -> tuple:
    """Blocks per axis."""
    return tuple(-(-int(s) // int(b)) for s, b in zip(item_shape, block))


def core_region(item_shape, block, position) -> tuple:
    """The slices of an item a block writes (its core)."""
    return tuple(slice(p * b, min((p + 1) * b, s)) for s, b, p in zip(item_shape, block, position))


def context_region(item_shape, core, margin: int) -> tuple:
    """The core grown by ``margin`` on every side, within the item."""
    return tuple(slice(max(0, c.start - margin), min(s, c.stop + margin)) for s, c in zip(item_shape, core))


def _relative(region, frame) -> tuple:
    """``region`` in the coordinates of ``frame`` (which holds it)."""
    return tuple(slice(r.start - f.start, r.stop - f.start) for r, f in zip(region, frame))


# --------------------------------------------------------------------------------- one block's labels
@dataclass
class BlockLabels:
    """One block's instance labels before the merge.

    Attributes
    ----------
    labels : ndarray of int32
        The core's pieces, 1..n (0 = background).
    sizes : ndarray of int64
        Pixels of each piece in the core (``sizes[0]`` is the background).
    faces : dict
        ``(axis, side)`` -> ``(inside, beyond)``: the core's layer at that face and the context's
        labels of the first layer beyond it (pieces of the core only, else 0); ``side`` is -1 (lower)
        or +1 (upper); only faces with a neighbour.
    """

    labels: np.ndarray
    sizes: np.ndarray
    faces: dict


def label_block(prob: np.ndarray, core: tuple, *, threshold: float = 0.5, h: float | None = None,
                spacing=None) -> BlockLabels:
    """Label a block from the probabilities of its context (pure: arrays in, arrays out).

    Parameters
    ----------
    prob : ndarray
        float ``(3, *context)``: background, interior, boundary.
    core : tuple of slice
        The block's core, relative to the context. A side where the context extends past the core is
        a face with a neighbour.
    threshold, h, spacing :
        As in `napari_unet.postprocess.instance_labels` (``h`` None: its default).
    """
    from .postprocess import SEED_HEIGHT, instance_labels

    context = instance_labels(prob, min_size=1, threshold=threshold, h=SEED_HEIGHT if h is None else h,
                              spacing=spacing, min_fraction=0)  # a block's median is not the item's
    inside = context[core]
    ids = np.unique(inside)
    ids = ids[ids > 0]
    lut = np.zeros(int(context.max()) + 1, np.int32)  # pieces reaching the core: 1..n; the others: 0
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    small = np.min_scalar_type(len(ids))
    faces = {}
    for axis, c in enumerate(core):
        for side, beyond, last in ((-1, c.start - 1, c.start), (1, c.stop, c.stop - 1)):
            if 0 <= beyond < context.shape[axis]:
                at = lambda i: tuple(slice(i, i + 1) if a == axis else core[a] for a in range(len(core)))
                faces[(axis, side)] = (lut[context[at(last)]].astype(small), lut[context[at(beyond)]].astype(small))
    labels = lut[inside]
    return BlockLabels(labels, np.bincount(labels.ravel(), minlength=len(ids) + 1).astype(np.int64), faces)


# ------------------------------------------------------------------------------------ the local driver
def iter_blockwise(plan, *, labels_out=None, probabilities_out=None, block=None, margin=None):
    """Run a plan block by block, yielding `napari_unet.predict.PredictEvent` progress reports.

    Instance labels are computed per block and merged across block borders (see the module's notes);
    semantic labels and probabilities are written block by block. Memory is bounded by one block's
    context (plus a few layers of pixels per face of the blocks not finished yet), whatever the size of
    an item, so a volume larger than the memory can be instance-segmented into an on-disk output.
    With the plan's ``stitch_planes``, objects are also linked across planes (`napari_unet.stitchblocks`:
    the labels of `napari_unet.stitch.stitch_planes` on the blockwise planes, with no second pass).

    Parameters
    ----------
    plan : napari_unet.predict.PredictionPlan
    labels_out, probabilities_out : array-like, optional
        As in `napari_unet.predict.run_prediction` (allocated in memory when the plan asks for them
        and none is given). Instance labels hold each block's pieces until the last pass rewrites them.
    block : int or tuple, optional
        Block side per spatial axis (default `default_block`).
    margin : int, optional
        Context around each block for instance labels (default `default_margin`).

    Returns
    -------
    generator of PredictEvent
        ``"start"``, ``"tiles"`` (a block predicted), ``"item"`` (final labels of a block written:
        its ``region``), ``"done"``.
    """
    from .predict.run import _outputs

    model = plan.model
    block = _sizes(block if block is not None else default_block(model, plan.device), model.dims, "block")
    instance = plan.labels and model.mode == "instance"
    margin = default_margin(model) if margin is None else int(margin)
    if instance and margin < 1:
        raise ValueError(f"margin must be at least 1 px for instance labels, got {margin}")
    labels_out, probabilities_out = _outputs(plan, labels_out, probabilities_out)
    return _run_local(plan, labels_out, probabilities_out, block, margin if instance else 0)


def _run_local(plan, labels_out, probabilities_out, block, margin):
    from .conventions import written_labels

    model = plan.model
    wants = "probabilities" if margin or probabilities_out is not None else "classes"

    def predictions(i, region):
        return region_predictions(plan, [i], region, wants)[0]

    message = (f"{plan.describe()}; block {'x'.join(map(str, block))}" + (f", margin {margin}" if margin else ""))
    return _blocks(plan.items, plan.item_shape, predictions, labels_out, probabilities_out, block, margin,
                   None if not plan.labels or margin else written_labels(model.config.class_ids),
                   plan.min_size or (12 if model.dims == 2 else 40), message, plan.stitch_planes,
                   item_spacing(model.config.spacing, plan.item_shape), plan.min_fraction, plan.stitch_trim)


def _blocks(items, item_shape, predictions, labels_out, probabilities_out, block, margin, class_lut, min_size,
            message, stitch=None, spacing=None, min_fraction=FRAGMENT_FRACTION, stitch_trim=True):
    """The local driver: every block in order, faces merged as soon as both sides are done.

    ``margin`` > 0: instance labels; else ``class_lut`` (class index -> written label) or no labels.
    ``predictions(i, region)``: probabilities ``(K, *region)`` of item ``i`` (classes when the labels
    are semantic and no probabilities are written). ``stitch``: an overlap to link instance labels
    across planes at (`napari_unet.stitchblocks`: counted per block, applied in the relabelling pass),
    trimmed unless ``stitch_trim`` is False.
    """
    from .predict.run import PredictEvent
    from .stitchblocks import PlaneLinks

    t0 = time.perf_counter()
    dims = len(item_shape)
    grid = block_grid(item_shape, block)
    positions = list(product(*[range(n) for n in grid]))
    blocks = [(i, p) for i in range(len(items)) for p in positions]
    instance = margin > 0
    total = len(blocks) * (2 if instance else 1)
    done = 0

    def event(kind, **fields):
        return PredictEvent(kind, done, total, done / total, time.perf_counter() - t0, **fields)

    yield PredictEvent("start", 0, total, 0.0, 0.0, message=f"{message}: {len(blocks)} block(s)")
    sizes, edges, open_faces = [], [], {}  # open: upper faces of blocks whose neighbour is not done yet
    links = PlaneLinks(stitch, len(positions), items.__getitem__, stitch_trim) if instance and stitch else None
    for k, (i, position) in enumerate(blocks):
        index = items[i]
        core = core_region(item_shape, block, position)
        region = context_region(item_shape, core, margin)
        values = predictions(i, region)
        inner = _relative(core, region)
        if probabilities_out is not None:
            probabilities_out[(slice(None),) + index + core] = values[(slice(None),) + inner]
        if instance:
            pieces = label_block(values, inner, spacing=spacing)
            if links is not None:  # the previous plane's pieces, at the same place, are written already
                links.put(k, *links.count(k, pieces.labels, core, item_shape,
                                          lambda j: np.asarray(labels_out[items[j] + core])))
            labels_out[index + core] = pieces.labels
            sizes.append(pieces.sizes)
            for axis in range(dims):  # faces with the blocks before this one are complete now
                if position[axis] > 0:
                    lower = k - int(np.prod(grid[axis + 1:], dtype=np.int64))
                    edges.append((lower, k, face_pairs(open_faces[lower], pieces.faces, axis)))
                    del open_faces[lower][(axis, 1)]
                    if not open_faces[lower]:
                        del open_faces[lower]
            upper = {key: layers for key, layers in pieces.faces.items() if key[1] == 1}
            if upper:
                open_faces[k] = upper
        elif class_lut is not None:
            classes = values[(slice(None),) + inner].argmax(0) if values.ndim > dims else values[inner]
            labels_out[index + core] = class_lut[classes]
        done += 1
        yield event("tiles", region=index + core)
    if instance:
        luts, _ = merge_blocks(sizes, edges, min_size, min_fraction, [i for i, _ in blocks])
        if links is not None:
            luts = links.luts(luts, sizes)
        for k, (i, position) in enumerate(blocks):
            region = items[i] + core_region(item_shape, block, position)
            labels_out[region] = relabel(np.asarray(labels_out[region]), luts[k], labels_out.dtype)
            done += 1
            yield event("item", region=region)
    elapsed = time.perf_counter() - t0
    yield PredictEvent("done", total, total, 1.0, elapsed, message=f"predicted {len(blocks)} block(s) in {elapsed:.1f} s",
                       result=labels_out if labels_out is not None else probabilities_out, labels=labels_out,
                       probabilities=probabilities_out)


def instance_labels_blockwise(prob: np.ndarray, block, margin: int = 64, min_size: int | None = None,
                              spacing=None) -> np.ndarray:
    """`napari_unet.postprocess.instance_labels` of given probabilities, computed block by block.

    The same blocks, faces and merge as `iter_blockwise`, on probabilities already in memory (or any
    array that reads a region at a time, e.g. zarr): for checking the merge, or for probabilities
    written by an earlier run.

    Parameters
    ----------
    prob : array-like
        ``(3, *spatial)`` background, interior, boundary probabilities.
    block : int or tuple
    margin : int
    min_size : int, optional
        Default 12 in 2D, 40 in 3D, as `instance_labels`.
    spacing : sequence of float, optional
        Voxel size per axis, as `instance_labels`.
    """
    spatial = tuple(np.shape(prob)[1:])
    dims = len(spatial)
    block = _sizes(block, dims, "block")
    if margin < 1:
        raise ValueError(f"margin must be at least 1 px for instance labels, got {margin}")
    out = np.zeros(spatial, np.int32)
    events = _blocks([()], spatial, lambda i, region: np.asarray(prob[(slice(None),) + region], np.float32), out,
                     None, block, int(margin), None, min_size or (12 if dims == 2 else 40), "blockwise",
                     spacing=spacing)
    for _ in events:
        pass
    return out


def segment_blockwise(model, image, *, out=None, block=None, margin=None, probabilities_out=None, progress=None,
                      **plan_options):
    """Labels like `napari_unet.segment`, computed block by block (instance labels of any size).

    Parameters
    ----------
    model : Model or path
    image : array-like
    out : array-like, optional
        Where to write the labels (zarr array, memmap...): with on-disk input and output, memory is
        bounded by the block size.
    block, margin : optional
        See `iter_blockwise`.
    probabilities_out : array-like, optional
        Also write the class probabilities here.
    progress : tqdm-like, optional
    **plan_options
        See `napari_unet.predict.plan_prediction`.
    """
    from contextlib import closing

    from .predict import plan_prediction
    from .progress import drain

    plan = plan_prediction(model, image, labels=True, probabilities=probabilities_out is not None, **plan_options)
    events = iter_blockwise(plan, labels_out=out, probabilities_out=probabilities_out, block=block, margin=margin)
    with closing(events):
        return drain(events, progress).labels
