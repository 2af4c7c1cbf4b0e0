"""Writer for Labels layers: ``.tif/.tiff`` or ``.zarr``, atomically (never a half-written file)."""
from __future__ import annotations

import numpy as np


__all__ = ["write_labels"]


def write_labels(path: str, data, meta: dict) -> list:
    """npe2 single-layer writer for Labels layers.

    The file is written under a temporary name and renamed into place only when complete, block by
    block so lazy (dask/zarr) layers are never loaded whole (`napari_unet.outputs.write_image`).
    Multiscale layers are saved at full resolution. The file is tagged as labels
    (`napari_unet.io.LABELS_ATTRS`, in the TIFF description or the zarr attributes) so the plugin's
    reader opens it as a Labels layer again.

    Returns
    -------
    list of str
        The path written.
    """
    from napari_unet.io import LABELS_ATTRS
    from napari_unet.outputs import write_image

    from ._layers import level0

    data = level0(data)  # a list, or napari's MultiScaleData, for a multiscale layer
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biu":
        raise ValueError(f"labels must be integers, got {dtype}")
    if np.ndim(data) < 2:
        raise ValueError(f"labels must have at least two axes, got shape {tuple(np.shape(data))}")
    write_image(path, data, attrs=LABELS_ATTRS, dtype=np.uint8 if dtype.kind == "b" else dtype)
    return [str(path)]
