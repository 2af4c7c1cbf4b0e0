"""Reading images lazily (tif, zarr, npy), safely; outputs that are never left half-written are in `outputs`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["FORMATS", "read_image", "declared_channel_axis", "check_zarr_codecs", "INCOMPLETE_ATTR", "LABELS_ATTR",
           "LABELS_ATTRS", "WRITER_ATTR"]

FORMATS = (".tif", ".tiff", ".zarr", ".npy")
INCOMPLETE_ATTR = "napari_unet_incomplete"
# TIFFs up to this size are read into memory; larger ones stay on disk (memmap or zarr view)
EAGER_TIFF_BYTES = 256 * 2**20
#: Metadata marking a file as labels (segmentation), so that napari-unet's reader opens it as a
#: Labels layer; written by the CLI's ``predict``, the plugin's writer and `write_image` on request.
LABELS_ATTR = "napari_unet_layer_type"
LABELS_ATTRS = {LABELS_ATTR: "labels"}
#: Metadata of every array file napari-unet writes (its version): an existing output is replaced only
#: when it carries this (or one of the tags above), never a user's own file or folder of that name.
WRITER_ATTR = "napari_unet_output"


def _suffix(path) -> str:
    name = str(path).rstrip("/\\").lower()
    for ext in FORMATS:
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def _check_format(path, what: str) -> str:
    ext = _suffix(path)
    if ext not in FORMATS:
        raise ValueError(f"unknown {what} format {ext or '(no extension)'!r} for {str(path)!r}: use .tif, .tiff, "
                         ".zarr or .npy")
    return ext


def _input_format(path) -> str:
    """An input's format: its ending, or ``.zarr`` for a path inside a zarr store (one array of a group,
    an OME-Zarr pyramid level or label image such as ``image.ome.zarr/labels/nuclei``)."""
    p = Path(path)
    if _suffix(p) not in FORMATS and (not p.suffix or p.is_dir()) and _in_zarr_store(p):
        return ".zarr"
    return _check_format(p, "image")


def _in_zarr_store(path: Path) -> bool:
    return any(_suffix(parent) == ".zarr" for parent in path.parents)


def read_image(path, *, lazy: bool = True):
    """Open an image file as an array, without loading big files whole.

    ``.npy`` is memory-mapped; ``.zarr`` opens the array (the first level of an OME-Zarr multiscale
    group; a path inside a store opens that array or group, e.g. ``image.ome.zarr/labels/nuclei``);
    ``.tif`` is memory-mapped when stored contiguously, otherwise read through a zarr view when large,
    or read whole when small.

    Raises
    ------
    FileNotFoundError
        If the path does not exist.
    ValueError
        If the file is not a readable image of a known format, or is an interrupted output.
    """
    p = Path(path)
    ext = _input_format(p)
    if not p.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    try:
        if ext == ".npy":
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        elif ext == ".zarr":
            arr = _open_zarr(p)
        else:
            arr = _open_tiff(p, lazy)
    except (FileNotFoundError, MemoryError, _OwnError):
        raise
    except Exception as exc:  # every reader has its own exception types; say which file is bad
        raise ValueError(f"cannot read {str(path)!r} as {ext[1:]}: {_one_line(exc)}") from exc
    if np.dtype(arr.dtype).kind not in "biuf":
        raise ValueError(f"{str(path)!r} holds {arr.dtype} data: only numbers can be segmented")
    if 0 in arr.shape or arr.ndim < 2:
        raise ValueError(f"{str(path)!r} holds an array of shape {tuple(arr.shape)}: an image needs at least "
                         "two non-empty axes")
    return arr


def declared_channel_axis(path) -> int | None:
    """The channel axis a file's own metadata declares, else None.

    A TIFF's ``C`` axis (channels: ImageJ hyperstacks, OME-TIFF) or an OME-Zarr image's ``channel``
    axis, as an index into the array `read_image` returns. (RGB samples are not taken as channels
    silently: a one-channel model refuses them with its own advice.)
    """
    ext = _suffix(path)
    if ext == ".zarr" or (ext not in FORMATS and _in_zarr_store(Path(path))):
        from .omezarr import declared_channel_axis as ome_channel_axis

        return ome_channel_axis(path)
    if ext not in (".tif", ".tiff"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            axes = tif.series[0].axes
    except Exception:  # noqa: BLE001 - unreadable: read_image says why
        return None
    return axes.index("C") if "C" in axes else None


class _OwnError(ValueError):
    """A ValueError whose message is already written for the user (not wrapped again)."""


def _one_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _open_tiff(p: Path, lazy: bool):
    import tifffile

    with tifffile.TiffFile(p) as tif:
        series = tif.series[0]
        nbytes = math.prod(int(s) for s in series.shape) * np.dtype(series.dtype).itemsize  # never overflows
    if not lazy or nbytes <= EAGER_TIFF_BYTES:
        return tifffile.imread(p)
    try:
        return tifffile.memmap(p, mode="r")
    except ValueError:  # compressed or tiled: read through zarr, chunk by chunk
        import zarr

        store = tifffile.imread(p, aszarr=True)
        return zarr.open(store, mode="r")


#: Codecs that turn stored bytes into Python objects (pickle runs code); never decoded.
_OBJECT_CODECS = {"pickle", "json", "json2", "msgpack", "msgpack2", "vlen-array", "vlen-bytes", "vlen-utf8"}


def _codec_names(meta: dict):
    """Codec ids named in one array's metadata (zarr format 2 ``.zarray`` or format 3 ``zarr.json``)."""
    entries = list(meta.get("filters") or []) + [meta.get("compressor")] + list(meta.get("codecs") or [])
    for entry in entries:
        if isinstance(entry, dict):
            yield str(entry.get("id") or entry.get("name") or "").lower()
            config = entry.get("configuration")  # format 3 sharding nests its codecs
            if isinstance(config, dict):
                yield from _codec_names(config)


