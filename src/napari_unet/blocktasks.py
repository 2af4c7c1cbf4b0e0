"""The tasks of a distributed prediction (`napari_unet.distributed`): what runs on a dask worker.

Plain functions of a `BlockJob` (plain values) and a block number, importable on any worker. Workers
receive the model's *file path* and its SHA-256, load it safely once per process (cached), open the
input themselves and write only their block's core into zarr chunks that no other task writes: no
locks. Each finished block is recorded in a small zarr array of flags (one chunk per block), so a
re-run of the same job (same model, input and options: the KEY) does only what is missing, and a task
retried after its worker died rewrites the same values. Instance labels take three steps: blocks are
labelled from their context (`blockwise.label_block`: pieces and face layers kept in the partial
folder), pieces are paired across faces (`blockwise.face_pairs`, one task per block) and joined on the
client (`blockwise.merge_blocks`), then each block's final ids are written (`blockwise.relabel`).
Stitching the planes of a stack (``stitch``) adds no task: the pairing task also counts its block's
overlaps with the same block of the previous plane (`napari_unet.stitchblocks`), the client links them,
and the relabelling writes the linked ids. A prediction task takes the same block of a few planes at
once (`predict_blocks`): one pipeline over them overlaps reading with computing, as in-process.
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import blockwise as bw
from .postprocess import FRAGMENT_FRACTION, item_spacing

__all__ = ["BlockJob", "predict_blocks", "pair_block", "relabel_block", "check_worker", "sha256", "DONE_PREDICTED",
           "DONE_FINAL"]

#: Values of a block's done flag: predicted (instance: pieces and faces written), final labels written.
DONE_PREDICTED, DONE_FINAL = 1, 2


# ------------------------------------------------------------------------------ the job, plain data
@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs for one input: plain values, sent with every task."""

    model_path: str
    model_sha: str
    input_path: str
    partial: str                 # the partial folder (done flags, faces, pieces, labels)
    probabilities_path: str | None  # partial probabilities array (beside its destination)
    labels: bool
    instance: bool
    plan_options: tuple          # (name, value) pairs for plan_prediction on the worker
    block_size: tuple
    margin: int
    min_size: int
    threads: int | None
    lead_shape: tuple            # stack axes before the model's spatial axes
    item_shape: tuple
    stitch: float | None = None  # instance labels of a stack: link planes at this overlap
    min_fraction: float = FRAGMENT_FRACTION  # fragments: under this fraction of their item's median object
    stitch_trim: bool = True     # linked objects lose their small ends and single-plane objects

    @property
    def grid(self) -> tuple:
        return bw.block_grid(self.item_shape, self.block_size)

    @property
    def per_item(self) -> int:
        return int(np.prod(self.grid, dtype=np.int64))

    @property
    def n_blocks(self) -> int:
        return int(np.prod(self.lead_shape, dtype=np.int64)) * self.per_item

    def item_index(self, i: int) -> tuple:
        """The leading index (e.g. ``(t, z)``) of item ``i``."""
        return tuple(int(v) for v in np.unravel_index(i, self.lead_shape)) if self.lead_shape else ()

    def block(self, k: int):
        """``(item, grid position)`` of block ``k`` (items first, then the grid in C order)."""
        return k // self.per_item, tuple(int(v) for v in np.unravel_index(k % self.per_item, self.grid))

    def region(self, k: int):
        """``(leading index, core slices)`` of block ``k`` in the output."""
        i, position = self.block(k)
        return self.item_index(i), bw.core_region(self.item_shape, self.block_size, position)


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------- on the workers
_cache_lock = threading.Lock()
_models: dict = {}
_plans: dict = {}


def _worker_model(path: str, sha: str):
    """The model of a file, loaded safely once per process and checked against the client's hash."""
    from .modelfile import load_model

    with _cache_lock:
        if (path, sha) not in _models:
            if sha256(path) != sha:
                raise ValueError(f"the model file {path!r} on this worker is not the client's (its SHA-256 "
                                 "differs): give every worker the same file")
            _models[(path, sha)] = load_model(path)
        return _models[(path, sha)]


def _threads(job: BlockJob) -> int:
    """torch threads of one task: set by the client, or this worker's cores shared by its threads."""
    if job.threads:
        return job.threads
    try:
        from distributed import get_worker

        per_worker = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        per_worker = 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, per_worker))


def _worker_plan(job: BlockJob):
    from .io import read_image
    from .predict import plan_prediction

    key = (job.model_sha, job.input_path, job.plan_options, job.labels, job.probabilities_path is not None)
    with _cache_lock:
        plan = _plans.get(key)
    if plan is None:
        model = _worker_model(job.model_path, job.model_sha)
        plan = plan_prediction(model, read_image(job.input_path), labels=job.labels,
                               probabilities=job.probabilities_path is not None, **dict(job.plan_options))
        with _cache_lock:
            if len(_plans) >= 8:  # a few inputs at a time per process (many small files go by in turn)
                _plans.pop(next(iter(_plans)))
            _plans[key] = plan
    return plan


