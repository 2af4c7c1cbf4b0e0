"""Tiled, seam-free prediction: `iter_predict` yields progress events; `predict` and `segment` drain it."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import as_channels_first, iter_items
from .device import amp_dtype, autocast, resolve_device
from .model import Model
from .postprocess import instance_labels, labels_from_probabilities, semantic_labels
from .tiling import normalize_tile_size, plan_tiles, read_padded

__all__ = ["PredictEvent", "PredictionPlan", "plan_prediction", "iter_predict", "predict", "segment", "auto_tile_size", "labels_dtype"]


@dataclass
class PredictEvent:
    """A progress report from `iter_predict`.

    Attributes
    ----------
    kind : str
        ``"start"``, ``"tiles"`` (a batch of tiles written), ``"item"`` (a plane/volume finished) or
        ``"done"`` (``result`` is set).
    done, total : int
        Tiles finished and tiles in all.
    fraction, elapsed : float
    region : tuple of slice or None
        Part of the output (spatial axes, stack index included) written since the previous event.
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
    return semantic_labels(np.zeros((model.num_classes, 1)), model.config["class_ids"]).dtype


def _bytes_per_pixel(model: Model, device: torch.device) -> float:
    # activations alive at full resolution (input, two conv outputs, skip, up-conv, concat) plus the
    # coarser levels (half as much again per level in 2D): about 12 feature maps of base_channels floats
    itemsize = 2 if amp_dtype(device) is not None else 4
    return model.config["base_channels"] * itemsize * 12.0


