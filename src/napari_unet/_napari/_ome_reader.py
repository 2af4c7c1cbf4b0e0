"""OME-Zarr images as napari layers: the image (multiscale, lazy) and each of its label images.

Layers get the scale, translation, axis names and units of their metadata; Labels layers get the
class names of ``image-label`` properties as ``features``, its colours, napari-unet's provenance when
it wrote them, and `OME_KEY` metadata naming their image (so the writer can save them back into it).
"""
from __future__ import annotations

from pathlib import Path

from ._provenance import OME_KEY, PROVENANCE_KEY

__all__ = ["read_ome_layers"]


def read_ome_layers(path) -> list | None:
    """LayerData tuples of an OME-Zarr image and its labels, or None when ``path`` is not an OME-Zarr image.

    Versions other than NGFF 0.4 and 0.5 give None too (the generic zarr reader opens them).
    """
    from napari_unet.omezarr import read_ome_image, read_ome_labels

    try:
        image = read_ome_image(path)
    except ValueError as exc:
        if "OME-Zarr version" in str(exc):
            return None
        raise
    if image is None:
        return None
    source = {"image": str(Path(path))}
    name = Path(path).name.split(".")[0] or Path(path).name
    layers = [(_levels(image), _meta(image, name, {OME_KEY: source}), "image")]
    for label_name, label in read_ome_labels(image).items():
        metadata = {OME_KEY: {**source, "label": label_name}}
        if PROVENANCE_KEY in label.attrs:
            metadata[PROVENANCE_KEY] = label.attrs[PROVENANCE_KEY]
        meta = _meta(label, label_name, metadata)
        meta.update(_label_style(label.image_label or {}))
        layers.append((_levels(label), meta, "labels"))
    return layers


def _levels(ome):
    import zarr

    from ._reader import _as_dask

    group = zarr.open_group(str(ome.path), mode="r")
    arrays = [_as_dask(group[p]) for p in ome.paths]
    return arrays if len(arrays) > 1 else arrays[0]


def _meta(ome, name: str, metadata: dict) -> dict:
    geometry = ome.geometry()
    geometry["units"] = [_known_unit(u) for u in geometry["units"]]
    return {"name": name, "metadata": metadata, "multiscale": len(ome.paths) > 1, **geometry}


def _known_unit(unit: str) -> str:
    """The unit, if napari (pint) knows it; else "pixel" (a layer with an unknown unit cannot be made)."""
    import pint

    try:
        pint.get_application_registry()(unit)
    except Exception:  # pint raises its own errors, of several kinds, for names it does not know
        return "pixel"
    return unit


def _label_style(image_label: dict) -> dict:
    """``features`` (one row per label value of ``properties``) and a direct colormap from ``colors``."""
    out = {}
    rows = [p for p in image_label.get("properties") or [] if isinstance(p, dict) and "label-value" in p]
    if rows:
        keys = sorted({k for p in rows for k in p} - {"label-value"})
        out["features"] = {"index": [int(p["label-value"]) for p in rows],
                           **{k: [p.get(k) for p in rows] for k in keys}}
    colors = {int(c["label-value"]): [v / 255 for v in c["rgba"]] for c in image_label.get("colors") or []
              if isinstance(c, dict) and "label-value" in c and len(c.get("rgba") or ()) == 4}
    if colors:
        out["colormap"] = {None: [0.5, 0.5, 0.5, 1.0], **colors}
    return out
