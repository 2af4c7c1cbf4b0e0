"""Tiled, seam-free prediction: `iter_predict` yields progress events; `predict` and `segment` drain it.

Work flows through a small pipeline so that neither the disk nor the processor waits for the other::

    reader thread  --(queue)-->  compute worker(s)  --(queue)-->  writer thread  --(events)-->  generator
    reads + normalizes tiles     forward passes                   crops, writes ``out``, in order

On CPU several single-threaded compute workers run at once (no OpenMP barrier to stall on a busy
machine); on a GPU one worker keeps the device busy while the reader copies the next batch in on a side
stream and the previous results go back on another. The generator only relays the writer's progress,
so a consumer can stop between any two events: closing the generator (or an exception, Ctrl-C
included) stops every thread and joins it before the generator returns. At most
``workers + PREFETCH + 1`` batches are in flight, and a batch's slot is released only when its event has
been handed to the consumer, so memory stays bounded whatever the size of the stack, and a consumer
that stops pulling events stops the work.
"""
from __future__ import annotations

import copy
import queue
import threading
import time
import weakref
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import as_channels_first, iter_items
from .io import release_pages as _release_pages
from .device import amp_dtype, autocast, free_memory, is_out_of_memory, memory_format, resolve_device
from .model import Model
from .conventions import written_labels
from .postprocess import instance_labels
from .tiling import choose_tile_size, normalize_tile_size, plan_tiles, read_padded

__all__ = ["PredictEvent", "PredictionPlan", "plan_prediction", "iter_predict", "predict", "segment", "auto_tile_size",
           "labels_dtype", "inference_network"]

#: CPU tiles above this many pixels run slower per pixel (caches; benchmarks/cpu_levers.py, section E).
CPU_CACHE_PIXELS = 2**18
#: At most this many concurrent forward passes on CPU by default (each one holds a tile's activations).
MAX_CPU_WORKERS = 4
#: Batches read ahead of the compute workers.
PREFETCH = 2


@dataclass
class PredictEvent:
    """A progress report from `iter_predict`.

    Attributes
    ----------
    kind : str
        ``"start"``, ``"tiles"`` (tiles written), ``"item"`` (a plane/volume finished), ``"warning"``
        (``message`` says what happened, e.g. an out-of-memory retry) or ``"done"`` (``result`` is set).
    done, total : int
        Tiles finished and tiles in all.
    fraction, elapsed : float
    region : tuple of slice or None
        Part of the output (spatial axes, stack index included) written since the previous event. It is
        in ``out`` when the event is yielded (instance labels: a plane/volume is in ``out`` at its
        ``"item"`` event, since objects are separated over the whole item).
    result : array or None
        The output array (``out`` when one was given).
    """

    kind: str
    done: int = 0
    total: int = 0
    fraction: float = 0.0
    elapsed: float = 0.0
    region: tuple | None = None
    result: Any = None
    message: str = ""


def _as_model(model) -> Model:
    if isinstance(model, (str, Path)):
        from .modelfile import load_model

        return load_model(model)
    if not isinstance(model, Model):
        raise TypeError(f"model must be a napari_unet Model or a model file path, got {type(model).__name__}")
    return model


def labels_dtype(model: Model):
    """Integer dtype `segment` writes for this model."""
    if model.mode == "instance":
        return np.int32
    return written_labels(model.config.class_ids).dtype


# ------------------------------------------------------------------------------------ the network
def _fold_batchnorm(module: nn.Module) -> None:
    """Fold every eval-mode BatchNorm that follows a convolution in an ``nn.Sequential`` into it.

    In eval mode BatchNorm is a per-channel affine map, so it can be merged into the convolution's
    weights and bias: one pass over the activations less per block (about 10% of the CPU time), and
    the same function up to float rounding.
    """
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    for child in module.children():
        _fold_batchnorm(child)
    if not isinstance(module, nn.Sequential):
        return
    for i in range(len(module) - 1):
        conv, norm = module[i], module[i + 1]
        if (isinstance(conv, convs) and isinstance(norm, norms) and not norm.training
                and norm.running_mean is not None and norm.running_var is not None):
            module[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm)
            module[i + 1] = nn.Identity()


