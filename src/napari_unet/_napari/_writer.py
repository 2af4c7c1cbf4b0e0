"""Writer for Labels layers: ``.tif/.tiff`` or ``.zarr``, atomically (never a half-written file), or an
NGFF label image inside an OME-Zarr image."""
from __future__ import annotations

from pathlib import Path

import numpy as np


__all__ = ["write_labels"]


def write_labels(path: str, data, meta: dict) -> list:
    """npe2 single-layer writer for Labels layers.

    The file is written under a temporary name and renamed into place only when complete, block by
    block so lazy (dask/zarr) layers are never loaded whole (`napari_unet.outputs.write_image`).
    Multiscale layers are saved at full resolution. The file is tagged as labels
    (`napari_unet.io.LABELS_ATTRS`, in the TIFF description or the zarr attributes) so the plugin's
    reader opens it as a Labels layer again, and keeps the layer's provenance (made by napari-unet).

    Saved to an OME-Zarr image (``IMAGE.ome.zarr``, or ``IMAGE.ome.zarr/labels/NAME``), the layer is
    written into it as a label image (`napari_unet.omezarr_labels.write_label_image`): named as when it was
    read from that image, else after the layer; with the layer's class names and provenance.

    Returns
    -------
    list of str
        The path written.
    """
    from napari_unet.io import LABELS_ATTRS
    from napari_unet.outputs import write_image

    from ._layers import level0
    from ._provenance import PROVENANCE_KEY

    data = level0(data)  # a list, or napari's MultiScaleData, for a multiscale layer
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biu":
        raise ValueError(f"labels must be integers, got {dtype}")
    if np.ndim(data) < 2:
        raise ValueError(f"labels must have at least two axes, got shape {tuple(np.shape(data))}")
    metadata = meta.get("metadata") or {}
    made = {PROVENANCE_KEY: metadata[PROVENANCE_KEY]} if PROVENANCE_KEY in metadata else {}
    into = _ome_label_path(Path(path), meta)
    if into is not None:
        from napari_unet.omezarr_labels import write_label_image

        from ._provenance import classes_of

        try:
            written = write_label_image(into.parent.parent, into.name, data, attrs=made,
                                        classes=classes_of(meta.get("features")))
        except ValueError as exc:  # napari reports a writer's ValueError only as "not a valid writer"
            from napari.utils.notifications import show_error

            show_error(f"napari-unet: {exc}")
            raise
        return [str(written)]
    write_image(path, data, attrs={**LABELS_ATTRS, **made}, dtype=np.uint8 if dtype.kind == "b" else dtype)
    return [str(path)]


def _ome_label_path(path: Path, meta: dict) -> Path | None:
    """``IMAGE/labels/NAME`` when ``path`` is an OME-Zarr image or a label path inside one, else None."""
    from napari_unet.omezarr import label_name, label_target, read_ome_image

    if label_target(path) is not None:
        return path
    if not path.is_dir() or read_ome_image(path) is None:
        return None
    source = (meta.get("metadata") or {}).get("ome_zarr") or {}
    same = source.get("image") and Path(source["image"]).resolve() == path.resolve()
    name = source.get("label") if same and source.get("label") else label_name(meta.get("name") or "segmentation")
    return path / "labels" / name
