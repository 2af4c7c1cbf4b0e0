"""Peak memory of blockwise instance labels does not grow with the size of one item.

Instance labels of a whole item (a plane for a 2D model, a volume for a 3D one) need its probabilities
and distance maps in memory at once; ``napari-unet predict --block N`` labels it block by block and
merges the ids across block borders (`napari_unet.blockwise`). This segments single planes of
``--sizes`` (synthetic nuclei, zarr in and zarr out) with the command line, each in its own process,
and reports the peak resident memory (the child's own VmHWM) and its growth over the process's
size after imports. The largest run is made under a data limit
(``RLIMIT_DATA``, which counts every heap and anonymous mapping) set *below* what the whole-item path
needs for that plane, estimated from a whole-item run of the smallest size: it only completes because
memory is bounded by the block. The benchmark network is untrained (random weights, depth 2, base 4):
its "objects" are a few regions far larger than the margin, so the last line (whole-item and blockwise
partitions) shows the documented limit, not the exact case, which the tests check on realistic objects.

Usage: python benchmarks/blockwise_memory.py [--sizes 2048 4096 6144] [--block 512] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

def make_plane(path: Path, size: int):
    """One ``size`` x ``size`` uint16 plane of synthetic nuclei (a 1024^2 simulation, tiled and shifted)."""
    import zarr

    from napari_unet.synthetic import make_nuclei

    tile, _ = make_nuclei((1024, 1024), seed=0)
    z = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(1024, 1024), dtype="u2")
    for y in range(0, size, 1024):
        for x in range(0, size, 1024):
            part = np.roll(tile, (37 * y // 1024, 53 * x // 1024), axis=(0, 1))
            z[y:y + 1024, x:x + 1024] = part[: size - y, : size - x]


def main(argv=None):
    from _common import machine, measure_cli, random_model

    import napari_unet as nu

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 6144])
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--base-channels", type=int, default=4)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    print(machine(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="napari-unet-bench-", dir=args.workdir))
    try:
        model = nu.save_model(random_model(depth=args.depth, base=args.base_channels, mode="instance", classes=3),
                              work / "model.pt")
        small = args.sizes[0]
        make_plane(work / f"in{small}.zarr", small)
        whole = measure_cli(["predict", model, work / f"in{small}.zarr", "-o", work / "whole.zarr"])
        per_pixel = whole["growth_mib"] / small**2
        print(f"whole item {small}^2: peak RSS {whole['peak_mib']:.0f} MiB (+{whole['growth_mib']:.0f} MiB over the "
              f"imports, {per_pixel * 2**20:.0f} B/px) in {whole['seconds']:.0f} s", flush=True)
        rows = {}
        for size in args.sizes:
            inp = work / f"in{size}.zarr"
            if not inp.exists():
                make_plane(inp, size)
            limit = 0
            if size == args.sizes[-1] and size > small:
                # far below what the whole item needs: 1.75x the smallest blockwise run's peak
                limit = int(1.75 * rows[small]["peak_mib"] * 2**20)
            rows[size] = measure_cli(["predict", model, inp, "-o", work / f"out{size}.zarr", "--block", args.block],
                                     data_limit=limit)
            r = rows[size]
            need = whole["base_kib"] / 1024 + per_pixel * size**2
            note = (f" under RLIMIT_DATA {limit / 2**20:.0f} MiB (the whole item would need about {need:.0f} MiB, "
                    f"{need / (limit / 2**20):.1f}x the limit)") if limit else ""
            print(f"blockwise {size}^2, block {args.block}: rc {r['rc']} peak RSS {r['peak_mib']:.0f} MiB "
                  f"(+{r['growth_mib']:.0f} MiB) in {r['seconds']:.0f} s{note} {r['error']}", flush=True)
            shutil.rmtree(inp, ignore_errors=True)
        first, last = rows[args.sizes[0]], rows[args.sizes[-1]]
        print(f"peak RSS ratio {args.sizes[-1]}^2 / {args.sizes[0]}^2 = {last['peak_mib'] / first['peak_mib']:.3f} "
              f"for {(args.sizes[-1] / args.sizes[0]) ** 2:.0f}x the pixels", flush=True)
        import zarr

        from napari_unet.metrics import matching

        a = zarr.open_array(str(work / "whole.zarr"), mode="r")[...]
        b = zarr.open_array(str(work / f"out{small}.zarr"), mode="r")[...]
        pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
        same = len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})
        print(f"{small}^2: {a.max()} objects whole-item, {b.max()} blockwise; same partition: {same}; "
              f"matching F1 (IoU 0.5) {matching(a, b)['f1']:.4f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
