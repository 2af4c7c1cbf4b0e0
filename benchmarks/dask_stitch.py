"""Stitching a z-stack on a dask LocalCluster against in-process: time, labels, F1 in 3D, memory.

Protocol: a 2D instance model trains for ``--budget`` s on the planes of a synthetic volume (seed 0); a
second volume (seed 1, ``--planes`` x ``--size``^2) is stored as zarr and segmented with
``stitch_planes=True``: in-process (`napari_unet.segment` into a zarr array: each plane labelled and
linked as it is written), in-process block by block (`segment_blockwise`, ``--block``: overlaps
counted per block, linked ids written by the relabelling), and with `napari_unet.distributed.segment`
on a LocalCluster of 1 and of 2 workers (one block per plane). The dask run without stitching shows
what stitching adds there. Each cluster runs once to warm up; then the variants are timed alternately
(medians of ``--reps``). The labels must be identical; F1@0.5 in 3D is scored against the true nuclei.
Memory: the peak of Python/numpy allocations traced on the calling process (``tracemalloc``: the
in-process pipeline, or the dask client, which also loads the model file to plan) in one extra run of
each, and the workers' peak RSS.

Usage: python benchmarks/dask_stitch.py [--planes 32] [--size 256] [--budget 60] [--reps 3]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _worker_rss_mib(client) -> list:
    import resource

    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    return sorted(round(v) for v in client.run(rss).values())


def main(argv=None):
    import zarr

    from _common import alternate, machine, ratio_summary, scratch_and_clusters

    import napari_unet as nu
    from napari_unet import distributed as nd
    from napari_unet.blockwise import segment_blockwise
    from napari_unet.metrics import matching
    from napari_unet.synthetic import make_nuclei

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--planes", type=int, default=32)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--budget", type=float, default=120.0)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    print(machine(), flush=True)
    with scratch_and_clusters(args.workdir) as (work, clients):
        image, truth = make_nuclei((16, 128, 128), seed=0)
        t = time.perf_counter()
        model = nu.train(image, truth, mode="instance", dims=2, depth=args.depth, base_channels=args.base_channels,
                         time_budget=args.budget, seed=0)
        print(f"trained a 2D instance model for {time.perf_counter() - t:.0f} s "
              f"({model.config.trained_steps} steps)", flush=True)
        model_path = nu.save_model(model, work / "model.pt")
        image, truth = make_nuclei((args.planes, args.size, args.size), seed=1)
        stack = zarr.open_array(str(work / "stack.zarr"), mode="w", shape=image.shape,
                                chunks=(1,) + image.shape[1:], dtype=image.dtype)
        stack[:] = image

        def out(name):
            path = work / f"{name}.zarr"
            shutil.rmtree(path, ignore_errors=True)
            return path

        def in_process():
            labels = zarr.open_array(str(out("local")), mode="w", shape=image.shape, chunks=(1,) + image.shape[1:],
                                     dtype="i4")
            nu.segment(model, stack, out=labels, stitch_planes=True)

        def blockwise():
            labels = zarr.open_array(str(out("blocks")), mode="w", shape=image.shape,
                                     chunks=(1, args.block, args.block), dtype="i4")
            segment_blockwise(model, stack, out=labels, block=args.block, stitch_planes=True)

        def on_dask(n, stitch=True):
            nd.segment(model_path, work / "stack.zarr", out=out(f"dask{n}" + ("" if stitch else "-plain")),
                       client=clients[n], block=args.size, stitch_planes=True if stitch else None)

        variants = {"in-process": in_process, "in-process, blocks": blockwise, "dask 1 worker": lambda: on_dask(1),
                    "dask 2 workers": lambda: on_dask(2), "dask 2 workers, not stitched": lambda: on_dask(2, False)}
        times = alternate(variants, args.reps)
        for name, runs in times.items():
            print(f"{name}: median {np.median(runs):.2f} s (runs {', '.join(f'{x:.2f}' for x in runs)})", flush=True)
        for name in ("in-process, blocks", "dask 1 worker", "dask 2 workers"):
            print(f"{name} / in-process (paired): {ratio_summary(times, name, 'in-process')}", flush=True)
        print(f"stitching on dask, 2 workers: {ratio_summary(times, 'dask 2 workers', 'dask 2 workers, not stitched')}"
              " the time of the unstitched run", flush=True)

        local = zarr.open_array(str(work / "local.zarr"), mode="r")[...]
        per_plane = zarr.open_array(str(work / "dask2-plain.zarr"), mode="r")[...]
        print(f"objects: {int(per_plane.max())} per plane, {len(np.unique(local)) - 1} linked, "
              f"{len(np.unique(truth)) - 1} true nuclei; F1@0.5 3D: in-process stitched "
              f"{matching(truth, local)['f1']:.3f}, not stitched {matching(truth, per_plane)['f1']:.3f}", flush=True)
        for name in ("dask1", "dask2"):
            other = zarr.open_array(str(work / f"{name}.zarr"), mode="r")[...]
            print(f"{name}: identical to in-process stitched: {np.array_equal(other, local)}, F1@0.5 3D "
                  f"{matching(truth, other)['f1']:.3f}", flush=True)
        from napari_unet.stitch import stitch_planes

        blocks = zarr.open_array(str(work / "blocks.zarr"), mode="r")[...]
        planes = segment_blockwise(model, stack, block=args.block)  # the same blockwise planes, not linked
        print(f"blocks of {args.block}: identical to stitch_planes of the blockwise planes: "
              f"{np.array_equal(blocks, stitch_planes(planes))}; to in-process stitched: "
              f"{np.array_equal(blocks, local)}; F1@0.5 3D {matching(truth, blocks)['f1']:.3f}", flush=True)

        for name in ("in-process", "in-process, blocks", "dask 2 workers", "dask 2 workers, not stitched"):
            tracemalloc.start()
            try:
                variants[name]()
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            print(f"{name}: peak traced memory of the calling process {peak / 2**20:.1f} MiB "
                  f"(the label stack: {image.size * 4 / 2**20:.1f} MiB)", flush=True)
        print(f"workers' peak RSS (MiB): 1-worker cluster {_worker_rss_mib(clients[1])}, "
              f"2-worker cluster {_worker_rss_mib(clients[2])}", flush=True)


if __name__ == "__main__":
    main()
