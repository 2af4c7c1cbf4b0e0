"""Prediction on a dask cluster: the blocks of `napari_unet.blockwise` as dask tasks, resumable.

The client checks and plans every input once (`napari_unet.distjob.plan_job`: the tile sizes it picks
are the ones every worker uses), creates the outputs under hidden ``.NAME.partial-KEY`` names beside
them and submits tasks of one block, or of the same block in a few planes (`napari_unet.blocktasks`).
Blocks are whole multiples of the output's zarr chunks, so no two tasks ever write one chunk. Finished
blocks are flagged in the partial folder: re-running the same job (same model file, input and options:
the KEY) does only what is missing, and a task retried after its worker died rewrites the same values.
The outputs are moved into place, complete, only when every block of an input is done (instance
labels: merged across blocks and, with ``stitch_planes``, linked across planes first).

``dask.distributed`` is imported only when this runs (``pip install 'napari-unet[distributed]'``).
"""
from __future__ import annotations

import glob as globbing
import logging
import os
import time
from pathlib import Path

import numpy as np

from . import blockwise as bw
from . import blocktasks as tasks
from .distjob import CHUNK_2D, CHUNK_3D, commit, open_partial, plan_job, stem

__all__ = ["connect", "iter_segment", "segment", "predict", "CHUNK_2D", "CHUNK_3D"]

