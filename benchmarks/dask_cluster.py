"""Throughput of prediction on a dask LocalCluster (1 and 2 worker processes) against in-process.

(Not named distributed.py: run as a script, that name would shadow the dask.distributed package.)

A stack of ``--planes`` synthetic nuclei planes (zarr in, zarr out) is segmented in-process
(`napari_unet.segment` into a zarr array: the plain path) and with `napari_unet.distributed.segment`
on a LocalCluster of 1 worker (all cores as torch threads) and of 2 workers (cores / 2 threads each).
Each cluster runs the job once to warm up (worker imports, model load: reported apart), then the
variants are timed alternately (medians of ``--reps``). One block per plane, so each task computes the
same tiles as the in-process path: the labels must be identical. "1 plane/task" is the same 1-worker
run with one plane per prediction task (`napari_unet.distributed.PLANES_PER_TASK` = 1, as before tasks
took several planes), to measure what grouping planes gains.

The per-task overhead of the dask path is measured on a stack of many tiny planes, where the forward
pass is negligible: (dask time - in-process time) / tasks, with 1 worker.

Usage: python benchmarks/dask_cluster.py [--planes 32] [--size 512] [--tiny-planes 200] [--reps 3]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_stack(path: Path, planes: int, size: int):
    import zarr

    from _common import normalized
    from napari_unet.synthetic import make_nuclei

    plane, _ = make_nuclei((size, size), seed=0)
    plane = normalized(plane)
    z = zarr.open_array(str(path), mode="w", shape=(planes, size, size), chunks=(1, size, size), dtype="f4")
    for i in range(planes):
        z[i] = np.roll(plane, 7 * i, axis=1)


def main(argv=None):
    import zarr

    from _common import machine, random_model, ratio_summary, scratch_and_clusters

    import napari_unet as nu
    from napari_unet import distributed as nd

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--planes", type=int, default=32)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--tiny-planes", type=int, default=200)
    p.add_argument("--tiny-size", type=int, default=32)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    print(machine(), flush=True)
    with scratch_and_clusters(args.workdir) as (work, clients):
        model = random_model(depth=args.depth, base=args.base_channels)
        model_path = nu.save_model(model, work / "model.pt")
        make_stack(work / "stack.zarr", args.planes, args.size)
        make_stack(work / "tiny.zarr", args.tiny_planes, args.tiny_size)

        def in_process(name):
            out = work / f"{name}-local.zarr"
            shutil.rmtree(out, ignore_errors=True)
            image = zarr.open_array(str(work / f"{name}.zarr"), mode="r")
            labels = zarr.open_array(str(out), mode="w", shape=image.shape, chunks=(1,) + image.shape[1:], dtype="u1")
            t = time.perf_counter()
            nu.segment(model, image, out=labels)
            return time.perf_counter() - t

        def on_dask(name, n, per_task=None):
            out = work / f"{name}-dask{n}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            grouped = nd.PLANES_PER_TASK
            nd.PLANES_PER_TASK = per_task or grouped
            try:
                t = time.perf_counter()
                nd.segment(model_path, work / f"{name}.zarr", out=out, client=clients[n], block=args.size)
                return time.perf_counter() - t
            finally:
                nd.PLANES_PER_TASK = grouped

        for name in ("stack", "tiny"):
            for n in (1, 2):
                t = on_dask(name, n)
                print(f"{name}: warm-up on {n} worker(s) {t:.1f} s (imports, model load, first plans)", flush=True)
            runs = {"in-process": lambda: in_process(name), "dask 1 worker": lambda: on_dask(name, 1),
                    "dask 1 worker, 1 plane/task": lambda: on_dask(name, 1, per_task=1),
                    "dask 2 workers": lambda: on_dask(name, 2)}
            times = {k: [] for k in runs}  # each variant times itself: output set-up is not counted
            for rep in range(args.reps):
                order = list(runs)[rep % len(runs):] + list(runs)[: rep % len(runs)]
                for variant in order:
                    times[variant].append(runs[variant]())
            med = {k: float(np.median(v)) for k, v in times.items()}
            planes = args.planes if name == "stack" else args.tiny_planes
            size = args.size if name == "stack" else args.tiny_size
            for k, v in med.items():
                print(f"{name} ({planes} x {size}^2): {k}: median {v:.2f} s ({planes / v:.1f} planes/s, "
                      f"{planes * size * size / v / 1e6:.2f} Mpx/s; runs {', '.join(f'{x:.2f}' for x in times[k])})",
                      flush=True)
            print(f"{name}: 1 plane/task / grouped planes (1 worker) = "
                  f"{med['dask 1 worker, 1 plane/task'] / med['dask 1 worker']:.2f}x the time; paired ratios to "
                  f"in-process: 1 worker {ratio_summary(times, 'dask 1 worker', 'in-process')}, 1 plane/task "
                  f"{ratio_summary(times, 'dask 1 worker, 1 plane/task', 'in-process')}, 2 workers "
                  f"{ratio_summary(times, 'dask 2 workers', 'in-process')}", flush=True)
            print(f"{name}: speed-up 2 workers / 1 worker = {med['dask 1 worker'] / med['dask 2 workers']:.2f}x; "
                  f"dask 1 worker / in-process time = {med['dask 1 worker'] / med['in-process']:.2f}; "
                  f"overhead per task (1 worker) = {(med['dask 1 worker'] - med['in-process']) / planes * 1e3:.0f} ms",
                  flush=True)
            local = zarr.open_array(str(work / f"{name}-local.zarr"), mode="r")[...]
            for n in (1, 2):
                same = np.array_equal(local, zarr.open_array(str(work / f"{name}-dask{n}.zarr"), mode="r")[...])
                print(f"{name}: labels of {n} worker(s) identical to in-process: {same}", flush=True)


if __name__ == "__main__":
    main()