def _array_metadata(folder: Path):
    """The array metadata of a zarr folder (format 2 ``.zarray`` or format 3 ``zarr.json``), else None."""
    for name in (".zarray", "zarr.json"):
        try:
            meta = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue  # missing or unreadable: zarr itself refuses a broken array
        if isinstance(meta, dict) and (name == ".zarray" or meta.get("node_type") == "array"):
            return meta
    return None


def check_zarr_codecs(path) -> None:
    """Refuse a zarr store whose arrays decode Python objects (pickle, object codecs, object dtypes).

    The metadata files are read as JSON before zarr opens anything, so safety never depends on what
    the installed zarr or numcodecs would do with them. Only the group tree is walked: an array's
    folder (its chunks, possibly millions of files) is never listed.
    """
    root = Path(path)
    folders = [root]
    while folders:
        folder = folders.pop()
        meta = _array_metadata(folder)
        if meta is None:  # a group (or not zarr at all): look at its sub-folders
            try:
                folders.extend(e for e in folder.iterdir() if e.is_dir() and not e.name.startswith("."))
            except OSError:
                pass
            continue
        bad = sorted(set(_codec_names(meta)) & _OBJECT_CODECS)
        dtype = str(meta.get("dtype") or meta.get("data_type") or "")
        if bad or dtype.endswith("O") or dtype == "object":
            what = f"the {bad[0]} codec" if bad else "Python objects"
            raise _OwnError(f"{str(root)!r} stores {what} ({folder.relative_to(root) or '.'}): such arrays are "
                            "never read, because decoding them could run code; store plain numbers")


def _open_zarr(p: Path):
    import zarr

    check_zarr_codecs(p)
    try:
        node = zarr.open(str(p), mode="r")
    except FileNotFoundError:  # zarr's message names its store object, not the folder
        raise _OwnError(f"{str(p)!r} is not a zarr store (a folder without zarr metadata)") from None
    if INCOMPLETE_ATTR in node.attrs:
        raise _OwnError(f"{str(p)!r} is an interrupted output (marked incomplete): run the prediction again")
    if hasattr(node, "shape"):
        return node
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if multiscales:
        return node[multiscales[0]["datasets"][0]["path"]]
    arrays = list(node.array_keys())
    if len(arrays) == 1:
        return node[arrays[0]]
    inside = arrays or sorted(node.group_keys())  # e.g. an OME-Zarr "labels" group: its label images
    if not inside:
        raise _OwnError(f"{str(p)!r} is an empty zarr group: it holds no array to read")
    raise _OwnError(f"{str(p)!r} is a zarr group with {len(arrays)} arrays: point to one of them "
                     f"(e.g. {str(p / inside[0])!r}; it holds {', '.join(inside[:5])})")
