"""Planning a prediction: every check, the memory budget, tiles, halo and workers, decided once.

`plan_prediction` validates the inputs *and* what is asked for (labels, probabilities) before any work
or output file exists, and returns a frozen `PredictionPlan`. What `PredictionPlan.describe` says is
what `napari_unet.predict.run_prediction` runs: the free memory is read here, once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..conventions import written_labels
from ..data import as_channels_first, iter_items
from ..device import compute_precision, resolve_device
from ..model import Model, halo_for_depth
from ..postprocess import FRAGMENT_FRACTION
from ..stitch import check_stitch, check_trim
from ..tiling import Tile, choose_tile_size, normalize_tile_size, plan_tiles

__all__ = ["PredictionPlan", "plan_prediction", "auto_tile_size", "labels_dtype", "memory_budget",
           "CPU_CACHE_PIXELS", "MAX_CPU_WORKERS"]

#: CPU tiles above this many pixels run slower per pixel (caches; benchmarks/cpu_levers.py, section E).
CPU_CACHE_PIXELS = 2**18
#: At most this many concurrent forward passes on CPU by default (each one holds a tile's activations).
MAX_CPU_WORKERS = 4


def as_model(model) -> Model:
    """A `Model`, loading it when given a model file path."""
    if isinstance(model, (str, Path)):
        from ..modelfile import load_model

        return load_model(model)
    if not isinstance(model, Model):
        raise TypeError(f"model must be a napari_unet Model or a model file path, got {type(model).__name__}")
    return model


def labels_dtype(model: Model):
    """Integer dtype `segment` writes for this model."""
    if model.mode == "instance":
        return np.int32
    return written_labels(model.config.class_ids).dtype


@dataclass(frozen=True)
class PredictionPlan:
    """Everything a prediction will do, checked before any work or output file is created.

    Attributes
    ----------
    model : Model
    device : torch.device
    image : napari_unet.data.ChannelsFirst
        The input, a lazy channels-first view.
    items : tuple of tuple
        Leading (stack/time) index of each plane/volume the model sees as one item.
    item_shape : tuple of int
        Spatial shape of one item.
    tiles : tuple of napari_unet.tiling.Tile
        The tiles of one item.
    tile_size : tuple of int or None
        None: one pass over the whole (padded) item.
    halo, batch_size : int
    shape : tuple of int
        Spatial output shape (the labels' shape; probabilities are ``(K, *shape)``).
    labels, probabilities : bool
        What is asked for (at least one).
    min_size : int or None
        Instance mode: smallest object kept.
    min_fraction : float
        Instance mode: objects under this fraction of their item's median object are dropped (fragments).
    workers, threads : int
        ``workers`` forward passes run at once (CPU), each with ``threads`` torch threads.
    stitch_planes : float or None
        2D instance model on a stack: objects are linked across planes at this overlap (`napari_unet.stitch`).
    stitch_trim : bool
        With ``stitch_planes``: linked objects lose their small end sections and single-plane objects
        are dropped (`napari_unet.stitch.trimmed_sections`); False keeps the links alone.
    tta : bool
        Test-time augmentation: probabilities averaged over 8 turned/mirrored views (`napari_unet.predict.tta`).
    precision : {"fp32", "bf16", "fp16"}
        The forward passes' arithmetic (`napari_unet.device.compute_precision`).
    """

    model: Model
    device: torch.device
    image: Any
    items: tuple
    item_shape: tuple
    tiles: tuple
    tile_size: tuple | None
    halo: int
    batch_size: int
    shape: tuple
    labels: bool = True
    probabilities: bool = False
    min_size: int | None = None
    min_fraction: float = FRAGMENT_FRACTION
    workers: int = 1
    threads: int = 1
    stitch_planes: float | None = None
    stitch_trim: bool = True
    tta: bool = False
    precision: str = "fp32"

    @property
    def total_tiles(self) -> int:
        """Tiles of all items."""
        return len(self.tiles) * len(self.items)

    @property
    def labels_dtype(self) -> np.dtype:
        """Integer dtype of the labels."""
        return np.dtype(labels_dtype(self.model))

    @property
    def probabilities_shape(self) -> tuple:
        """``(K, *shape)``."""
        return (self.model.num_classes,) + tuple(self.shape)

    def describe(self) -> str:
        """One line: the output's size, items, tiles, halo, batch, device and workers."""
        size = "x".join(map(str, self.tile_size)) if self.tile_size and len(self.tiles) > 1 else "whole image"
        par = f", {self.workers} workers x {self.threads} threads" if self.workers > 1 else ""
        untrimmed = "" if self.stitch_trim else ", not trimmed"
        linked = (f", objects linked across planes (overlap >= {self.stitch_planes:g}{untrimmed})"
                  if self.stitch_planes else "")
        linked += ", test-time augmentation (8 views)" if self.tta else ""
        linked += f", {self.precision} mixed precision" if self.precision != "fp32" else ""
        pixels = math.prod(self.shape)  # said before anything runs: a crafted file's absurd size shows here
        amount = f"{pixels / 1e9:.1f} G" if pixels >= 1e9 else f"{pixels / 1e6:.1f} M" if pixels >= 1e6 else f"{pixels}"
        return (f"{'x'.join(map(str, self.shape))} ({amount} pixels): {len(self.items)} item(s) x "
                f"{len(self.tiles)} tile(s) ({size}, halo {self.halo}), batch {self.batch_size}, device "
                f"{self.device}{par}{linked}")


# ------------------------------------------------------------------------------------ memory and tiles
def _bytes_per_pixel(model: Model, device: torch.device, precision: str | None = None) -> float:
    # Activations alive at once at full resolution in eval mode: measured 367 B/px for base 16 in fp32
    # (2D, 1120^2 tile; 273 B/voxel in 3D), i.e. about 6 feature maps of base_channels; 7 leaves a margin.
    # Half on GPUs under mixed precision (their default); CPUs keep the fp32 estimate their tiles were
    # fitted with. precision None: the automatic one for the device.
    precision = compute_precision(device) if precision is None else precision
    itemsize = 2 if device.type == "cuda" and precision != "fp32" else 4
    return model.config.base_channels * itemsize * 7.0


def memory_budget(device: torch.device) -> float:
    """Bytes of activations the tiles in flight may take: a third of the free GPU memory; on CPU an
    eighth of the available memory, between 256 MB and 2 GB."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 3
    from ..memory import available_memory

    return float(min(2e9, max(256e6, available_memory() / 8)))


def _check_whole_pass_fits(model: Model, device: torch.device, tile: Tile, batch: int, precision: str) -> None:
    """``tile=None``: refuse, with advice, a whole-image pass whose activations cannot fit in memory."""
    pixels = float(np.prod([s.stop - s.start for s in tile.input], dtype=np.float64)) * batch
    needed = pixels * _bytes_per_pixel(model, device, precision)
    if device.type == "cuda":
        available = float(torch.cuda.mem_get_info(device)[0])
    else:
        from ..memory import available_memory

        available = 0.8 * available_memory()
    if needed > available:
        raise MemoryError(f"one pass over the whole image needs about {needed / 2**30:.1f} GiB on {device} but "
                          f"{available / 2**30:.1f} GiB are available: use tiles (tile='auto')")


def auto_tile_size(model: Model, device: torch.device, batch_size: int = 1, workers: int = 1,
                   precision: str | None = None) -> tuple:
    """The largest tile side per spatial axis that keeps activations within the memory budget.

    The budget (`memory_budget`: a third of the free memory on CUDA; on CPU an eighth of the available
    memory, at most 2 GB) is shared by the ``batch_size`` tiles of each of the ``workers`` concurrent
    forward passes. The side is rounded to the network's alignment, never smaller than what the halo
    needs and at most 4096 (2D) or 512 (3D). On GPUs activations take half the bytes under mixed
    precision (``precision`` "bf16"/"fp16"; None: the device's automatic one), so fp32 gets smaller tiles.
    `plan_prediction` then fits the tiles to the image (`napari_unet.tiling.choose_tile_size`).
    """
    pixels = memory_budget(device) / _bytes_per_pixel(model, device, precision) / max(1, batch_size) / max(1, workers)
    align = 2**model.depth
    side = int(pixels ** (1.0 / model.dims)) // align * align
    lower = 2 * default_halo(model) + align
    side = int(min(max(side, lower), 4096 if model.dims == 2 else 512))
    return (side,) * model.dims


def default_halo(model: Model, tile_side: int | None = None) -> int:
    """Context kept on each side of a tile when none is asked for.

    2D: the exact halo (tiled == whole image, at a cost of (T / (T - 2h))^2, 1.2x for 2 x 2 tiles of a
    2048^2 image). 3D: the exact halo costs (T / (T - 2h))^3 (8x for 384^3 tiles), so the halo is the
    largest multiple of the alignment up to an eighth of the tile (cost at most (4/3)^3 = 2.4x), cropped
    at the midpoint of the overlap: 16 for the 128^3 tiles of a CPU, 64 for the 512^3 tiles of a big GPU.
    Measured on depth-4 networks, classes differ from whole-volume inference on 0.03-0.05% (trained) to
    0.4-0.7% (random weights) of the voxels at halo 16, 5-10x fewer at 32; blending the overlap instead
    of cropping it was not closer at equal cost (BENCHMARKS.md, "3D tiling"). A subtracted background's
    reach is added in full (`Model.background_reach`): its estimate is a wide filter, so too little
    context shifts the whole tile's input level, which shows as seams.
    """
    align = 2**model.depth
    if model.dims == 2:
        return model.halo
    reach = model.background_reach
    base = halo_for_depth(model.depth)
    part = max(align, (base // 4 if tile_side is None else int(tile_side) // 8) // align * align)
    return int(min(model.halo, -(-(part + reach) // align) * align))


def _tiles(model: Model, dev: torch.device, item_shape: tuple, tile, halo, batch_size: int, workers: int,
           precision: str):
    """(tile sizes, halo) for ``tile="auto"``, an explicit size, or None (whole item)."""
    dims, align = model.dims, 2**model.depth
    if halo is not None:
        halo = -(-_whole(halo, "halo") // align) * align
    if isinstance(tile, str):
        if tile != "auto":
            raise ValueError(f"tile must be 'auto', a positive integer, a tuple or None, got {tile!r}")
        largest = auto_tile_size(model, dev, batch_size, workers, precision)
        halo = default_halo(model, min(largest)) if halo is None else halo
        largest = tuple(max(s, 2 * halo + align) for s in largest)  # an explicit halo may need bigger tiles
        # fit the tiles to the image: fewest tiles, least halo overhead, no cache-hostile giant tiles on CPU
        sizes = choose_tile_size(item_shape, halo, align, float(np.prod(largest)),
                                 cache_pixels=CPU_CACHE_PIXELS if dev.type == "cpu" else None)
        return sizes, halo
    if halo is None:
        sides = [s for s in np.atleast_1d(np.asarray(tile if tile is not None else [], dtype=object))
                 if isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0]
        halo = default_halo(model, min(sides) if sides and tile is not None else None)
    return normalize_tile_size(tile, dims, halo, align), halo


# ------------------------------------------------------------------------------------- workers, input
def per_thread_torch_threads() -> bool:
    """Whether `torch.set_num_threads` in a thread leaves the other threads alone (OpenMP backend)."""
    return "OpenMP" in torch.__config__.parallel_info()


def _cpu_workers(device: torch.device, workers) -> int:
    """Concurrent forward passes: on CPU one per torch thread (at most `MAX_CPU_WORKERS`), else one.

    Several single-threaded forward passes beat one multi-threaded pass on CPU: there is no barrier
    between threads, so a core taken by another process slows one worker instead of stalling all of
    them (2 cores, one busy elsewhere: 0.97x the time of one thread, against 1.25x for a 2-thread pass;
    both free: 0.50x against 0.56x; BENCHMARKS.md, "CPU levers" C).
    """
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ValueError(f"workers must be a positive whole number, got {workers!r}")
        return int(workers) if device.type == "cpu" and per_thread_torch_threads() else 1
    if device.type != "cpu" or not per_thread_torch_threads():
        return 1
    return max(1, min(MAX_CPU_WORKERS, torch.get_num_threads()))


def _channels_first(model: Model, image, channel_axis):
    """The input as a lazy channels-first view, and its spatial shape; refuses what the model cannot take."""
    channels = model.config.image_channels  # the image's own, without a 2.5D model's context planes
    if channel_axis is None and channels > 1:
        raise ValueError(f"this model takes {channels} channels: declare the image's channel axis "
                         "(channel_axis=...)")
    shape = tuple(np.shape(image))
    if channel_axis is None and len(shape) > model.dims and shape[-1] in (3, 4) and min(shape[-3:-1]) > 4:
        # a colour image read as planes 3 pixels wide: never segment that "per channel" by accident
        raise ValueError(f"the image looks like RGB(A) (shape {shape}): this model takes {channels} "
                         "channel(s); convert the image to one channel, or use a model trained on its colours "
                         "(channel_axis=-1)")
    img = as_channels_first(image, channel_axis, model.config.context_planes)
    if img.shape[0] != model.in_channels:
        raise ValueError(f"the model takes {channels} channel(s) but the image has {img.channels}"
                         f"{' (declare the channel axis with channel_axis=...)' if channel_axis is None else ''}")
    spatial = tuple(int(s) for s in img.shape[1:])
    if len(spatial) < model.dims:
        raise ValueError(f"this is a {model.dims}D model but the image has only {len(spatial)} spatial axes "
                         f"(shape {tuple(np.shape(image))})")
    return img, spatial


def _check_some_finite(img, items, item_shape, window: int = 64):
    """Refuse an image with no finite value, checking a few small windows (cheap on huge lazy data)."""
    picks = {items[0], items[len(items) // 2], items[-1]}
    for idx in picks:
        for frac in (0.5, 0.1, 0.9):
            starts = [int(max(0, s * frac - window // 2)) for s in item_shape]
            block = img[(slice(None),) + idx + tuple(slice(a, a + window) for a in starts)]
            if np.isfinite(block).any():
                return
    full = np.asarray(img[(slice(None),) + items[0]]) if math.prod(item_shape) <= 2**26 else None
    if full is None or not np.isfinite(full).any():
        raise ValueError("the image has no finite values (all NaN or infinite): check the input file")


def _positive(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive whole number, got {value!r}")
    return int(value)


def _whole(value, what: str) -> int:
    """A whole number of pixels >= 0 (a float like 2.5 would be truncated without a word)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{what} must be a whole number of pixels (0 or more), got {value!r}")
    return int(value)


def _fraction(value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 <= value < 1:
        raise ValueError(f"min_fraction must be a number from 0 (keep every object) to below 1, got {value!r}")
    return float(value)


def plan_prediction(model, image, *, labels: bool = True, probabilities: bool = False, tile="auto",
                    batch_size: int | None = None, device="auto", channel_axis: int | None = None,
                    halo: int | None = None, min_size: int | None = None, min_fraction: float | None = None,
                    workers: int | None = None, stitch_planes: float | None = None, stitch_trim: bool = True,
                    tta: bool = False, mixed_precision: bool | None = None) -> PredictionPlan:
    """Check a prediction's inputs and outputs and plan its tiles; nothing is computed or written.

    Parameters
    ----------
    model : Model or path
    image : array-like
        Spatial axes last (numpy, dask, zarr, memory-mapped TIFF; any real dtype). Leading axes beyond the
        model's dims (a stack for a 2D model, time) are processed item by item.
    labels, probabilities : bool
        What to compute: labels ``(*spatial)`` (see `napari_unet.predict.segment`), float32 class
        probabilities ``(K, *spatial)``, or both from the same forward passes.
    tile : "auto", int, tuple or None
        Tile size (rounded down to a multiple of ``2**depth``); None = one pass over the whole image.
        ``"auto"`` fits the fewest tiles the memory budget allows to the image (`auto_tile_size`).
    batch_size : int, optional
        Tiles per forward pass (default 1 on CPU and for 3D models, 4 for 2D models on GPU).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    channel_axis : int, optional
        Axis holding the image's channels (required for multi-channel models).
    halo : int, optional
        Context per tile side; default exact in 2D (``model.halo``), in 3D an eighth of the tile
        (approximate at the seams; ``halo=model.halo`` is exact but costs ``(T / (T - 2 * halo))**3``).
    min_size : int, optional
        Instance mode: smallest object kept (pixels).
    min_fraction : float, optional
        Instance mode: objects smaller than this fraction of their item's (image's, volume's) median object
        are dropped as fragments; default `napari_unet.postprocess.FRAGMENT_FRACTION` (0.2), 0 keeps every
        object of at least ``min_size`` (small objects among big ones, e.g. micronuclei).
    workers : int, optional
        CPU only: forward passes run concurrently, each with ``torch.get_num_threads() // workers``
        threads. Default: one per torch thread, at most 4.
    stitch_planes : float, optional
        2D instance models on stacks (``(..., Z, Y, X)``): link each plane's objects to the previous
        plane's (overlap at least this; True: `napari_unet.stitch.DEFAULT_STITCH_THRESHOLD`), so an object
        seen in several planes gets one 3D id. Off by default: a time series is not a z-stack.
    stitch_trim : bool
        With ``stitch_planes``: drop each linked object's small end sections (a 2D model's blurred caps)
        and, in stacks whose objects span several planes, the objects seen in one plane only
        (`napari_unet.stitch.trimmed_sections`; the default). False keeps every linked object whole,
        e.g. thin objects that are real; refused without ``stitch_planes``.
    tta : bool
        Test-time augmentation: average the probabilities over the 8 quarter turns and mirror images of
        each tile (in the YX plane). 8 forward passes instead of one; off by default.
    mixed_precision : bool, optional
        None (automatic): forward passes in bf16 on GPUs and on CPUs with bf16 units, fp16 on older GPUs,
        fp32 elsewhere (`napari_unet.device.compute_precision`). bf16 takes about half the time of fp32
        on such a CPU and moves the labels by a few pixels in ten thousand; False: fp32, exact and the
        same on every machine; True: mixed even where it is emulated (slower).

    Raises
    ------
    ValueError, TypeError
        On bad input, saying which parameter to change.
    """
    model = as_model(model)
    if not (labels or probabilities):
        raise ValueError("nothing to compute: ask for labels=True, probabilities=True or both")
    dev = resolve_device(device)
    precision = compute_precision(dev, mixed_precision)
    if batch_size is None:
        # GPU 2D: batches of 4 keep it busy; 3D: one big tile beats a batch of small ones (halo cost ^3)
        batch_size = 4 if dev.type == "cuda" and model.dims == 2 else 1
    batch_size = _positive(batch_size, "batch size")
    n_workers = _cpu_workers(dev, workers)
    img, spatial = _channels_first(model, image, channel_axis)
    stitch = check_stitch(stitch_planes, mode=model.mode, dims=model.dims, spatial_ndim=len(spatial),
                          labels=bool(labels))
    stitch_trim = check_trim(stitch_trim, stitch)
    items = tuple(iter_items(spatial, model.dims))
    item_shape = spatial[len(spatial) - model.dims:]
    tile_sizes, halo = _tiles(model, dev, item_shape, tile, halo, batch_size, n_workers, precision)
    tiles: tuple[Tile, ...] = tuple(plan_tiles(item_shape, tile_sizes, halo, 2**model.depth))
    if tile is None:
        _check_whole_pass_fits(model, dev, tiles[0], min(batch_size, len(items)), precision)
    batches = -(-len(tiles) * len(items) // batch_size)
    n_workers = max(1, min(n_workers, batches))
    threads = max(1, torch.get_num_threads() // n_workers) if dev.type == "cpu" else torch.get_num_threads()
    if model.mode != "instance" and (min_fraction is not None or min_size is not None):
        # they drop small objects; a semantic model's classes have none, so they would be ignored silently
        raise ValueError(f"{'min_fraction' if min_fraction is not None else 'min_size'} drops small objects of an "
                         "instance model, but this model is semantic: leave it out")
    min_fraction = FRAGMENT_FRACTION if min_fraction is None else _fraction(min_fraction)
    min_size = None if min_size is None else _whole(min_size, "min_size")
    if not isinstance(tta, (bool, np.bool_)):
        raise TypeError(f"tta must be True or False, got {tta!r}")
    _check_some_finite(img, items, item_shape)  # before the caller creates any output file
    return PredictionPlan(model, dev, img, items, item_shape, tiles, tile_sizes, halo, batch_size, spatial,
                          labels=bool(labels), probabilities=bool(probabilities), min_size=min_size,
                          min_fraction=min_fraction, workers=n_workers, threads=threads, stitch_planes=stitch,
                          stitch_trim=stitch_trim, tta=bool(tta), precision=precision)