#: A prediction task takes the same block of up to this many planes (items), within this many pixels
#: of context in all (~12 bytes each of probabilities: 50 MB).
PLANES_PER_TASK, TASK_PIXELS = 8, 2**22


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def connect(client=None, workers: int | None = None, timeout: float = 5.0):
    """A dask client: ``client`` itself, a client of the scheduler at that address, or of a new
    `distributed.LocalCluster` of ``workers`` processes (one task at a time each).

    Returns
    -------
    (Client, bool)
        The client and whether it (and its cluster) was made here (to be closed by the caller).

    Raises
    ------
    ValueError
        The scheduler cannot be reached within ``timeout`` seconds, or has no workers.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("running on a dask cluster needs dask.distributed: pip install 'napari-unet[distributed]'") from None
    if client is not None and not isinstance(client, (str, os.PathLike)):
        return client, False
    if client is None:
        n = workers if workers is not None else min(4, _cores())
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"workers must be a positive whole number, got {workers!r}")
        # one task per process, with its share of the cores: dask's nanny would start workers with
        # OMP_NUM_THREADS=1, which makes torch's 2-thread passes 1.8x slower than in-process (measured);
        # the HTTP server on a free port: no clash with another cluster
        threads = str(max(1, _cores() // int(n)))
        cluster = LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR, env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        return Client(cluster, set_as_default=False), True
    address = str(client)
    try:
        made = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ValueError(f"cannot reach the dask scheduler at {address!r} within {timeout:g} s ({type(exc).__name__}): "
                         "check the address (e.g. tcp://host:8786) and that the scheduler is running") from None
    try:
        made.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError):
        made.close()
        raise ValueError(f"the dask scheduler at {address!r} has no workers: start some (dask worker {address})") from None
    return made, True


# ----------------------------------------------------------------------------- inputs and outputs
def _inputs(image) -> list:
    if isinstance(image, (str, os.PathLike)):
        text = str(image)
        if any(c in text for c in "*?["):
            found = sorted(globbing.glob(text))
            if not found:
                raise FileNotFoundError(f"no file matches {text!r}")
            return [Path(p) for p in found]
        return [Path(text)]
    if isinstance(image, (list, tuple)) and image and all(isinstance(p, (str, os.PathLike)) for p in image):
        return [Path(p) for p in image]
    raise TypeError("on a dask cluster the workers read the inputs from their files: give a file path, a list of "
                    f"paths or a glob pattern, not {type(image).__name__}")


def _destinations(inputs, out, what: str) -> list:
    """One output per input: ``out`` itself, or ``out/<input name>.zarr`` for several inputs."""
    if out is None:
        return [None] * len(inputs)
    out = Path(out)
    if len(inputs) > 1:
        if not out.is_dir() or str(out).rstrip("/").lower().endswith(".zarr"):
            raise ValueError(f"{len(inputs)} inputs: {what} must be an existing folder to hold one .zarr per input, "
                             f"got {str(out)!r}")
        paths = [out / f"{stem(p)}.zarr" for p in inputs]
        if len(set(paths)) < len(paths):
            raise ValueError(f"two inputs have the same name: their {what} would collide in {str(out)!r}")
        return paths
    if not str(out).rstrip("/").lower().endswith(".zarr"):
        raise ValueError(f"a distributed prediction writes zarr: name the {what} NAME.zarr (got {str(out)!r})")
    return [out]


# --------------------------------------------------------------------------------------- running
class _Run:
    """The state of one input's job on the client: which tasks to submit next, and when it is done."""

    def __init__(self, job, done, labels_dest, prob_dest):
        from .stitchblocks import PlaneLinks

        self.job, self.done, self.labels_dest, self.prob_dest = job, done, labels_dest, prob_dest
        self.waiting = 0
        self.pairs: dict = {}
        self.links = PlaneLinks(job.stitch, job.per_item, job.item_index, job.stitch_trim) if job.stitch else None

    def first(self, workers: int):
        todo = [k for k in range(self.job.n_blocks) if self.done[k] < (tasks.DONE_PREDICTED if self.job.instance
                                                                        else tasks.DONE_FINAL)]
        if todo:
            return [(tasks.predict_blocks, (self.job, ks)) for ks in self.groups(todo, workers)]
        return self.after_predictions()

    def groups(self, todo, workers: int):
        """The blocks to predict, a few planes of one place per task (`PLANES_PER_TASK`, `TASK_PIXELS`):
        one pipeline over several planes lets all the worker's compute threads run and pays the task
        overhead once (200 planes of 32^2: half the time, measured), while leaving at least 4 tasks
        per worker to share out."""
        job = self.job
        context = int(np.prod([min(s, b + 2 * job.margin) for s, b in zip(job.item_shape, job.block_size)]))
        per_task = max(1, min(PLANES_PER_TASK, TASK_PIXELS // context, -(-len(todo) // (4 * max(1, workers)))))
        places: dict = {}
        for k in todo:
            places.setdefault(k % job.per_item, []).append(k)
        return [ks[j:j + per_task] for ks in places.values() for j in range(0, len(ks), per_task)]

    def after_predictions(self):
        if self.job.instance and (self.done < tasks.DONE_FINAL).any():
            return [(tasks.pair_block, (self.job, k)) for k in range(self.job.n_blocks)]
        return []

    def after_pairs(self):
        sizes = [self.pairs[k][0] for k in range(self.job.n_blocks)]
        edges = [edge for k in range(self.job.n_blocks) for edge in self.pairs[k][1]]
        job = self.job
        luts, _ = bw.merge_blocks(sizes, edges, job.min_size, job.min_fraction,
                                  [k // job.per_item for k in range(job.n_blocks)])
        if self.links is not None:  # planes linked: the same relabelling writes 3D ids
            luts = self.links.luts(luts, sizes)
        return [(tasks.relabel_block, (self.job, k, luts[k])) for k in range(self.job.n_blocks)
                if self.done[k] < tasks.DONE_FINAL]

    def todo(self) -> int:
        """Prediction and relabelling tasks left (what the progress counts)."""
        left = int((self.done < tasks.DONE_PREDICTED).sum()) if self.job.instance else 0
        return left + int((self.done < tasks.DONE_FINAL).sum())


def _model_file(model):
    from .modelfile import load_model

    if not isinstance(model, (str, os.PathLike)):
        raise TypeError("on a dask cluster the workers load the model from its file: save it with "
                        "napari_unet.save_model and give the file's path")
    return Path(model), load_model(model)


def iter_segment(model, image, *, out=None, probabilities_out=None, client=None, workers: int | None = None,
                 block=None, margin: int | None = None, stitch_planes=None, resources: dict | None = None,
                 timeout: float = 5.0, **plan_options):
    """Predict on a dask cluster, yielding `napari_unet.predict.PredictEvent` progress reports.

    Parameters
    ----------
    model : path
        A model file (workers load it from there: every worker must see the same file).
    image : path, list of paths or glob pattern
        The input(s); the workers read them.
    out, probabilities_out : path, optional
        Labels and/or probabilities, ``.zarr`` (a folder for several inputs: one ``NAME.zarr`` each).
    client : distributed.Client or str, optional
        A client, or a scheduler address (``tcp://host:8786``); default a new `distributed.LocalCluster`
        of ``workers`` processes with one task and ``cores / workers`` torch threads each.
    workers : int, optional
        Processes of the local cluster (default: the cores, at most 4).
    block : int or tuple, optional
        Block side per spatial axis: a multiple of the output chunks (`CHUNK_2D`, `CHUNK_3D`);
        default `napari_unet.blockwise.default_block`.
    margin : int, optional
        Context around each block for instance labels (`napari_unet.blockwise.default_margin`).
    stitch_planes : float or True, optional
        A 2D instance model on z-stacks: link each plane's objects to the previous plane's, as
        ``napari_unet.segment(..., stitch_planes=)`` does (the same labels, `napari_unet.stitch`); the
        overlaps are counted by the workers block by block, and the linked ids written in the
        relabelling every instance run does: no extra pass, no plane in the client's memory. Linked
        objects are trimmed unless ``stitch_trim=False`` (a plan option).
    resources : dict, optional
        Dask resources each prediction task takes, e.g. ``{"GPU": 1}`` with workers started with
        ``--resources GPU=1`` (one GPU per task).
    timeout : float
        Seconds to reach a scheduler given by address.
    **plan_options
        ``tile``, ``batch_size``, ``device``, ``channel_axis``, ``halo``, ``min_size``: see
        `napari_unet.predict.plan_prediction`. Without ``channel_axis``, each file's declared channel
        axis is used (a TIFF's ``C``, an OME-Zarr ``channel`` axis), as the command line does.

    Yields
    ------
    PredictEvent
        ``"start"``, ``"tiles"`` (a block predicted), ``"item"`` (a block's final labels), ``"done"``
        (``result``: the output path, or the list of them for several inputs).
    """
    from .outputs import check_output_path, refuse_inputs_as_outputs

    if out is None and probabilities_out is None:
        raise ValueError("nothing to write: give out= (labels) and/or probabilities_out=")
    model_path, loaded = _model_file(model)
    inputs = _inputs(image)
    labels_dests = _destinations(inputs, out, "out")
    prob_dests = _destinations(inputs, probabilities_out, "probabilities_out")
    written = [p for p in labels_dests + prob_dests if p is not None]
    refuse_inputs_as_outputs(written, inputs + [model_path])
    for p in written:
        check_output_path(p)
    sha = tasks.sha256(model_path)
    n_local = workers if workers is not None else min(4, _cores())
    threads = max(1, _cores() // n_local) if client is None and isinstance(n_local, int) and n_local > 0 else None
    if stitch_planes is not None:
        plan_options = {**plan_options, "stitch_planes": stitch_planes}
    jobs = [plan_job(loaded, model_path, sha, path, labels_dest, prob_dest, block, margin, threads, plan_options)
            for path, labels_dest, prob_dest in zip(inputs, labels_dests, prob_dests)]
    return _events(jobs, inputs, labels_dests, prob_dests, client, workers, resources, timeout)


def _events(jobs, inputs, labels_dests, prob_dests, client, workers, resources, timeout):
    from distributed import as_completed

    from .predict.run import PredictEvent

    t0 = time.perf_counter()
    own_cluster = client is None
    dask_client, owned = connect(client, workers, timeout)
    futures, owner = as_completed(loop=dask_client.loop), {}
    try:
        runs = [_Run(job, open_partial(job, layout), labels_dest, prob_dest)
                for (job, layout, _), labels_dest, prob_dest in zip(jobs, labels_dests, prob_dests)]
        describe = jobs[0][2]
        problems = {w: m for w, m in dask_client.run(tasks.check_worker, runs[0].job).items() if m}
        if problems:
            worker, message = next(iter(problems.items()))
            raise ValueError(f"worker {worker} {message}")
        total = sum(r.todo() for r in runs)
        count = 0
        yield PredictEvent("start", 0, total, 0.0, time.perf_counter() - t0,
                           message=f"{len(inputs)} input(s), {describe}; {total} block task(s) to run on "
                                   f"{len(dask_client.nthreads())} dask worker(s)")

        def submit(run, batch):
            for function, args in batch:
                extra = {"resources": resources} if resources and function is tasks.predict_blocks else {}
                future = dask_client.submit(function, *args, pure=False, **extra)
                owner[future.key] = run, function
                futures.add(future)
            run.waiting += len(batch)
            if not batch:
                finish(run)

        def finish(run):
            commit(run.job, run.labels_dest, run.prob_dest)

        n_workers = sum(dask_client.nthreads().values())
        for run in runs:
            submit(run, run.first(n_workers))
        for future in futures:
            (run, function), result = owner.pop(future.key), future.result()
            run.waiting -= 1
            if function is tasks.pair_block:
                k, sizes, edges, counts = result
                run.pairs[k] = (sizes, edges)
                if counts is not None:
                    run.links.put(k, *counts)
            else:
                kind = "item" if function is tasks.relabel_block else "tiles"
                for k in [result] if kind == "item" else result:
                    count += 1
                    index, core = run.job.region(k)
                    yield PredictEvent(kind, count, total, count / max(1, total), time.perf_counter() - t0,
                                       region=index + core)
            if run.waiting == 0:
                if function is tasks.predict_blocks:
                    submit(run, run.after_predictions())
                elif function is tasks.pair_block:
                    submit(run, run.after_pairs())
                else:
                    finish(run)
        elapsed = time.perf_counter() - t0
        results = [d for d in (labels_dests if labels_dests[0] is not None else prob_dests)]
        yield PredictEvent("done", total, total, 1.0, elapsed, message=f"{total} block task(s) in {elapsed:.1f} s",
                           result=results[0] if len(results) == 1 else results,
                           labels=labels_dests[0] if len(inputs) == 1 else labels_dests,
                           probabilities=prob_dests[0] if len(inputs) == 1 else prob_dests)
    finally:
        for future in list(futures.futures):
            future.cancel()
        if owned:
            cluster = getattr(dask_client, "cluster", None)
            dask_client.close()
            if own_cluster and cluster is not None:
                cluster.close()


def segment(model, image, *, out, probabilities_out=None, progress=None, client=None, workers=None, block=None,
            margin=None, stitch_planes=None, **options):
    """Labels on a dask cluster, written to ``out`` (``.zarr``); see `iter_segment`. Returns the path(s).

    Examples
    --------
    >>> segment("nuclei2d.pt", "zstack.zarr", out="nuclei3d.zarr", workers=4, stitch_planes=True)  # doctest: +SKIP
    """
    from contextlib import closing

    from .progress import drain

    events = iter_segment(model, image, out=out, probabilities_out=probabilities_out, client=client, workers=workers,
                          block=block, margin=margin, stitch_planes=stitch_planes, **options)
    with closing(events):
        return drain(events, progress).result


def predict(model, image, *, out, progress=None, client=None, workers=None, block=None, **options):
    """Class probabilities on a dask cluster, written to ``out`` (``.zarr``); see `iter_segment`."""
    from contextlib import closing

    from .progress import drain

    events = iter_segment(model, image, probabilities_out=out, client=client, workers=workers, block=block, **options)
    with closing(events):
        return drain(events, progress).result
