"""Readers for ``.tif/.tiff`` and ``.zarr`` that open big stacks lazily.

Small TIFFs (up to `napari_unet.io.EAGER_TIFF_BYTES`) are read into memory, which is fastest; bigger
ones become dask arrays over a memory map or tifffile's zarr view, read plane by plane as napari shows
them. TIFF pyramids and OME-Zarr multiscale groups open as multiscale layers; other zarr arrays as one
dask array; OME-Zarr images open with their label images (`_ome_reader`). Files tagged as labels
(`napari_unet.io.LABELS_ATTRS`: written by this plugin's writer from a Labels layer, or by
``napari-unet predict``) come back as Labels, with their provenance in the layer's metadata.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["get_reader", "read_layers", "LABELS_ATTR"]

from napari_unet.io import LABELS_ATTR  # noqa: E402 (re-exported: the tag that marks labels files)
from napari_unet.provenance import PROVENANCE_KEY  # noqa: E402

_EXTENSIONS = (".tif", ".tiff", ".zarr")


def get_reader(path):
    """npe2 reader hook: a reader function for one ``.tif/.tiff/.zarr`` path, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    name = str(path).rstrip("/\\").lower()
    if not name.endswith(_EXTENSIONS):
        return None
    return read_layers


def read_layers(path):
    """Read one file as a list of napari LayerData tuples (lazily when big).

    Raises
    ------
    ValueError
        For unreadable files and for interrupted outputs (zarr arrays marked incomplete).
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    p = Path(str(path).rstrip("/\\"))
    if p.suffix.lower() == ".zarr":
        from ._ome_reader import read_ome_layers

        layers = read_ome_layers(p)  # an OME-Zarr image: its Image layer and its Labels layers
        if layers is not None:
            return layers
        data, attrs, kind = _read_zarr(p)
    else:
        data, kind, attrs = _read_tiff(p)
    meta = {"name": p.stem}
    if PROVENANCE_KEY in attrs:  # written by napari-unet: how it was made
        meta["metadata"] = {PROVENANCE_KEY: attrs[PROVENANCE_KEY]}
    if isinstance(data, list):
        meta["multiscale"] = True
    if kind == "image" and attrs.get("rgb") is not None:
        meta["rgb"] = bool(attrs["rgb"])
    return [(data, meta, kind)]


def _as_dask(arr):
    """A dask array over an on-disk array, in chunks that suit both napari and tiled prediction.

    Stored chunks are kept along the leading axes and grown along Y and X to at least about 1024 px
    (whole multiples of the stored chunk): napari reads a plane at a time, and the core reads tiles
    of a few hundred to a few thousand pixels, so a dask chunk must neither be a thin TIFF strip
    (thousands of tiny tasks) nor a whole huge plane (each tile would decode all of it). Memory-mapped
    data, which has no chunks, gets 2048x2048 pieces.
    """
    import dask.array as da

    shape = tuple(int(s) for s in arr.shape)
    stored = getattr(arr, "chunks", None)
    n = len(shape)
    if isinstance(stored, tuple) and len(stored) == n and all(isinstance(c, (int, np.integer)) for c in stored):
        lead = [int(c) for c in stored[:-2]]
        plane = [min(s, max(int(c), -(-1024 // int(c)) * int(c))) for s, c in zip(shape[-2:], stored[-2:])]
    else:
        lead = [1] * max(0, n - 2)
        plane = [min(s, 2048) for s in shape[-2:]]
    return da.from_array(arr, chunks=tuple(lead + plane), asarray=True, fancy=False)


def _read_tiff(p: Path):
    import tifffile

    from napari_unet.io import EAGER_TIFF_BYTES, read_image

    if not p.exists():
        raise FileNotFoundError(f"{str(p)!r} does not exist")
    with tifffile.TiffFile(p) as tif:
        series = tif.series[0]
        levels = len(series.levels)
        described = tif.shaped_metadata or ({},)
    described = dict(described[0] or {})
    kind = "labels" if described.get(LABELS_ATTR) == "labels" else "image"
    if levels > 1:  # a pyramid: one lazy array per level
        import zarr

        arrays = []
        for level in range(levels):
            store = tifffile.imread(p, aszarr=True, series=0, level=level)
            arrays.append(_as_dask(zarr.open(store, mode="r")))
        return arrays, kind, described
    arr = read_image(p)  # in memory when small, memory-mapped or a zarr view when big
    if isinstance(arr, np.ndarray) and not isinstance(arr, np.memmap) and arr.nbytes <= EAGER_TIFF_BYTES:
        return arr, kind, described
    return _as_dask(arr), kind, described


def _read_zarr(p: Path):
    import zarr

    from napari_unet.io import INCOMPLETE_ATTR, check_zarr_codecs, read_image

    if not p.exists():
        raise FileNotFoundError(f"{str(p)!r} does not exist")
    check_zarr_codecs(p)  # every array of the store, multiscale levels included, before zarr decodes any
    node = zarr.open(str(p), mode="r")
    attrs = dict(node.attrs)
    if INCOMPLETE_ATTR in attrs:
        raise ValueError(f"{str(p)!r} is an interrupted output (marked incomplete): run the prediction again")
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not hasattr(node, "shape") and multiscales:
        datasets = multiscales[0].get("datasets", [])
        arrays = [_as_dask(node[d["path"]]) for d in datasets]
        kind = "labels" if ("image-label" in attrs or attrs.get(LABELS_ATTR) == "labels") else "image"
        return (arrays if len(arrays) > 1 else arrays[0]), attrs, kind
    arr = read_image(p)  # a plain array, or the single array of a group
    arr_attrs = dict(getattr(arr, "attrs", {}) or {})
    kind = "labels" if (arr_attrs.get(LABELS_ATTR) == "labels" or attrs.get(LABELS_ATTR) == "labels") else "image"
    return _as_dask(arr), arr_attrs, kind