def inference_network(network: nn.Module, device, *, fold_batchnorm: bool = True, channels_last: bool | None = None,
                      dims: int | None = None) -> nn.Module:
    """A copy of ``network`` prepared for prediction on ``device``; the original is left untouched.

    Parameters
    ----------
    network : torch.nn.Module
        (N, C, *spatial) -> (N, K, *spatial).
    device : str or torch.device
    fold_batchnorm : bool
        Merge eval-mode BatchNorm layers into the preceding convolutions (see `_fold_batchnorm`).
    channels_last : bool, optional
        Store weights (and inputs, see `iter_predict`) channels-last; default where it is faster.
    dims : int, optional
        Spatial dimensionality (read from ``network.dims`` when there is one).

    Returns
    -------
    torch.nn.Module
        In eval mode, on ``device``; the user's model is neither moved nor modified.
    """
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    dims = int(dims if dims is not None else getattr(network, "dims", 2))
    try:
        net = copy.deepcopy(network)
    except Exception:  # noqa: BLE001 - some modules cannot be copied; use them as they are
        net = network
    net.eval()
    if fold_batchnorm and net is not network:
        _fold_batchnorm(net)
    net = net.to(dev)
    fmt = memory_format(dims, dev) if channels_last in (None, True) else None
    if channels_last and fmt is None:
        fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    if fmt is not None and net is not network:
        net = net.to(memory_format=fmt)
    net._napari_unet_memory_format = fmt
    return net


_prepared: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_prepared_lock = threading.Lock()


def _fingerprint(network: nn.Module) -> tuple:
    """Changes whenever the weights change (in-place updates bump a tensor's version), the tensors are
    replaced, or ``forward`` is overridden on the instance."""
    tensors = list(network.parameters()) + list(network.buffers())
    return (tuple((id(t), t._version) for t in tensors), id(network.__dict__.get("forward")))


def _cached_inference_network(network: nn.Module, dev: torch.device, dims: int) -> nn.Module:
    """`inference_network`, reused while ``network`` is unchanged: click-to-segment predicts small
    windows one after another, and copying and folding a network costs 10-25 ms each time."""
    key = (str(dev), dims, _fingerprint(network))
    with _prepared_lock:
        try:
            hit = _prepared.get(network)
        except TypeError:  # not weak-referenceable
            hit = None
        if hit is not None and hit[0] == key:
            return hit[1]
    net = inference_network(network, dev, dims=dims)
    with _prepared_lock:
        try:
            _prepared[network] = (key, net)
        except TypeError:
            pass
    return net


# ------------------------------------------------------------------------------ tiles and workers
def _bytes_per_pixel(model: Model, device: torch.device) -> float:
    # Activations alive at once at full resolution in eval mode: measured 367 B/px for base 16 in fp32
    # (2D, 1120^2 tile; 273 B/voxel in 3D), i.e. about 6 feature maps of base_channels; 7 leaves a margin.
    itemsize = 2 if amp_dtype(device) is not None else 4
    return model.config.base_channels * itemsize * 7.0


