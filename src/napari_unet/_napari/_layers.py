"""Layer helpers shared by the widgets: what array to hand to the core, where outputs go, conversions.

Nothing here starts work in the background; the functions are cheap enough for the GUI thread.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["image_array", "labels_array", "spatial_geometry", "spatial_shape", "is_lazy", "level0", "make_output",
           "remove_output_store", "forget_edits", "drop_channel_axis", "segmentation_name",
           "same_layer", "unwrap", "fixed_label", "set_progress", "region_on_screen", "IN_MEMORY_LIMIT"]

#: Outputs bigger than this (bytes) go to an on-disk zarr array even when the image is in memory.
IN_MEMORY_LIMIT = 512 * 2**20


def unwrap(obj):
    """The object behind napari's ``PublicOnlyProxy`` (plugins receive the viewer wrapped in one).

    Holding the real object (weakly, for the viewer) keeps identity checks and weak references working.
    """
    return getattr(obj, "__wrapped__", obj)


def same_layer(a, b) -> bool:
    """Whether two references (possibly proxies) point to the same layer."""
    return a is not None and b is not None and unwrap(a) is unwrap(b)


def level0(data):
    """Full-resolution array of a (possibly multiscale) layer's data.

    Multiscale data (a list of arrays, or napari's ``MultiScaleData``) is a `Sequence`; numpy, dask and
    zarr arrays are not.
    """
    if isinstance(data, Sequence):
        return data[0]
    return data


def image_array(layer, channel_axis: int | None):
    """The array and channel axis to give the core for an Image layer.

    RGB(A) layers always use their last axis as channels; otherwise ``channel_axis`` (None for a
    single-channel image).
    """
    data = level0(layer.data)
    if getattr(layer, "rgb", False):
        return data, -1
    return data, channel_axis


def labels_array(layer, copy: bool = True):
    """A Labels layer's full-resolution data, copied when it lives in memory.

    Training reads the labels in a worker while the user may keep painting: a copy taken on the GUI
    thread when Train is pressed keeps the layer untouched and the training data consistent. Lazy
    (dask/zarr) labels are passed as they are; the core only reads them.
    """
    data = level0(layer.data)
    if copy and isinstance(data, np.ndarray):
        return np.array(data, copy=True)
    return data


def forget_edits(layer) -> None:
    """Clear a Labels layer's undo history (napari keeps it when ``layer.data`` is replaced).

    Otherwise Ctrl+Z after a new, not undoable result would paste the old edits into the new data.
    Toggling ``editable`` is napari's public way to reset the history.
    """
    editable = layer.editable
    layer.editable = False
    layer.editable = editable


def drop_channel_axis(labels, image_shape, channel_axis):
    """Labels painted over a multichannel image, reduced to the image's spatial shape.

    napari's *New labels layer* button gives a (C, Y, X) image (declared channel axis) labels of the
    same (C, Y, X) shape; strokes may be painted on any channel's plane. Such labels are collapsed over
    the channel axis (the largest id wins where planes disagree); labels of any other shape are returned
    as they are, for the core to check.
    """
    if channel_axis is None or tuple(np.shape(labels)) != tuple(image_shape):
        return labels
    axis = channel_axis % len(image_shape)
    if isinstance(labels, np.ndarray):
        return labels.max(axis=axis)
    import dask.array as da

    return da.from_array(labels, chunks=getattr(labels, "chunks", "auto")).max(axis=axis)


def is_lazy(data) -> bool:
    """Whether an array is read lazily (dask, zarr, memmap...) rather than held in memory."""
    return not isinstance(data, np.ndarray) or isinstance(data, np.memmap)


def spatial_geometry(layer, channel_axis: int | None, offset=None) -> dict:
    """Where an output layer over an image's spatial axes must be drawn to lie on the image: its
    ``scale``, ``translate``, ``rotate``, ``shear`` and ``affine`` (keyword arguments of ``add_labels``).

    ``offset`` (data pixels, spatial axes) places a window of the image instead of the whole of it.
    """
    from napari.utils.transforms import Affine

    n = layer.ndim
    scale = np.asarray(layer.scale, dtype=float)
    translate = np.asarray(layer.translate, dtype=float)
    rotate = np.asarray(layer.rotate, dtype=float)
    shear = Affine(shear=layer.shear, ndim=n).linear_matrix  # the upper-triangular matrix
    affine = np.asarray(layer.affine.affine_matrix, dtype=float)
    if channel_axis is not None and not getattr(layer, "rgb", False):
        a = channel_axis % n
        scale, translate = np.delete(scale, a), np.delete(translate, a)
        rotate, shear, affine = (np.delete(np.delete(m, a, 0), a, 1) for m in (rotate, shear, affine))
    if offset is not None:
        # the window's first pixel, through the layer's own rotation and shear (exact when there are none)
        translate = translate + (rotate @ shear) @ (scale * np.asarray(offset, dtype=float))
    return {"scale": list(scale), "translate": list(translate), "rotate": rotate, "shear": shear,
            "affine": affine}


def spatial_shape(data, channel_axis: int | None) -> tuple:
    """Shape of an image without its channel axis."""
    shape = list(np.shape(data))
    if channel_axis is not None:
        del shape[channel_axis % len(shape)]
    return tuple(int(s) for s in shape)


def fixed_label(label, lines: int = 2):
    """Make a magicgui Label wrap its text within a fixed height.

    A label whose size follows its text makes napari's whole window re-layout (and its canvas
    re-render) on each update; during training that was the biggest stall of the event loop (150 ms
    instead of 60 ms at worst, measured under Xvfb).
    """
    from qtpy.QtWidgets import QSizePolicy

    native = label.native
    native.setWordWrap(True)
    native.setFixedHeight(native.fontMetrics().lineSpacing() * lines + 4)
    native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    return label


def set_progress(bar, value: int) -> None:
    """Set a magicgui ProgressBar without QProgressBar's immediate repaint.

    ``QProgressBar.setValue`` repaints synchronously, which costs a separate composition of the whole
    napari window (its OpenGL canvas included); with updates briefly disabled the repaint joins the
    widget's other pending updates in the next frame.
    """
    value = int(value)
    if bar.value == value:
        return
    native = bar.native
    native.setUpdatesEnabled(False)
    try:
        bar.value = value
    finally:
        native.setUpdatesEnabled(True)  # schedules an ordinary (coalesced) update


def segmentation_name(image_name: str) -> str:
    """Name of the Labels layer that holds an image's segmentation."""
    return f"{image_name} segmentation"


