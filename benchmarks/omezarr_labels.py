"""What writing a segmentation as an OME-Zarr label image costs over a plain zarr array.

Both write the same labels; the label image also computes the pyramid (nearest-neighbour levels
matching the image's) and writes the NGFF metadata. The image is written once by ome-zarr's own writer.

Usage: python benchmarks/omezarr_labels.py [--shape 8 2048 2048] [--levels 4] [--reps 3]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, machine, ratio_summary  # noqa: E402

from napari_unet.omezarr_labels import write_label_image  # noqa: E402
from napari_unet.outputs import write_image  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[8, 2048, 2048])
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    import zarr
    from ome_zarr.writer import write_image as ome_write_image

    print(machine())
    rng = np.random.default_rng(0)
    shape = tuple(args.shape)
    labels = (rng.random(shape) < 0.3).astype(np.uint8) * 2  # a busy segmentation: compression has work
    root = Path(tempfile.mkdtemp(prefix="omezarr-bench-"))
    try:
        image = root / "img.ome.zarr"
        ome_write_image(np.zeros(shape, np.uint16), zarr.open_group(str(image), mode="w"),
                        scale_factors=[2**k for k in range(1, args.levels)], axes="zyx")
        count = iter(range(10**6))

        def plain():
            write_image(root / f"plain{next(count)}.zarr", labels)

        def label_image():
            write_label_image(image, f"seg{next(count)}", labels, classes={0: "background", 2: "class 2"})

        times = alternate({"plain zarr": plain, "OME-Zarr label image": label_image}, args.reps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"labels {shape} uint8, {args.levels} levels, {args.reps} reps")
    for name, t in times.items():
        print(f"  {name:22s} median {statistics.median(t):.2f} s")
    print(f"  label image / plain zarr: {ratio_summary(times, 'OME-Zarr label image', 'plain zarr')}")


if __name__ == "__main__":
    main()