def _memory_budget(device: torch.device) -> float:
    """Bytes of activations the tiles in flight may take: a third of the free GPU memory; on CPU an
    eighth of the available memory, between 256 MB and 2 GB."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 3
    from .io import available_memory

    return float(min(2e9, max(256e6, available_memory() / 8)))


def auto_tile_size(model: Model, device: torch.device, batch_size: int = 1, workers: int = 1) -> tuple:
    """The largest tile side per spatial axis that keeps activations within the memory budget.

    The budget (a third of the free memory on CUDA; on CPU an eighth of the available memory, at most
    2 GB) is shared by the ``batch_size`` tiles of each of the ``workers`` concurrent forward passes.
    The side is rounded to the network's alignment, never smaller than what the halo needs and at most
    4096 (2D) or 512 (3D). `iter_predict` then fits the tiles to the image (`tiling.choose_tile_size`).
    """
    pixels = _memory_budget(device) / _bytes_per_pixel(model, device) / max(1, batch_size) / max(1, workers)
    align = 2**model.depth
    side = int(pixels ** (1.0 / model.dims)) // align * align
    lower = 2 * _default_halo(model) + align
    side = int(min(max(side, lower), 4096 if model.dims == 2 else 512))
    return (side,) * model.dims


def _default_halo(model: Model, tile_side: int | None = None) -> int:
    """Context kept on each side of a tile when none is asked for.

    2D: the exact halo (tiled == whole image, at a cost of (T / (T - 2h))^2, 1.2x for 2 x 2 tiles of a
    2048^2 image). 3D: the exact halo costs (T / (T - 2h))^3 (8x for 384^3 tiles), so the halo is the
    largest multiple of the alignment up to an eighth of the tile (cost at most (4/3)^3 = 2.4x), cropped
    at the midpoint of the overlap: 16 for the 128^3 tiles of a CPU, 64 for the 512^3 tiles of a big GPU.
    Measured on depth-4 networks, classes differ from whole-volume inference on 0.03-0.05% (trained) to
    0.4-0.7% (random weights) of the voxels at halo 16, 5-10x fewer at 32; blending the overlap instead
    of cropping it was not closer at equal cost (BENCHMARKS.md, "3D tiling").
    """
    align = 2**model.depth
    if model.dims == 2:
        return model.halo
    if tile_side is None:
        return max(align, model.halo // 4 // align * align)
    return int(min(model.halo, max(align, int(tile_side) // 8 // align * align)))


def _per_thread_torch_threads() -> bool:
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
        return int(workers) if device.type == "cpu" and _per_thread_torch_threads() else 1
    if device.type != "cpu" or not _per_thread_torch_threads():
        return 1
    return max(1, min(MAX_CPU_WORKERS, torch.get_num_threads()))


def _prepare(model: Model, image, channel_axis):
    if channel_axis is None and model.in_channels > 1:
        raise ValueError(f"this model takes {model.in_channels} channels: declare the image's channel axis "
                         "(channel_axis=... / --channel-axis)")
    img = as_channels_first(image, channel_axis)
    if img.shape[0] != model.in_channels:
        raise ValueError(f"the model takes {model.in_channels} channel(s) but the image has {img.shape[0]}"
                         f"{' (declare the channel axis)' if channel_axis is None else ''}")
    spatial = tuple(int(s) for s in img.shape[1:])
    if len(spatial) < model.dims:
        raise ValueError(f"this is a {model.dims}D model but the image has only {len(spatial)} spatial axes "
                         f"(shape {tuple(np.shape(image))})")
    if np.issubdtype(np.dtype(img.dtype), np.complexfloating) or np.dtype(img.dtype) == object:
        raise TypeError(f"cannot segment an image of dtype {img.dtype}: use real numbers")
    return img, spatial


@dataclass
class PredictionPlan:
    """Everything `iter_predict` will do, checked before any work or output file is created.

    ``workers`` forward passes run at once (CPU), each with ``threads`` torch threads.
    """

    model: Model
    device: torch.device
    image: Any
    items: list
    item_shape: tuple
    tiles: list
    tile_size: tuple | None
    halo: int
    batch_size: int
    shape: tuple
    dtype: Any
    workers: int = 1
    threads: int = 1

    @property
    def total_tiles(self) -> int:
        return len(self.tiles) * len(self.items)

    def describe(self) -> str:
        size = "x".join(map(str, self.tile_size)) if self.tile_size and len(self.tiles) > 1 else "whole image"
        par = f", {self.workers} workers x {self.threads} threads" if self.workers > 1 else ""
        return (f"{len(self.items)} item(s) x {len(self.tiles)} tile(s) ({size}, halo {self.halo}), "
                f"batch {self.batch_size}, device {self.device}{par}")


def plan_prediction(model, image, *, tile="auto", batch_size=None, device="auto", channel_axis=None,
                    output="probabilities", halo=None, workers=None) -> PredictionPlan:
    """Check the inputs of `iter_predict` and plan its tiles; raises ValueError/TypeError on bad input."""
    model = _as_model(model)
    if output not in ("probabilities", "labels"):
        raise ValueError(f"output must be 'probabilities' or 'labels', got {output!r}")
    dev = resolve_device(device)
    if batch_size is None:
        # GPU 2D: batches of 4 keep it busy; 3D: one big tile beats a batch of small ones (halo cost ^3)
        batch_size = 4 if dev.type == "cuda" and model.dims == 2 else 1
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch size must be a positive whole number, got {batch_size!r}")
    n_workers = _cpu_workers(dev, workers)
    img, spatial = _prepare(model, image, channel_axis)
    dims, align = model.dims, 2**model.depth
    if halo is not None:
        if int(halo) < 0:
            raise ValueError(f"halo must be >= 0, got {halo}")
        halo = -(-int(halo) // align) * align
    items = iter_items(spatial, dims)
    item_shape = spatial[len(spatial) - dims:]
    if isinstance(tile, str):
        if tile != "auto":
            raise ValueError(f"tile must be 'auto', a positive integer, a tuple or None, got {tile!r}")
        largest = auto_tile_size(model, dev, batch_size, n_workers)
        halo = _default_halo(model, min(largest)) if halo is None else halo
        largest = tuple(max(s, 2 * halo + align) for s in largest)  # an explicit halo may need bigger tiles
        # fit the tiles to the image: fewest tiles, least halo overhead, no cache-hostile giant tiles on CPU
        tile_sizes = choose_tile_size(item_shape, halo, align, float(np.prod(largest)),
                                      cache_pixels=CPU_CACHE_PIXELS if dev.type == "cpu" else None)
    else:
        if halo is None:
            sides = [s for s in np.atleast_1d(np.asarray(tile if tile is not None else [], dtype=object))
                     if isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0]
            halo = _default_halo(model, min(sides) if sides and tile is not None else None)
        tile_sizes = normalize_tile_size(tile, dims, halo, align)
    tiles = plan_tiles(item_shape, tile_sizes, halo, align)
    if output == "probabilities":
        shape, dtype = (model.num_classes,) + spatial, np.dtype(np.float32)
    else:
        shape, dtype = spatial, np.dtype(labels_dtype(model))
    batches = -(-len(tiles) * len(items) // int(batch_size))
    n_workers = max(1, min(n_workers, batches))
    threads = max(1, torch.get_num_threads() // n_workers) if dev.type == "cpu" else torch.get_num_threads()
    _check_some_finite(img, items, item_shape)  # before the caller creates any output file
    return PredictionPlan(model, dev, img, items, item_shape, tiles, tile_sizes, halo, int(batch_size),
                          shape, dtype, n_workers, threads)


# ---------------------------------------------------------------------------------- the pipeline
_END = object()


class _Stopped(Exception):
    """Raised inside a pipeline thread when the pipeline is being shut down."""


class _Runner:
    """Forward passes with out-of-memory recovery: smaller batches first, then smaller tiles.

    Recovery is remembered (the next batches are split up front) so a run pays for one failed
    allocation, not one per batch. A tile that no longer fits is computed as a mosaic of smaller
    tiles with the same halo (`plan_tiles` on the tile itself), which with the exact halo gives the
    same values as the big tile.
    """

    def __init__(self, net, dev, kind: str, halo: int, align: int, dims: int, warn):
        self.net, self.dev, self.kind = net, dev, kind
        self.halo, self.align, self.dims = halo, align, dims
        self.fmt = getattr(net, "_napari_unet_memory_format", None)
        self.warn = warn
        self.max_batch: int | None = None
        self.sub_tile: tuple | None = None
        self.lock = threading.Lock()

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        if self.fmt is not None:
            x = x.contiguous(memory_format=self.fmt)
        with autocast(self.dev):
            logits = self.net(x)
        if self.kind == "classes":  # semantic labels: the argmax is all that is needed (K x less to copy)
            return logits.argmax(1).to(torch.uint8 if logits.shape[1] <= 256 else torch.int32)
        return torch.softmax(logits.float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network on a batch ``(N, C, *tile)``; probabilities ``(N, K, *tile)`` or classes."""
        n, tile = x.shape[0], tuple(x.shape[2:])
        m, sub = self.max_batch, self.sub_tile  # read once: another worker may lower them meanwhile
        if m is not None and n > m:
            return torch.cat([self.forward(x[i:i + m]) for i in range(0, n, m)])
        if sub is not None and any(t > s for t, s in zip(tile, sub)):
            return self._mosaic(x)
        try:
            return self._call(x)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
        # outside the except block, so the failed attempt's tensors (held by the traceback) are freed
        free_memory(self.dev)
        with self.lock:
            if (self.max_batch is not None and n > self.max_batch) or (
                    self.sub_tile is not None and any(t > s for t, s in zip(tile, self.sub_tile))):
                message = None  # another worker has shrunk them meanwhile: just retry
            elif n > 1:
                half = max(1, n // 2)
                self.max_batch = half if self.max_batch is None else min(self.max_batch, half)
                message = (f"out of memory on {self.dev} with {n} tiles at once: retrying {half} at a time "
                           "(use a smaller batch size to avoid this)")
            else:
                smaller = self._smaller(tile)
                if smaller is None:
                    raise MemoryError(f"out of memory on {self.dev} even for a single tile of {tile}: use a smaller "
                                      "tile (--tile / tile=) or another device") from None
                self.sub_tile = smaller if self.sub_tile is None else tuple(
                    min(a, b) for a, b in zip(smaller, self.sub_tile))
                message = (f"out of memory on {self.dev} with one tile of {'x'.join(map(str, tile))}: continuing "
                           f"with tiles of {'x'.join(map(str, self.sub_tile))} (slower; pass a smaller tile to "
                           "avoid this)")
        if message is not None:
            self.warn(message)
        return self.forward(x)

    def _smaller(self, tile):
        """Halve the useful part (tile minus halo) of every axis that can shrink; None at the minimum."""
        minimum = 2 * self.halo + self.align
        out = tuple(min(t, max(minimum, ((t - 2 * self.halo) // 2 + 2 * self.halo) // self.align * self.align))
                    for t in tile)
        return None if out == tuple(tile) else out

    def _mosaic(self, x: torch.Tensor) -> torch.Tensor:
        tile = tuple(int(s) for s in x.shape[2:])
        sub = tuple(min(s, t) for s, t in zip(self.sub_tile, tile))  # only ever shrinks
        result = None
        for t in plan_tiles(tile, sub, self.halo, self.align):
            part = self.forward(x[(slice(None), slice(None)) + t.input])
            if result is None:
                result = torch.empty(part.shape[:-self.dims] + tile, dtype=part.dtype, device=part.device)
            result[(Ellipsis,) + t.output] = part[(Ellipsis,) + t.crop]
        return result


class _Pipeline:
    """Reader, compute workers and writer threads of one `iter_predict` run (see the module docstring)."""

    def __init__(self, plan: PredictionPlan, out, output: str, min_size, t0: float, prob_out=None):
        self.plan, self.out, self.t0 = plan, out, t0
        self.prob_out = prob_out  # labels and probabilities from one pass
        model = plan.model
        self.dev = plan.device
        if self.dev.type == "cuda" and self.dev.index is None:  # torch.cuda.set_device needs an index
            self.dev = torch.device("cuda", torch.cuda.current_device())
        self.whole_item = output == "labels" and model.mode == "instance"
        self.semantic_labels = output == "labels" and not self.whole_item
        self.kind = "classes" if self.semantic_labels and prob_out is None else "probabilities"
        self.min_size = min_size
        self.output = output
        if self.semantic_labels:  # class index -> written label, through the canonical semantic_labels
            self.lut = written_labels(model.config.class_ids)
        work = [(i, t) for i in range(len(plan.items)) for t in range(len(plan.tiles))]
        self.batches = [work[s:s + plan.batch_size] for s in range(0, len(work), plan.batch_size)]
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.inbox: queue.Queue = queue.Queue(max(1, PREFETCH))
        self.results: queue.Queue = queue.Queue()
        self.events: queue.Queue = queue.Queue()
        # slots for batches between the reader and the consumer of the events
        self.slots = threading.Semaphore(plan.workers + PREFETCH + 1)
        self.threads: list[threading.Thread] = []
        net = _cached_inference_network(model.network, self.dev, model.dims)
        self.runner = _Runner(net, self.dev, self.kind, plan.halo, 2**model.depth, model.dims,
                              warn=lambda m: self.events.put(("warning", m)))
        if self.dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one tile shape per run: the autotuning pays at once
            self.copy_stream = torch.cuda.Stream(self.dev)
            self.out_stream = torch.cuda.Stream(self.dev)

    # -- plumbing
    def _put(self, q: queue.Queue, item):
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _get(self, q: queue.Queue):
        while not self.stop.is_set():
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                continue
        raise _Stopped

    def _guard(self, fn, *args):
        try:
            fn(*args)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the generator, which raises it
            if self.error is None:
                self.error = exc
            self.stop.set()
            self.events.put(("error", exc))

    def start(self):
        names = [("reader", self._read, ())] + [(f"compute-{k}", self._compute, ()) for k in range(self.plan.workers)]
        names.append(("writer", self._write, ()))
        for name, fn, args in names:
            t = threading.Thread(target=self._guard, args=(fn,) + args, name=f"napari-unet-predict-{name}",
                                 daemon=True)
            self.threads.append(t)
            t.start()

    def shutdown(self):
        """Stop every thread and wait for it (a forward pass in progress is finished first)."""
        self.stop.set()
        for t in self.threads:
            if t is not threading.current_thread():
                t.join()
        self.threads = []

    # -- stages
    def _item_view(self, array, index, lead=()):
        try:
            return array[tuple(lead) + tuple(index)]
        except Exception:  # noqa: BLE001 - only a hint for memory-mapped arrays
            return None

    def _raw_dtype(self):
        """The torch dtype in which raw tiles travel to the GPU (normalized there), or None.

        On the GPU the host would otherwise be the bottleneck: normalizing to float32 in numpy costs
        more than the forward pass, and float32 moves twice the bytes of uint16 over PCIe. Only the
        stock `Model.preprocess` (an affine map per channel) is replicated on the device.
        """
        if self.dev.type != "cuda" or type(self.plan.model).preprocess is not Model.preprocess:
            return None
        kinds = {np.dtype(k): getattr(torch, name, None) for k, name in [
            ("u1", "uint8"), ("i1", "int8"), ("i2", "int16"), ("u2", "uint16"), ("i4", "int32"), ("u4", "uint32"),
            ("i8", "int64"), ("f2", "float16"), ("f4", "float32"), ("f8", "float64")]}
        return kinds.get(np.dtype(self.plan.image.dtype))

    def _read(self):
        plan, model = self.plan, self.plan.model
        pinned = self.dev.type == "cuda"
        raw = self._raw_dtype()
        if raw is not None:
            config = model.config
            low = torch.tensor(config.norm_low, dtype=torch.float32)
            high = torch.tensor(config.norm_high, dtype=torch.float32)
            view = (1, -1) + (1,) * model.dims
            scale = (1.0 / torch.clamp(high - low, min=1e-6)).reshape(view).to(self.dev)
            low = low.reshape(view).to(self.dev)
        source = plan.image.array if getattr(plan.image, "axis", 0) is None else None
        mapped = isinstance(source, np.memmap)
        last_tile = len(plan.tiles) - 1
        for seq, batch in enumerate(self.batches):
            while not self.slots.acquire(timeout=0.05):
                if self.stop.is_set():
                    raise _Stopped
            tile_shape = tuple(s.stop - s.start for s in plan.tiles[batch[0][1]].input)
            shape = (len(batch), model.in_channels) + tile_shape
            host = torch.empty(shape, dtype=raw or torch.float32, pin_memory=pinned)
            x = host.numpy()
            for j, (i, t) in enumerate(batch):
                block = read_padded(plan.image, plan.tiles[t].input, plan.item_shape, index=plan.items[i])
                x[j] = block if raw is not None else model.preprocess(block)
                if mapped and t == last_tile:
                    _release_pages(self._item_view(source, plan.items[i]))
            if raw is None and not np.isfinite(x).all():  # missing values count as 0 after normalization
                np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            ready = None
            if pinned:  # copy to the GPU now, on a side stream, while the previous batch computes
                with torch.cuda.stream(self.copy_stream):
                    host = host.to(self.dev, non_blocking=True)
                    if raw is not None:  # Model.preprocess, on the device: float32, minus low, times scale
                        host = host.to(torch.float32).sub_(low).mul_(scale)
                        torch.nan_to_num_(host, nan=0.0, posinf=0.0, neginf=0.0)
                    ready = torch.cuda.Event()
                    ready.record(self.copy_stream)
            self._put(self.inbox, (seq, batch, host, ready))
        for _ in range(self.plan.workers):
            self._put(self.inbox, _END)

    def _compute(self):
        if self.dev.type == "cpu":
            torch.set_num_threads(self.plan.threads)  # per thread with OpenMP (checked in _cpu_workers)
        elif self.dev.type == "cuda":
            torch.cuda.set_device(self.dev)
        with torch.inference_mode():
            while True:
                msg = self._get(self.inbox)
                if msg is _END:
                    self._put(self.results, _END)
                    return
                seq, batch, x, ready = msg
                if ready is not None:
                    stream = torch.cuda.current_stream(self.dev)
                    stream.wait_event(ready)
                    x.record_stream(stream)
                y = self.runner.forward(x)
                done = None
                if self.dev.type == "cuda":  # copy back on a side stream; the writer waits for `done`
                    y = y.contiguous()  # channels_last -> plain layout on the GPU: the copy is one memcpy
                    host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
                    self.out_stream.wait_stream(torch.cuda.current_stream(self.dev))
                    with torch.cuda.stream(self.out_stream):
                        host.copy_(y, non_blocking=True)
                        y.record_stream(self.out_stream)
                        done = torch.cuda.Event()
                        done.record(self.out_stream)
                    y = host
                elif y.device.type != "cpu":
                    y = y.cpu()
                self._put(self.results, (seq, batch, y, done))

    def _write(self):
        plan, out = self.plan, self.out
        total = plan.total_tiles
        pending, next_seq, ended, done = {}, 0, 0, 0
        buffers: dict = {}
        remaining: dict = {}  # tiles still to write, per item
        mapped = isinstance(out, np.memmap)
        prob_out = self.prob_out
        next_id = 1
        while True:
            msg = self._get(self.results)
            if msg is _END:
                ended += 1
                if ended == plan.workers:
                    break
                continue
            pending[msg[0]] = msg
            while next_seq in pending:  # in order: events report items in the order of the stack
                _, batch, y, ready = pending.pop(next_seq)
                next_seq += 1
                if ready is not None:
                    ready.synchronize()
                y = y.numpy()
                groups: list = []
                for j, (i, t) in enumerate(batch):
                    tile, idx = plan.tiles[t], plan.items[i]
                    p = y[j][(Ellipsis,) + tile.crop]
                    if prob_out is not None:
                        prob_out[(slice(None),) + idx + tile.output] = p
                    if self.whole_item:
                        buf = buffers.get(i)
                        if buf is None:
                            buf = buffers[i] = np.empty((plan.model.num_classes,) + plan.item_shape, np.float32)
                        buf[(slice(None),) + tile.output] = p
                    elif self.semantic_labels:
                        out[idx + tile.output] = self.lut[p if self.kind == "classes" else p.argmax(0)]
                    else:
                        out[(slice(None),) + idx + tile.output] = p
                    remaining[i] = remaining.get(i, len(plan.tiles)) - 1
                    if remaining[i] == 0:
                        self._release_output(idx, labels=mapped and not self.whole_item)
                    done += 1
                    if not groups or groups[-1][0] != i:
                        groups.append((i, []))
                    groups[-1][1].append(idx + tile.output)
                for g, (i, regions) in enumerate(groups):
                    ev = PredictEvent("tiles", done, total, done / total, time.perf_counter() - self.t0,
                                      region=_union(regions))
                    self.events.put(("tiles", ev, g == len(groups) - 1))
                    if remaining[i] == 0:
                        del remaining[i]
                    if self.whole_item and i not in remaining:
                        lab = instance_labels(buffers.pop(i), min_size=self.min_size)
                        n = int(lab.max())
                        lab[lab > 0] += next_id - 1  # ids unique across the planes/volumes of a stack
                        next_id += n
                        idx = plan.items[i]
                        out[idx] = lab
                        if mapped:
                            self._release_output(idx, probabilities=False)
                        self.events.put(("item", PredictEvent(
                            "item", done, total, done / total, time.perf_counter() - self.t0,
                            region=idx + tuple(slice(0, s) for s in plan.item_shape)), False))
        self.events.put(("end",))

    def _release_output(self, idx, labels: bool = True, probabilities: bool = True):
        """Drop the written pages of a finished item from memory-mapped outputs (bounded RSS)."""
        if self.output == "labels":
            if labels:
                _release_pages(self._item_view(self.out, idx))
            prob = self.prob_out
        else:
            prob = self.out if labels else None
        if probabilities and isinstance(prob, np.memmap):
            for k in range(prob.shape[0]):
                _release_pages(self._item_view(prob, idx, (k,)))

    def events_until_done(self):
        """Yield the writer's events; a batch's slot is freed once its last event is handed over."""
        while True:
            try:
                msg = self.events.get(timeout=0.1)
            except queue.Empty:
                if self.error is not None:
                    raise self.error
                continue
            kind = msg[0]
            if kind == "error":
                raise msg[1]
            if kind == "end":
                return
            if kind == "warning":
                yield "warning", msg[1]
                continue
            _, ev, release = msg
            yield kind, ev
            if release:
                self.slots.release()


def iter_predict(model, image, *, tile="auto", batch_size: int | None = None, device="auto", out=None,
                 channel_axis: int | None = None, output: str = "probabilities", halo: int | None = None,
                 min_size: int | None = None, workers: int | None = None, probabilities_out=None):
    """Predict an image tile by tile, yielding `PredictEvent` progress reports.

    Reading, computing and writing overlap in threads (see the module docstring); memory stays bounded
    by a few batches of tiles whatever the size of the image when ``out`` is on disk. Closing the
    generator early stops and joins every thread.

    Parameters
    ----------
    model : Model or path
    image : array-like
        Spatial axes last (numpy, dask, zarr, memory-mapped TIFF; any real dtype). Leading axes beyond the
        model's dims (a stack for a 2D model, time) are processed item by item; only the tiles being
        worked on are read.
    tile : "auto", int, tuple or None
        Tile size (rounded down to a multiple of ``2**depth``); None = one pass over the whole image.
        ``"auto"`` fits the fewest tiles the memory budget allows to the image (`auto_tile_size`,
        `napari_unet.tiling.choose_tile_size`).
    batch_size : int, optional
        Tiles per forward pass (default 1 on CPU and for 3D models, 4 for 2D models on GPU); tiles of
        consecutive planes of a stack share a batch.
    device : str
    out : array-like, optional
        Where to write (zarr array, memmap...); written piece by piece so memory stays bounded.
    channel_axis : int, optional
        Axis holding the image's channels (required for multi-channel models).
    output : {"probabilities", "labels"}
        Probabilities ``(K, *spatial)`` float32, or labels ``(*spatial)`` (see `segment`).
    halo : int, optional
        Context per tile side; default exact in 2D (``model.halo``: tiled equals whole-image), in 3D an
        eighth of the tile (approximate at the seams; ``halo=model.halo`` is exact but costs
        ``(T / (T - 2 * halo))**3``).
    min_size : int, optional
        Instance mode: smallest object kept (pixels).
    workers : int, optional
        CPU only: forward passes run concurrently, each with ``torch.get_num_threads() // workers``
        threads. Default: one per torch thread, at most 4.
    probabilities_out : array-like, optional
        With ``output="labels"``: also write the class probabilities, ``(K, *spatial)`` float32, here,
        from the same forward passes (the network runs once for both).

    Yields
    ------
    PredictEvent
        The last one has ``kind == "done"`` and ``result``. When an event is yielded, its ``region``
        has been written to ``out``.
    """
    t0 = time.perf_counter()
    plan = plan_prediction(model, image, tile=tile, batch_size=batch_size, device=device,
                           channel_axis=channel_axis, output=output, halo=halo, workers=workers)
    if probabilities_out is not None:  # checked before the labels array is allocated
        if output != "labels":
            raise ValueError("probabilities_out goes with output='labels' (output='probabilities' writes them to out)")
        needed = (plan.model.num_classes,) + tuple(plan.shape)
        if tuple(probabilities_out.shape) != needed:
            raise ValueError(f"probabilities_out has shape {tuple(probabilities_out.shape)} but the probabilities "
                             f"need {needed}")
        if not np.issubdtype(np.dtype(probabilities_out.dtype), np.floating):
            raise TypeError(f"probabilities_out has dtype {probabilities_out.dtype}: probabilities need a float "
                            "array (e.g. float32)")
    if out is None:
        from .io import allocate

        out = allocate(plan.shape, plan.dtype)
    elif tuple(out.shape) != plan.shape:
        raise ValueError(f"out has shape {tuple(out.shape)} but the result needs {plan.shape}")
    total = plan.total_tiles
    yield PredictEvent("start", 0, total, 0.0, time.perf_counter() - t0, message=plan.describe())
    pipeline = _Pipeline(plan, out, output, min_size, t0, prob_out=probabilities_out)
    saved_threads = torch.get_num_threads()
    done = 0
    try:
        pipeline.start()
        for kind, ev in pipeline.events_until_done():
            if kind == "warning":
                yield PredictEvent("warning", done, total, done / total, time.perf_counter() - t0, message=ev)
                continue
            done = ev.done
            yield ev
    finally:  # also on close() and Ctrl-C: no thread outlives the generator
        pipeline.shutdown()
        # a worker's set_num_threads also sets the count that threads created later start with
        torch.set_num_threads(saved_threads)
    yield PredictEvent("done", total, total, 1.0, time.perf_counter() - t0, result=out,
                       message=f"predicted {total} tile(s) in {time.perf_counter() - t0:.1f} s")


def _check_some_finite(img, items, item_shape, window: int = 64):
    """Refuse an image with no finite value, checking a few small windows (cheap on huge lazy data)."""
    picks = {items[0], items[len(items) // 2], items[-1]}
    for idx in picks:
        for frac in (0.5, 0.1, 0.9):
            starts = [int(max(0, s * frac - window // 2)) for s in item_shape]
            block = img[(slice(None),) + idx + tuple(slice(a, a + window) for a in starts)]
            if np.isfinite(block).any():
                return
    full = np.asarray(img[(slice(None),) + items[0]]) if np.prod(item_shape) <= 2**26 else None
    if full is None or not np.isfinite(full).any():
        raise ValueError("the image has no finite values (all NaN or infinite): check the input file")


def _union(regions):
    """Smallest box holding all regions (same leading index)."""
    first = regions[0]
    out = []
    for axis in range(len(first)):
        sl = [r[axis] for r in regions]
        if isinstance(sl[0], slice):
            out.append(slice(min(s.start for s in sl), max(s.stop for s in sl)))
        else:
            out.append(sl[0])
    return tuple(out)


def predict(model, image, *, progress=None, **kwargs):
    """Class probabilities, float32 shaped ``(K, *spatial)``; see `iter_predict` for the parameters.

    Examples
    --------
    >>> prob = predict(model, image, tile=512)  # doctest: +SKIP
    """
    from .progress import drain

    with closing(iter_predict(model, image, output="probabilities", **kwargs)) as events:
        return drain(events, progress).result


def segment(model, image, *, progress=None, **kwargs):
    """Integer labels shaped like the image's spatial axes; see `iter_predict` for the parameters.

    Semantic models write each pixel's class id with the background (id 1) as 0; instance models write
    object ids (unique across a stack), touching objects separated.
    """
    from .progress import drain

    with closing(iter_predict(model, image, output="labels", **kwargs)) as events:
        return drain(events, progress).result