def auto_tile_size(model: Model, device: torch.device, batch_size: int = 1) -> tuple:
    """A tile size per spatial axis that keeps activations within a memory budget.

    On CPU the budget is 1 GB; on CUDA a third of the free memory. The tile is rounded to the network's
    alignment and never smaller than what the exact halo needs.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free / 3
    else:
        budget = 1e9
    pixels = budget / _bytes_per_pixel(model, device) / max(1, batch_size)
    align = 2**model.depth
    side = int(pixels ** (1.0 / model.dims)) // align * align
    lower = 2 * model.halo + 2 * align if model.dims == 2 else 2 * align * 4
    side = int(min(max(side, lower), 4096 if model.dims == 2 else 512))
    return (side,) * model.dims


def _default_halo(model: Model) -> int:
    # 2D: the exact halo (tiled == whole image). 3D: the exact halo costs (T / (T - 2h))^3, so a quarter
    # of it (cropped at the midpoint of the overlap) is the default; see README "3D tiling".
    return model.halo if model.dims == 2 else max(2**model.depth, model.halo // 4 // 2**model.depth * 2**model.depth)


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
    """Everything `iter_predict` will do, checked before any work or output file is created."""

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

    @property
    def total_tiles(self) -> int:
        return len(self.tiles) * len(self.items)

    def describe(self) -> str:
        size = "x".join(map(str, self.tile_size)) if self.tile_size and len(self.tiles) > 1 else "whole image"
        return (f"{len(self.items)} item(s) x {len(self.tiles)} tile(s) ({size}, halo {self.halo}), "
                f"batch {self.batch_size}, device {self.device}")


def plan_prediction(model, image, *, tile="auto", batch_size=None, device="auto", channel_axis=None,
                    output="probabilities", halo=None) -> PredictionPlan:
    """Check the inputs of `iter_predict` and plan its tiles; raises ValueError/TypeError on bad input."""
    model = _as_model(model)
    if output not in ("probabilities", "labels"):
        raise ValueError(f"output must be 'probabilities' or 'labels', got {output!r}")
    dev = resolve_device(device)
    if batch_size is None:
        batch_size = 4 if dev.type == "cuda" else 1
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch size must be a positive whole number, got {batch_size!r}")
    img, spatial = _prepare(model, image, channel_axis)
    dims, align = model.dims, 2**model.depth
    halo = _default_halo(model) if halo is None else int(halo)
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    halo = -(-halo // align) * align
    if isinstance(tile, str):
        if tile != "auto":
            raise ValueError(f"tile must be 'auto', a positive integer, a tuple or None, got {tile!r}")
        tile_sizes = normalize_tile_size(auto_tile_size(model, dev, batch_size), dims, halo, align)
    else:
        tile_sizes = normalize_tile_size(tile, dims, halo, align)
    items = iter_items(spatial, dims)
    item_shape = spatial[len(spatial) - dims:]
    tiles = plan_tiles(item_shape, tile_sizes, halo, align)
    if output == "probabilities":
        shape, dtype = (model.num_classes,) + spatial, np.dtype(np.float32)
    else:
        shape, dtype = spatial, np.dtype(labels_dtype(model))
    return PredictionPlan(model, dev, img, items, item_shape, tiles, tile_sizes, halo, int(batch_size),
                          shape, dtype)


def iter_predict(model, image, *, tile="auto", batch_size: int | None = None, device="auto", out=None,
                 channel_axis: int | None = None, output: str = "probabilities", halo: int | None = None,
                 min_size: int | None = None):
    """Predict an image tile by tile, yielding `PredictEvent` progress reports.

    Parameters
    ----------
    model : Model or path
    image : array-like
        Spatial axes last (numpy, dask, zarr, memory-mapped TIFF; any real dtype). Leading axes beyond the
        model's dims (a stack for a 2D model, time) are processed item by item.
    tile : "auto", int, tuple or None
        Tile size (rounded down to a multiple of ``2**depth``); None = one pass over the whole image.
    batch_size : int, optional
        Tiles per forward pass (default 1 on CPU, 4 on GPU).
    device : str
    out : array-like, optional
        Where to write (zarr array, memmap...); written piece by piece so memory stays bounded.
    channel_axis : int, optional
        Axis holding the image's channels (required for multi-channel models).
    output : {"probabilities", "labels"}
        Probabilities ``(K, *spatial)`` float32, or labels ``(*spatial)`` (see `segment`).
    halo : int, optional
        Context per tile side; default exact in 2D (``model.halo``), a quarter of it in 3D.
    min_size : int, optional
        Instance mode: smallest object kept (pixels).

    Yields
    ------
    PredictEvent
        The last one has ``kind == "done"`` and ``result``.
    """
    t0 = time.perf_counter()
    plan = plan_prediction(model, image, tile=tile, batch_size=batch_size, device=device,
                           channel_axis=channel_axis, output=output, halo=halo)
    model, dev, img, tiles, items = plan.model, plan.device, plan.image, plan.tiles, plan.items
    item_shape, batch_size, K, total = plan.item_shape, plan.batch_size, model.num_classes, plan.total_tiles
    if out is None:
        from .io import allocate

        out = allocate(plan.shape, plan.dtype)
    elif tuple(out.shape) != plan.shape:
        raise ValueError(f"out has shape {tuple(out.shape)} but the result needs {plan.shape}")

    net = model.network.to(dev).eval()
    config = model.config
    needs_whole_item = output == "labels" and model.mode == "instance"
    yield PredictEvent("start", 0, total, 0.0, time.perf_counter() - t0, message=plan.describe())
    done, next_id, notes = 0, 1, []
    _check_some_finite(img, items, item_shape)
    with torch.inference_mode():
        for idx in items:
            item = img[(slice(None),) + idx]
            buffer = np.empty((K,) + item_shape, np.float32) if needs_whole_item else None
            for start in range(0, len(tiles), batch_size):
                batch = tiles[start:start + batch_size]
                x = np.stack([model.preprocess(read_padded(item, t.input, item_shape)) for t in batch])
                if not np.isfinite(x).all():
                    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
                prob = _probabilities(net, x, dev, on_retry=lambda n: notes.append(n))
                if notes:
                    yield PredictEvent("warning", done, total, done / total, time.perf_counter() - t0,
                                       message=notes.pop())
                regions = []
                for t, p in zip(batch, prob):
                    p = p[(slice(None),) + t.crop]
                    if needs_whole_item:
                        buffer[(slice(None),) + t.output] = p
                    elif output == "labels":
                        out[idx + t.output] = semantic_labels(p, config["class_ids"])
                    else:
                        out[(slice(None),) + idx + t.output] = p
                    regions.append(idx + t.output)
                done += len(batch)
                yield PredictEvent("tiles", done, total, done / total, time.perf_counter() - t0,
                                   region=_union(regions))
            if needs_whole_item:
                lab = instance_labels(buffer, min_size=min_size)
                n = int(lab.max())
                lab[lab > 0] += next_id - 1  # ids unique across the planes/volumes of a stack
                next_id += n
                out[idx] = lab
                yield PredictEvent("item", done, total, done / total, time.perf_counter() - t0,
                                   region=idx + tuple(slice(0, s) for s in item_shape))
    yield PredictEvent("done", done, total, 1.0, time.perf_counter() - t0, result=out,
                       message=f"predicted {total} tile(s) in {time.perf_counter() - t0:.1f} s")


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    text = str(exc).lower()
    return (oom is not None and isinstance(exc, oom)) or isinstance(exc, MemoryError) \
        or "out of memory" in text or "can't allocate memory" in text


def _probabilities(net, x: np.ndarray, dev: torch.device, on_retry=None) -> np.ndarray:
    """Softmax of the network on a batch; on GPU out-of-memory, retry in halves down to one tile."""
    try:
        with autocast(dev):
            logits = net(torch.from_numpy(x).to(dev, non_blocking=True))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()
    except (RuntimeError, MemoryError) as exc:
        if not _is_oom(exc):
            raise
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        if len(x) == 1:
            raise MemoryError(f"out of memory on {dev} even for a single tile of {x.shape[2:]}: use a smaller "
                              "tile (--tile / tile=) or another device") from None
        half = len(x) // 2
        if on_retry is not None:
            on_retry(f"out of memory on {dev} with {len(x)} tiles at once: retrying {half} at a time "
                     "(use a smaller batch size to avoid this)")
        return np.concatenate([_probabilities(net, x[:half], dev), _probabilities(net, x[half:], dev)])


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
    from .train import drain

    return drain(iter_predict(model, image, output="probabilities", **kwargs), progress).result


def segment(model, image, *, progress=None, **kwargs):
    """Integer labels shaped like the image's spatial axes; see `iter_predict` for the parameters.

    Semantic models write each pixel's class id with the background (id 1) as 0; instance models write
    object ids (unique across a stack), touching objects separated.
    """
    from .train import drain

    return drain(iter_predict(model, image, output="labels", **kwargs), progress).result
