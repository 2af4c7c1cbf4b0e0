"""What an output Labels layer says about itself: class names (``features``), provenance, its source image.

The plugin's writer saves the provenance with the file, and writes a layer whose source image is an
OME-Zarr image back into that image as a label image.
"""
from __future__ import annotations

from napari_unet.provenance import PROVENANCE_KEY, label_classes, provenance

__all__ = ["OME_KEY", "mark_output", "classes_of", "PROVENANCE_KEY"]

#: Layer metadata naming the OME-Zarr image a layer belongs to: ``{"image": path, "label": name}``.
OME_KEY = "ome_zarr"


def mark_output(layer, model, image=None, *, features: bool = True, **settings) -> None:
    """Give a Labels layer made by ``model`` its class names, provenance and (from ``image``) OME-Zarr source.

    ``settings`` are recorded in the provenance (``plan=`` records tiles, halo, batch and device).
    ``features=False`` for layers whose ids are not class ids (clicked objects get ids of their own).
    """
    classes = label_classes(model) if features else {}
    if classes:  # semantic: one row per written label value (napari shows the class under the cursor)
        layer.features = {"index": list(classes), "class": list(classes.values())}
    layer.metadata[PROVENANCE_KEY] = provenance(model, **settings)
    source = (image.metadata.get(OME_KEY) or {}).get("image") if image is not None else None
    if source:
        from napari_unet.omezarr import label_name

        layer.metadata[OME_KEY] = {"image": source, "label": label_name(layer.name)}
    if image is not None and image.ndim == layer.ndim:  # no channel axis between them: same axes
        try:
            layer.axis_labels, layer.units = image.axis_labels, image.units
        except (ValueError, TypeError):  # napari refused them for this layer: keep its own
            pass


def classes_of(features) -> dict:
    """Label value -> class name from a Labels layer's features (its ``index`` and ``class`` columns)."""
    try:
        return {int(i): str(c) for i, c in zip(features["index"], features["class"])}
    except (KeyError, TypeError, ValueError):
        return {}
