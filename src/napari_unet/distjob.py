"""One input of a distributed prediction, on the client: its plan, its partial outputs, their publication.

`plan_job` checks and plans an input (`napari_unet.predict.plan_prediction`, nothing written) into a
`napari_unet.blocktasks.BlockJob`; `open_partial` creates the hidden ``.NAME.partial-KEY`` folder
beside the output (or finds it, to resume: its done flags); `commit` marks the outputs complete and
moves them into place together. KEY identifies the model file, the input and every option that changes
a value written, so a re-run of the same job finds the work already done and any other job starts anew.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from . import blockwise as bw
from . import blocktasks as tasks

__all__ = ["CHUNK_2D", "CHUNK_3D", "plan_job", "open_partial", "commit", "stem"]

#: Output chunk side per spatial axis (2D and 3D models); a block is a whole multiple of it.
CHUNK_2D, CHUNK_3D = 512, 64


def stem(path: Path) -> str:
    from .io import _suffix

    ext = _suffix(path)
    return path.name[: len(path.name) - len(ext)] if ext else path.name


def _chunks(dims: int, lead: int, item_shape, block) -> tuple:
    """Output chunks that tile every block exactly; refuses a block that is no multiple of them."""
    side = CHUNK_2D if dims == 2 else CHUNK_3D
    chunks = []
    for s, b in zip(item_shape, block):
        c = min(side, b)
        if b % c and b < s:
            raise ValueError(f"block {b} is not a multiple of the output chunks ({c}): use {c}, {2 * c}, {4 * c}...")
        chunks.append(min(c, s))
    return (1,) * lead + tuple(chunks)


def _job_key(model_sha: str, path: Path, options: dict) -> str:
    stat = path.stat()
    text = json.dumps({"model": model_sha, "input": str(path.resolve()), "size": stat.st_size,
                       "mtime": stat.st_mtime_ns, **{k: repr(v) for k, v in sorted(options.items())}})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _create(path: Path, shape, chunks, dtype, attrs=None):
    import zarr

    from . import __version__
    from .io import INCOMPLETE_ATTR, WRITER_ATTR

    array = zarr.open_array(str(path), mode="w", shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=0)
    array.attrs.update({WRITER_ATTR: __version__, **(attrs or {}), INCOMPLETE_ATTR: True})
    return array


def plan_job(model, model_path, sha, path, labels_dest, prob_dest, block, margin, threads, plan_options):
    """Check and plan one input on the client (nothing is written): its `BlockJob` and partial outputs.

    Without ``channel_axis``, the channel axis the file declares is used (`napari_unet.io.declared_channel_axis`).
    """
    from .device import resolve_device
    from .io import declared_channel_axis, read_image
    from .predict import plan_prediction

    declared = declared_channel_axis(path) if plan_options.get("channel_axis") is None else None
    if declared is not None:
        plan_options = {**plan_options, "channel_axis": declared}
    try:
        resolve_device(plan_options.get("device", "auto"))
        local = dict(plan_options)
    except ValueError:  # a device the workers have and the client has not: plan the tiles for CPU
        local = {**plan_options, "device": "cpu"}
    try:
        plan = plan_prediction(model, read_image(path), labels=labels_dest is not None,
                               probabilities=prob_dest is not None, **local)
    except ValueError as exc:
        if declared is None:
            raise
        raise ValueError(f"{exc} (the file declares axis {declared} as its channels; channel_axis=... overrides "
                         "that)") from None
    block = bw._sizes(block if block is not None else bw.default_block(model, plan.device), model.dims, "block")
    instance = labels_dest is not None and model.mode == "instance"
    margin = (bw.default_margin(model) if margin is None else int(margin)) if instance else 0
    if instance and margin < 1:
        raise ValueError(f"margin must be at least 1 px for instance labels, got {margin}")
    lead = len(plan.shape) - model.dims
    chunks = _chunks(model.dims, lead, plan.item_shape, block)
    # the workers plan the client's tiles (one tile: the whole item, which may be smaller than a tile
    # could be made explicitly)
    tile = None if len(plan.tiles) == 1 else plan.tile_size
    options = {**plan_options, "tile": tile, "halo": plan.halo, "batch_size": plan.batch_size}
    options.pop("workers", None)
    options.pop("stitch_planes", None)  # the client links the planes: the workers' plans need not know
    options.pop("stitch_trim", None)
    linked = {"stitch": plan.stitch_planes, "stitch_trim": plan.stitch_trim} if plan.stitch_planes else {}
    key = _job_key(sha, path, {**options, "block": block, "margin": margin, "labels": labels_dest is not None,
                               "probabilities": prob_dest is not None, **linked})
    anchor = labels_dest if labels_dest is not None else prob_dest
    partial = anchor.parent / f".{stem(anchor)}.partial-{key}"
    prob_partial = None if prob_dest is None else prob_dest.parent / f".{stem(prob_dest)}.partial-{key}.zarr"
    job = tasks.BlockJob(str(Path(model_path).resolve()), sha, str(path.resolve()), str(partial.resolve()),
                         None if prob_partial is None else str(prob_partial.resolve()), labels_dest is not None,
                         instance, tuple(sorted(options.items())), block, margin,
                         plan.min_size or (12 if model.dims == 2 else 40), threads, tuple(plan.shape[:lead]),
                         tuple(plan.item_shape), plan.stitch_planes, plan.min_fraction, plan.stitch_trim)
    layout = dict(shape=plan.shape, chunks=chunks, dtype=plan.labels_dtype, probabilities=plan.probabilities_shape)
    return job, layout, plan.describe()


def open_partial(job: tasks.BlockJob, layout: dict) -> np.ndarray:
    """Create the partial outputs of a job, or find them to resume: the done flags."""
    import zarr

    from .io import LABELS_ATTRS

    partial = Path(job.partial)
    prob_partial = None if job.probabilities_path is None else Path(job.probabilities_path)
    if (partial / "done.zarr").exists() and (prob_partial is None or prob_partial.exists()):
        return np.asarray(zarr.open_array(str(partial / "done.zarr"), mode="r")[...])
    shutil.rmtree(partial, ignore_errors=True)  # never finished being created: start again
    (partial / "faces").mkdir(parents=True)
    shape, chunks = layout["shape"], layout["chunks"]
    if job.labels:
        _create(partial / "labels.zarr", shape, chunks, layout["dtype"], LABELS_ATTRS)
    if job.instance:
        _create(partial / "pieces.zarr", shape, chunks, np.int32)
    if prob_partial is not None:
        _create(prob_partial, layout["probabilities"], (1,) + chunks, np.float32)
    (partial / "job.json").write_text(json.dumps({"input": job.input_path, "model": job.model_path}))
    _create(partial / "done.zarr", (job.n_blocks,), (1,), np.int8)  # last: its presence means "ready"
    return np.zeros(job.n_blocks, np.int8)


def commit(job: tasks.BlockJob, labels_dest, prob_dest) -> None:
    """Mark the outputs complete and move them into place back to back; remove the partial folder."""
    import zarr

    from .io import INCOMPLETE_ATTR
    from .publish import publish, uninterruptible

    moves = []
    if labels_dest is not None:
        moves.append((Path(job.partial) / "labels.zarr", labels_dest))
    if prob_dest is not None:
        moves.append((Path(job.probabilities_path), prob_dest))
    for source, _ in moves:
        del zarr.open_array(str(source), mode="r+").attrs[INCOMPLETE_ATTR]
    with uninterruptible([dest for _, dest in moves]):  # the outputs arrive together
        for source, dest in moves:
            publish(source, dest)
    shutil.rmtree(job.partial, ignore_errors=True)