def make_output(shape, dtype, lazy: bool, prefix: str = "segmentation"):
    """A zero-filled output array: numpy in memory, or a zarr array in a temporary folder.

    The folder lives until `remove_output_store` is called for the array (when a layer's data is
    replaced) or the interpreter exits; it is not removed when a widget closes because the layer it
    backs may still be in the viewer.
    """
    nbytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    if not lazy and nbytes <= IN_MEMORY_LIMIT:
        return np.zeros(shape, dtype)
    import zarr

    folder = Path(tempfile.mkdtemp(prefix="napari-unet-"))
    atexit.register(shutil.rmtree, folder, True)
    # one chunk per plane tile: writes from tiles and reads of the displayed plane touch few chunks
    chunks = tuple([1] * (len(shape) - 2) + [min(int(s), 1024) for s in shape[-2:]])
    try:
        arr = zarr.open_array(str(folder / f"{prefix}.zarr"), mode="w", shape=tuple(int(s) for s in shape),
                              chunks=chunks, dtype=np.dtype(dtype), fill_value=0)
        arr.attrs["napari_unet_temporary"] = str(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return arr


def remove_output_store(arr) -> None:
    """Delete the temporary folder behind an array made by `make_output` (no-op for other arrays)."""
    attrs = getattr(arr, "attrs", None)
    if attrs is None:
        return
    try:
        folder = attrs.get("napari_unet_temporary")
    except Exception:  # a store that is already gone
        return
    if folder and Path(folder).name.startswith("napari-unet-"):
        shutil.rmtree(folder, ignore_errors=True)


def region_on_screen(viewer, layer, region) -> bool:
    """Whether a written region intersects the plane the viewer shows (else no refresh is needed)."""
    if tuple(viewer.dims.order) != tuple(range(viewer.dims.ndim)):
        return True  # transposed views: do not guess
    point = layer.world_to_data(viewer.dims.point)
    for axis in range(len(region) - viewer.dims.ndisplay):
        r, c = region[axis], int(round(point[axis]))
        if isinstance(r, slice):
            if not (r.start or 0) <= c < (r.stop if r.stop is not None else c + 1):
                return False
        elif int(r) != c:
            return False
    return True
