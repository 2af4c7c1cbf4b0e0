"""Peak memory of out-of-core prediction does not grow with the stack.

Segments stacks of 64 and 256 planes of 1024 x 1024 uint16 (synthetic nuclei) with the command line
(``napari-unet predict model.pt in.zarr -o out.zarr``), each run in its own process, and reports the
peak resident memory (the child's own VmHWM) and its growth over the process's
size after imports. The ratio big/small should be about 1: a stack that were read or written whole
would make it 4 (the 256-plane input alone is 512 MiB, its labels 256 MiB).

``--format tif`` reads a contiguous TIFF instead (memory-mapped; the CLI reads TIFFs under 256 MiB
into memory, so the threshold is lowered to 0 in the child to measure the memory-mapped path at both
sizes).

Usage: python benchmarks/streaming_memory.py [--planes 64 256] [--size 1024] [--format zarr tif]
                                             [--base-channels 16] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

def make_stack(path: Path, planes: int, size: int, fmt: str):
    """A stack of synthetic nuclei planes (one simulated plane, shifted and re-noised per plane)."""
    from napari_unet.synthetic import make_nuclei

    plane, _ = make_nuclei((size, size), seed=0)
    rng = np.random.default_rng(1)

    def planes_iter():
        for z in range(planes):
            shifted = np.roll(plane, (7 * z) % size, axis=1).astype(np.int32)
            yield np.clip(shifted + rng.integers(-20, 21, plane.shape), 0, 65535).astype(np.uint16)

    if fmt == "zarr":
        import zarr

        z = zarr.open_array(str(path), mode="w", shape=(planes, size, size), chunks=(1, size, size), dtype="u2")
        for i, p in enumerate(planes_iter()):
            z[i] = p
    else:
        import tifffile

        with tifffile.TiffWriter(path, bigtiff=True) as tw:  # contiguous pages: memory-mappable
            tw.write(planes_iter(), shape=(planes, size, size), dtype=np.uint16, contiguous=True,
                     photometric="minisblack")


def run_child(fmt, model, inp, out) -> dict:
    from _common import measure_cli

    prelude = "import napari_unet.io as nio; nio.EAGER_TIFF_BYTES = 0" if fmt == "tif" else ""  # memory-map TIFFs
    info = measure_cli(["predict", model, inp, "-o", out], prelude=prelude)
    if info["rc"] != 0:
        raise RuntimeError(f"prediction failed: {info}")
    return info


def main(argv=None):
    from _common import machine, random_model

    import napari_unet as nu

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--planes", type=int, nargs=2, default=[64, 256])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--format", nargs="+", default=["zarr"], choices=["zarr", "tif"])
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    print(machine(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="napari-unet-bench-", dir=args.workdir))
    try:
        model_path = nu.save_model(random_model(base=args.base_channels), work / "model.pt")
        for fmt in args.format:
            rows = {}
            for n in args.planes:
                inp = work / f"in{n}.{fmt}"
                make_stack(inp, n, args.size, fmt)
                out = work / f"out{n}-{fmt}.zarr"
                rows[n] = run_child(fmt, model_path, inp, out)
                print(f"{fmt}: {n} planes of {args.size}^2 -> peak RSS {rows[n]['peak_mib']:.0f} MiB "
                      f"(+{rows[n]['growth_mib']:.0f} MiB over the imports) in {rows[n]['seconds']:.0f} s "
                      f"({rows[n]['seconds'] / n:.2f} s/plane)", flush=True)
            small, big = (rows[n] for n in args.planes)
            import zarr

            first = [zarr.open_array(str(work / f"out{n}-{fmt}.zarr"), mode="r")[0] for n in args.planes]
            same = bool(np.array_equal(first[0], first[1]))
            print(f"{fmt}: peak RSS ratio {args.planes[1]}/{args.planes[0]} planes = "
                  f"{big['peak_mib'] / small['peak_mib']:.3f}; growth ratio {big['growth_mib'] / small['growth_mib']:.3f};"
                  f" plane 0 identical in both runs: {same}", flush=True)
            for n in args.planes:
                shutil.rmtree(work / f"out{n}-{fmt}.zarr", ignore_errors=True)
                p_in = work / f"in{n}.{fmt}"
                shutil.rmtree(p_in, ignore_errors=True) if p_in.is_dir() else p_in.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
