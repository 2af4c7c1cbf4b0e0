"""Running a plan: blocks of tiles through source -> device runner -> sinks, as progress events.

`run_blocks` is the reusable core (any subset of a plan's tiles into any sink, e.g. one block of a
blockwise or distributed run); `run_prediction` checks and allocates the outputs a plan asks for, builds
their sinks and runs every tile.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..conventions import written_labels
from ..device import thread_policy
from .network import prepared_network
from .pipeline import run_pipeline
from .plan import PredictionPlan
from .runner import DeviceRunner
from .sinks import InstanceLabelsSink, ProbabilitiesSink, SemanticLabelsSink, Sink, Tee
from .source import TileSource

__all__ = ["PredictEvent", "run_blocks", "run_prediction", "sinks_for"]


@dataclass
class PredictEvent:
    """A progress report of a prediction.

    Attributes
    ----------
    kind : str
        ``"start"`` (``message`` describes the plan), ``"tiles"`` (tiles written), ``"item"`` (a
        plane/volume of instance labels written), ``"warning"`` (``message`` says what happened, e.g. an
        out-of-memory retry) or ``"done"``.
    done, total : int
        Tiles finished and tiles in all.
    fraction, elapsed : float
    region : tuple of slice or None
        Part of the output (spatial axes, stack index included) written since the previous event:
        semantic labels and probabilities are in their outputs when a ``"tiles"`` event is yielded;
        instance labels at the ``"item"`` event, since objects are separated over the whole item.
    labels, probabilities : array or None
        ``"done"``: the outputs asked for (those given, or allocated).
    result : array or None
        ``"done"``: the labels when asked for, else the probabilities.
    """

    kind: str
    done: int = 0
    total: int = 0
    fraction: float = 0.0
    elapsed: float = 0.0
    region: tuple | None = None
    result: Any = None
    message: str = ""
    labels: Any = None
    probabilities: Any = None


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


class _BlockWriter:
    """The writer stage: crops each tile of a batch into the sink and turns progress into events."""

    def __init__(self, plan: PredictionPlan, sink: Sink, blocks, t0: float, total: int):
        self.plan, self.sink, self.t0, self.total = plan, sink, t0, total
        self.remaining: dict = {}  # tiles still to write, per item
        for i, _ in blocks:
            self.remaining[i] = self.remaining.get(i, 0) + 1
        self.done = 0

    def event(self, kind: str, **fields) -> PredictEvent:
        return PredictEvent(kind, self.done, self.total, self.done / max(1, self.total),
                            time.perf_counter() - self.t0, **fields)

    def write(self, batch, result):
        plan = self.plan
        y = result.numpy()
        groups: list = []  # (item, regions) in batch order: one "tiles" event per item
        for j, (i, t) in enumerate(batch):
            tile, index = plan.tiles[t], plan.items[i]
            self.sink.write(index, tile.output, y[j][(Ellipsis,) + tile.crop])
            self.done += 1
            if not groups or groups[-1][0] != i:
                groups.append((i, []))
            groups[-1][1].append(index + tile.output)
        events = []
        for i, regions in groups:
            events.append(self.event("tiles", region=_union(regions)))
            self.remaining[i] -= len(regions)
            if self.remaining[i] == 0:
                del self.remaining[i]
                written = self.sink.item_done(plan.items[i])
                if written is not None:
                    events.append(self.event("item", region=written))
        return events


@contextlib.contextmanager
def _compute_thread(plan: PredictionPlan, dev: torch.device):
    """Each compute worker's torch threads (CPU: workers x threads share the cores) and device."""
    with thread_policy(threads=plan.threads if dev.type == "cpu" else None, device=dev), torch.inference_mode():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        yield


def run_blocks(plan: PredictionPlan, sink: Sink, blocks=None, *, t0: float | None = None, total: int | None = None):
    """Predict tiles of a plan into a sink, yielding ``"tiles"``, ``"item"`` and ``"warning"`` events.

    Parameters
    ----------
    plan : PredictionPlan
    sink : napari_unet.predict.sinks.Sink
    blocks : sequence of (int, int), optional
        ``(item, tile)`` index pairs into ``plan.items`` and ``plan.tiles``, in the order to run them
        (default: every tile of every item). Consecutive blocks share a batch of ``plan.batch_size``;
        the sink hears that an item is done when the last of its blocks here is written.
    t0 : float, optional
        ``time.perf_counter()`` the events' ``elapsed`` counts from (default: now).
    total : int, optional
        Tiles in all, for the events' ``fraction`` (default: ``len(blocks)``).
    """
    blocks = list(blocks) if blocks is not None else [
        (i, t) for i in range(len(plan.items)) for t in range(len(plan.tiles))]
    t0 = time.perf_counter() if t0 is None else t0
    dev = plan.device
    if dev.type == "cuda" and dev.index is None:  # torch.cuda.set_device and the streams need an index
        dev = torch.device("cuda", torch.cuda.current_device())
    model = plan.model
    source = TileSource(plan, dev)
    runner = DeviceRunner(prepared_network(model.network, dev, model.dims), dev, output=sink.wants,
                          halo=plan.halo, align=2**model.depth, dims=model.dims, tta=plan.tta,
                          precision=plan.precision)
    writer = _BlockWriter(plan, sink, blocks, t0, len(blocks) if total is None else total)

    def hear_warnings(notify):
        runner.warn = lambda message: notify(writer.event("warning", message=message))

    batches = [blocks[s:s + plan.batch_size] for s in range(0, len(blocks), plan.batch_size)]
    yield from run_pipeline(batches, source.read, lambda data: runner.to_host(*data), writer.write,
                            workers=plan.workers, worker_context=lambda: _compute_thread(plan, dev),
                            on_start=hear_warnings)