def _open(path):
    import zarr

    return zarr.open_array(str(path), mode="r+")


def _mark(job: BlockJob, k: int, value: int) -> None:
    _open(Path(job.partial) / "done.zarr")[k] = value


def _save_faces(job: BlockJob, k: int, pieces: bw.BlockLabels) -> None:
    """A block's sizes and face layers, written atomically (a retried task simply rewrites them)."""
    arrays = {"sizes": pieces.sizes}
    for (axis, side), (inside, beyond) in pieces.faces.items():
        arrays[f"{axis}_{side}_inside"], arrays[f"{axis}_{side}_beyond"] = inside, beyond
    final = Path(job.partial) / "faces" / f"{k}.npz"
    tmp = final.with_name(f".{k}.{os.getpid()}.{threading.get_ident()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, final)


def _load_faces(job: BlockJob, k: int):
    with np.load(Path(job.partial) / "faces" / f"{k}.npz") as f:
        faces = {}
        for name in f.files:
            if name.endswith("_inside"):
                axis, side = (int(v) for v in name.split("_")[:2])
                faces[(axis, side)] = (f[name], f[name.replace("_inside", "_beyond")])
        return f["sizes"], faces


def predict_blocks(job: BlockJob, ks) -> list:
    """Task: predict blocks ``ks`` (the same place in a few planes) and write their cores (semantic:
    final labels; instance: pieces and faces). One pipeline over them: reading overlaps computing."""
    from .device import thread_policy

    with thread_policy(threads=_threads(job)):
        plan = _worker_plan(job)
        _, core = job.region(ks[0])
        region = bw.context_region(plan.item_shape, core, job.margin)
        wants = "probabilities" if job.instance or job.probabilities_path else "classes"
        values = bw.region_predictions(plan, [job.block(k)[0] for k in ks], region, wants)
        for k, block_values in zip(ks, values):
            _write_block(job, plan, k, block_values, bw._relative(core, region))
            _mark(job, k, DONE_PREDICTED if job.instance else DONE_FINAL)
    return list(ks)


def _write_block(job: BlockJob, plan, k: int, values: np.ndarray, inner: tuple) -> None:
    from .conventions import written_labels

    index, core = job.region(k)
    if job.probabilities_path:
        _open(job.probabilities_path)[(slice(None),) + index + core] = values[(slice(None),) + inner]
    if job.instance:
        pieces = bw.label_block(values, inner, spacing=item_spacing(plan.model.config.spacing, plan.item_shape))
        _open(Path(job.partial) / "pieces.zarr")[index + core] = pieces.labels
        _save_faces(job, k, pieces)
    elif job.labels:
        classes = values[(slice(None),) + inner].argmax(0) if values.ndim > len(inner) else values[inner]
        _open(Path(job.partial) / "labels.zarr")[index + core] = written_labels(plan.model.config.class_ids)[classes]


def pair_block(job: BlockJob, k: int):
    """Task: block ``k``'s piece sizes, its pairs with the blocks before it along each axis and, when
    stitching, its overlaps with the same block of the previous plane (`napari_unet.stitchblocks`)."""
    sizes, faces = _load_faces(job, k)
    _, position = job.block(k)
    edges = []
    for axis in range(len(job.grid)):
        if position[axis] > 0:
            lower = k - int(np.prod(job.grid[axis + 1:], dtype=np.int64))
            edges.append((lower, k, bw.face_pairs(_load_faces(job, lower)[1], faces, axis)))
    counts = None
    if job.stitch:
        from .stitchblocks import PlaneLinks

        index, core = job.region(k)
        pieces = _open(Path(job.partial) / "pieces.zarr")
        links = PlaneLinks(job.stitch, job.per_item, job.item_index)
        counts = links.count(k, np.asarray(pieces[index + core]), core, job.item_shape,
                             lambda j: np.asarray(pieces[job.item_index(j) + core]))
    return k, sizes, edges, counts


def relabel_block(job: BlockJob, k: int, lut: np.ndarray) -> int:
    """Task: write block ``k``'s final ids (reads its pieces, so running it twice is harmless)."""
    index, core = job.region(k)
    region = index + core
    pieces = np.asarray(_open(Path(job.partial) / "pieces.zarr")[region])
    _open(Path(job.partial) / "labels.zarr")[region] = bw.relabel(pieces, lut)
    _mark(job, k, DONE_FINAL)
    return k


def check_worker(job: BlockJob) -> str:
    """Run on every worker first: the model loads, the input opens, the partial folder is writable."""
    from .io import read_image

    try:
        _worker_model(job.model_path, job.model_sha)
    except (OSError, ValueError) as exc:
        return f"cannot use the model file {job.model_path!r}: {exc}"
    try:
        read_image(job.input_path)
    except (OSError, ValueError) as exc:
        return f"cannot read the input {job.input_path!r}: {exc}"
    probe = Path(job.partial) / f".probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"cannot write the output folder {str(Path(job.partial).parent)!r}: {exc.strerror or exc}"
    return ""
