"""Writer for Labels layers: ``.tif/.tiff`` or ``.zarr``, atomically (never a half-written file)."""
from __future__ import annotations

import numpy as np


__all__ = ["write_labels", "BLOCK_PIXELS"]

#: Pixels copied at a time.
BLOCK_PIXELS = 2**24


def write_labels(path: str, data, meta: dict) -> list:
    """npe2 single-layer writer for Labels layers.

    The file is written under a temporary name and renamed into place only when complete
    (`napari_unet.io.OutputFile`), block by block (rows of one plane) so lazy (dask/zarr) layers are
    never loaded whole.
    Multiscale layers are saved at full resolution. The file is tagged as labels
    (`napari_unet.io.LABELS_ATTRS`, in the TIFF description or the zarr attributes) so the plugin's
    reader opens it as a Labels layer again.

    Returns
    -------
    list of str
        The path written.
    """
    from napari_unet.io import LABELS_ATTRS, OutputFile

    from ._layers import level0

    data = level0(data)  # a list, or napari's MultiScaleData, for a multiscale layer
    shape, dtype = tuple(np.shape(data)), np.dtype(data.dtype)
    if dtype.kind not in "biu":
        raise ValueError(f"labels must be integers, got {dtype}")
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    if len(shape) < 2:
        raise ValueError(f"labels must have at least two axes, got shape {shape}")
    # blocks of whole rows of one plane, about 16 M pixels each: memory stays bounded for huge planes
    rows = max(1, BLOCK_PIXELS // max(1, shape[-1]))
    with OutputFile(path, shape, dtype, attrs=LABELS_ATTRS) as out:
        for index in np.ndindex(*shape[:-2]):
            for y in range(0, shape[-2], rows):
                block = index + (slice(y, min(y + rows, shape[-2])),)
                out.array[block] = np.asarray(data[block], dtype=dtype)
    return [str(path)]