def _check_output(array, name: str, shape: tuple, what: str, floating: bool = False, largest: int | None = None):
    if not all(hasattr(array, a) for a in ("shape", "dtype", "__setitem__")):
        raise TypeError(f"{name} must be an array (numpy, memmap, zarr...) with a shape and a dtype, got "
                        f"{type(array).__name__}")
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(array.shape)} but the {what} need {tuple(shape)}")
    dtype = np.dtype(array.dtype)
    if floating and not np.issubdtype(dtype, np.floating):
        raise TypeError(f"{name} has dtype {array.dtype}: probabilities need a float array (e.g. float32)")
    # a narrower dtype would wrap instance ids past its maximum (or turn classes into True) silently
    if largest is not None and (dtype.kind not in "iu" or np.iinfo(dtype).max < largest):
        raise TypeError(f"{name} has dtype {dtype}, which cannot hold every label (up to {largest}): use "
                        "dtype=napari_unet.predict.labels_dtype(model)")


def _largest_label(model) -> int:
    """The largest id a model's labels may hold: any int32 instance id, or the largest written class."""
    if model.mode == "instance":
        return int(np.iinfo(np.int32).max)
    return int(written_labels(model.config.class_ids).max(initial=0))


def _outputs(plan: PredictionPlan, labels_out, probabilities_out):
    """The outputs the plan asks for: those given (checked), the others allocated."""
    from ..memory import allocate

    if labels_out is not None and not plan.labels:
        raise ValueError("labels_out was given but the plan does not compute labels: plan with labels=True")
    if probabilities_out is not None and not plan.probabilities:
        raise ValueError("probabilities_out was given but the plan does not compute probabilities: plan with "
                         "probabilities=True")
    for out, name in ((labels_out, "labels_out"), (probabilities_out, "probabilities_out")):
        if isinstance(out, np.ndarray) and isinstance(plan.image.array, np.ndarray) \
                and np.may_share_memory(out, plan.image.array):  # later tiles would read results as pixels
            raise ValueError(f"{name} is the image itself (the same memory): write the results to a new array")
    if labels_out is not None:
        _check_output(labels_out, "labels_out", plan.shape, "labels", largest=_largest_label(plan.model))
    if probabilities_out is not None:
        _check_output(probabilities_out, "probabilities_out", plan.probabilities_shape, "probabilities",
                      floating=True)
    if plan.labels and labels_out is None:
        labels_out = allocate(plan.shape, plan.labels_dtype)
    if plan.probabilities and probabilities_out is None:
        probabilities_out = allocate(plan.probabilities_shape, np.float32)
    return labels_out, probabilities_out


def sinks_for(plan: PredictionPlan, labels_out=None, probabilities_out=None) -> Sink:
    """The sink writing what the plan asks for into these outputs (a `Tee` for both)."""
    sinks = []
    if labels_out is not None:
        model = plan.model
        sinks.append(InstanceLabelsSink(labels_out, plan.item_shape, model.num_classes, plan.min_size,
                                        stitch_planes=plan.stitch_planes, spacing=model.config.spacing,
                                        min_fraction=plan.min_fraction, stitch_trim=plan.stitch_trim)
                     if model.mode == "instance" else SemanticLabelsSink(labels_out, model.config.class_ids))
    if probabilities_out is not None:
        sinks.append(ProbabilitiesSink(probabilities_out))
    return sinks[0] if len(sinks) == 1 else Tee(*sinks)


def run_prediction(plan: PredictionPlan, *, labels_out=None, probabilities_out=None):
    """Run a plan, yielding `PredictEvent` progress reports; the outputs are checked before any work.

    Parameters
    ----------
    plan : PredictionPlan
        From `napari_unet.predict.plan_prediction`; run as it is (its tiles, workers and threads).
    labels_out, probabilities_out : array-like, optional
        Where to write (zarr array, memmap...), piece by piece so memory stays bounded: labels shaped
        ``plan.shape``, probabilities ``plan.probabilities_shape`` (float). An output the plan asks for
        and that is not given is allocated in memory.

    Returns
    -------
    generator of PredictEvent
        ``"start"``, then ``"tiles"`` / ``"item"`` / ``"warning"``, then ``"done"`` (with ``labels``,
        ``probabilities`` and ``result``). Closing it early stops and joins every thread.

    Raises
    ------
    ValueError, TypeError
        At once, for an output of the wrong shape or dtype, or one the plan does not compute.
    """
    labels_out, probabilities_out = _outputs(plan, labels_out, probabilities_out)
    return _events(plan, labels_out, probabilities_out)


def _events(plan: PredictionPlan, labels_out, probabilities_out):
    t0 = time.perf_counter()
    total = plan.total_tiles
    yield PredictEvent("start", 0, total, 0.0, time.perf_counter() - t0, message=plan.describe())
    sink = sinks_for(plan, labels_out, probabilities_out)
    yield from run_blocks(plan, sink, t0=t0, total=total)
    for region in sink.finish():  # planes rewritten once every item is done (stitching's trimmed chains)
        yield PredictEvent("item", total, total, 1.0, time.perf_counter() - t0, region=region)
    elapsed = time.perf_counter() - t0
    yield PredictEvent("done", total, total, 1.0, elapsed, message=f"predicted {total} tile(s) in {elapsed:.1f} s",
                       result=labels_out if plan.labels else probabilities_out, labels=labels_out,
                       probabilities=probabilities_out)
