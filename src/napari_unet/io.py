"""Reading and writing images lazily (tif, zarr, npy), with outputs that are never left half-written."""
from __future__ import annotations

import json
import mmap
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["FORMATS", "read_image", "check_output_path", "refuse_inputs_as_outputs", "check_zarr_codecs", "OutputFile", "write_image",
           "INCOMPLETE_ATTR"]

FORMATS = (".tif", ".tiff", ".zarr", ".npy")
INCOMPLETE_ATTR = "napari_unet_incomplete"
# TIFFs up to this size are read into memory; larger ones stay on disk (memmap or zarr view)
EAGER_TIFF_BYTES = 256 * 2**20
#: Metadata marking a file as labels (segmentation), so that napari-unet's reader opens it as a
#: Labels layer; written by the CLI's ``predict``, the plugin's writer and `write_image` on request.
LABELS_ATTR = "napari_unet_layer_type"
LABELS_ATTRS = {LABELS_ATTR: "labels"}


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


def read_image(path, *, lazy: bool = True):
    """Open an image file as an array, without loading big files whole.

    ``.npy`` is memory-mapped; ``.zarr`` opens the array (the first level of an OME-Zarr multiscale
    group); ``.tif`` is memory-mapped when stored contiguously, otherwise read through a zarr view when
    large, or read whole when small.

    Raises
    ------
    FileNotFoundError
        If the path does not exist.
    ValueError
        If the file is not a readable image of a known format, or is an interrupted output.
    """
    p = Path(path)
    ext = _check_format(p, "image")
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


class _OwnError(ValueError):
    """A ValueError whose message is already written for the user (not wrapped again)."""


def _one_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _open_tiff(p: Path, lazy: bool):
    import tifffile

    with tifffile.TiffFile(p) as tif:
        series = tif.series[0]
        nbytes = int(np.prod(series.shape)) * np.dtype(series.dtype).itemsize
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


def check_zarr_codecs(path, max_files: int = 10_000) -> None:
    """Refuse a zarr store whose arrays decode Python objects (pickle, object codecs, object dtypes).

    The metadata files are read as JSON before zarr opens anything, so safety never depends on what
    the installed zarr or numcodecs would do with them.
    """
    root = Path(path)
    names = (".zarray", "zarr.json")
    for k, meta_path in enumerate(m for m in root.rglob("*") if m.name in names):
        if k >= max_files:
            break
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue  # unreadable metadata: zarr itself refuses the array
        if not isinstance(meta, dict):
            continue
        bad = sorted(set(_codec_names(meta)) & _OBJECT_CODECS)
        dtype = str(meta.get("dtype") or meta.get("data_type") or "")
        if bad or dtype.endswith("O") or dtype == "object":
            what = f"the {bad[0]} codec" if bad else "Python objects"
            raise _OwnError(f"{str(root)!r} stores {what} ({meta_path.relative_to(root).parent or '.'}): such "
                            "arrays are never read, because decoding them could run code; store plain numbers")


def _open_zarr(p: Path):
    import zarr

    check_zarr_codecs(p)
    node = zarr.open(str(p), mode="r")
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
    raise _OwnError(f"{str(p)!r} is a zarr group with {len(arrays)} arrays: point to one of them "
                     f"({', '.join(arrays[:5])})")


def _tmp_name(path: Path, tag: str = "partial") -> Path:
    """A hidden sibling name that keeps the extension (so an interrupted zarr is still recognised)."""
    ext = _suffix(path)
    stem = path.name[: len(path.name) - len(ext)] if ext else path.name
    return path.with_name(f".{stem}.{tag}-{uuid.uuid4().hex[:8]}{ext}")


def _replace(tmp: Path, dest: Path):
    """Move ``tmp`` onto ``dest``; an existing directory (zarr) is swapped out, then removed.

    If the second move fails the original directory is moved back, so ``dest`` is never lost.
    """
    if dest.is_dir() and not dest.is_symlink():
        if not tmp.is_dir():
            raise ValueError(f"{str(dest)!r} is a folder: choose a file name for the output")
        old = _tmp_name(dest, "old")
        os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except BaseException:
            os.replace(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


@contextmanager
def atomic_path(path):
    """A temporary sibling path to write; moved onto ``path`` only if the block ends without an error.

    Readers never see a half-written file and an existing file is kept until the new one is complete;
    on an error or an interruption (KeyboardInterrupt included) the temporary file or folder is removed.

    Examples
    --------
    >>> with atomic_path("model.pt") as tmp:  # doctest: +SKIP
    ...     torch.save(payload, tmp)
    """
    path = Path(path)
    if path.is_dir() and _suffix(path) != ".zarr":
        raise ValueError(f"{str(path)!r} is a folder: choose a file name for the output")
    tmp = _tmp_name(path)
    try:
        yield tmp
        _replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def _remove(path: Path):
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def check_output_path(path) -> Path:
    """Raise a clear error for an output path that cannot be written (format, folder, file/folder clash)."""
    path = Path(path)
    ext = _check_format(path, "output")
    if not path.parent.exists():
        raise FileNotFoundError(f"the output folder {str(path.parent)!r} does not exist")
    if path.exists() and path.is_dir() != (ext == ".zarr"):
        raise ValueError(f"{str(path)!r} exists and is a {'folder' if path.is_dir() else 'file'}: "
                         "choose another output path")
    return path


def refuse_inputs_as_outputs(outputs, inputs) -> None:
    """Raise ValueError when an output names an input or another output, under any spelling.

    Existing paths are compared with `os.path.samefile` (symlinks, hard links, case-insensitive file
    systems), others by their resolved path, so a run can never write over the data it reads.
    """
    outputs = [Path(o) for o in outputs]
    inputs = [Path(i) for i in inputs]

    def same(a: Path, b: Path) -> bool:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()

    for k, out in enumerate(outputs):
        for inp in inputs:
            if same(out, inp):
                raise ValueError(f"the output {str(out)!r} is the input {str(inp)!r}: choose another output path")
        for other in outputs[k + 1:]:
            if same(out, other):
                raise ValueError(f"two outputs name the same file ({str(out)!r} and {str(other)!r})")


def release_pages(view) -> None:
    """Drop the pages of a memory-mapped array view from this process (``madvise(MADV_DONTNEED)``).

    Reading a memory-mapped TIFF/npy stack (or writing a memory-mapped output) maps every page touched,
    so the resident memory of the process would grow to the size of the file even though only one
    plane is worked on. Once a plane is done its pages are dropped: they stay in the page cache (a
    shared mapping loses nothing) and are simply mapped again if read again. Copy-on-write mappings
    (mode "c") are left alone, since dropping their pages would discard changes.
    """
    mm = getattr(view, "_mmap", None)
    madvise = getattr(mm, "madvise", None)
    if (madvise is None or not hasattr(mmap, "MADV_DONTNEED") or getattr(view, "mode", "c") not in ("r", "r+", "w+")
            or not view.flags.c_contiguous or view.nbytes == 0):
        return
    try:
        base = np.frombuffer(mm, dtype=np.uint8)
        start = view.ctypes.data - base.ctypes.data
        del base
        page = mmap.PAGESIZE
        lo, hi = -(-start // page) * page, (start + view.nbytes) // page * page  # whole pages inside only
        if hi > lo:
            madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (ValueError, OSError, BufferError, TypeError):
        pass


class OutputFile:
    """An output written piece by piece under a temporary name, put in place only by `commit`.

    Use as a context manager: leaving the block with an exception (Ctrl-C included) removes the partial
    file and leaves any existing file at ``path`` untouched.

    Parameters
    ----------
    path : path
        Final location (.tif/.tiff, .zarr, .npy).
    shape, dtype :
        Of the array to write.
    chunks : tuple, optional
        zarr chunks (default: whole trailing two axes per chunk, at most 1024 px each side).
    attrs : dict, optional
        JSON-able metadata kept with the data: zarr attributes, or entries of a TIFF's shaped-JSON
        description (``tifffile.TiffFile.shaped_metadata``); ``.npy`` files have no room for it.

    Attributes
    ----------
    array : array-like
        Write results into it (``array[region] = values``).
    """

    def __init__(self, path, shape, dtype, chunks=None, attrs=None):
        self.path = check_output_path(path)
        self.attrs = dict(attrs or {})
        try:
            json.dumps(self.attrs)
        except (TypeError, ValueError) as e:
            raise TypeError(f"output attrs must be JSON-able (numbers, strings, lists, dicts): {e}") from None
        self.ext = _suffix(self.path)
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self.tmp = _tmp_name(self.path)
        self._scratch = None
        self._finished = self._committed = False
        try:
            self._create(chunks)
        except BaseException:
            self.abort()
            raise

    def _create(self, chunks):
        shape = self.shape
        if self.ext == ".zarr":
            import zarr

            if chunks is None:
                chunks = tuple([1] * (len(shape) - 2) + [min(s, 1024) for s in shape[-2:]])
            self.array = zarr.open_array(str(self.tmp), mode="w", shape=self.shape, chunks=chunks,
                                         dtype=self.dtype, fill_value=0)
            self.array.attrs.update({**self.attrs, INCOMPLETE_ATTR: True})
        elif self.ext == ".npy":
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype, shape=self.shape)
        else:  # TIFF pages are written in order at commit; fill a scratch memmap first
            self._scratch = self.tmp.with_name(self.tmp.name + ".npy")
            self.array = np.lib.format.open_memmap(self._scratch, mode="w+", dtype=self.dtype, shape=self.shape)

    def commit(self):
        """Finish the file and move it into place (replacing an existing one only now)."""
        self.finish()
        if not self._committed:
            _replace(self.tmp, self.path)
            self._committed = True

    def finish(self):
        """Complete the temporary file (for TIFF: write it) without moving it into place yet.

        Lets several outputs be finished first and then moved into place back to back (`commit_together`),
        so an interruption never leaves one new file next to an old or missing partner.
        """
        if self._finished:
            return
        if self.ext == ".zarr":
            del self.array.attrs[INCOMPLETE_ATTR]
        elif self.ext == ".npy":
            self.array.flush()
            del self.array
        else:
            import tifffile

            self.array.flush()
            data = self.array
            planes = data.reshape((-1,) + data.shape[-2:]) if data.ndim > 2 else data[None]
            big = data.nbytes > 2**32 - 2**25

            def each_plane():  # a plane's pages are dropped once written: memory stays at one plane
                for plane in planes:
                    yield plane
                    release_pages(plane)

            with tifffile.TiffWriter(self.tmp, bigtiff=big) as tw:
                tw.write(each_plane(), shape=data.shape, dtype=data.dtype, photometric="minisblack",
                         metadata={"axes": {2: "YX", 3: "ZYX", 4: "TZYX"}.get(data.ndim, None), **self.attrs})
            del self.array, data, planes
            _remove(self._scratch)
        self._finished = True

    def abort(self):
        """Remove the partial output; the destination is left as it was (or as committed)."""
        self.array = None
        if not self._committed:
            _remove(self.tmp)
        if self._scratch is not None:
            _remove(self._scratch)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.commit()
            except BaseException:  # a failed commit (disk full, Ctrl-C) leaves no temporary files either
                self.abort()
                raise
        else:
            self.abort()
        return False


def commit_together(*outputs):
    """Finish every `OutputFile` (the slow part), then move them all into place back to back.

    An error or Ctrl-C while finishing leaves every destination as it was, never a new file next to a
    stale or missing partner (e.g. probabilities without their labels).
    """
    for output in outputs:
        output.finish()
    for output in outputs:
        output.commit()


#: Pixels `write_image` copies at a time.
BLOCK_PIXELS = 2**24


def write_image(path, array, attrs=None, dtype=None):
    """Write an in-memory or lazy array to ``path`` atomically, block by block.

    Blocks are whole rows of one plane, about `BLOCK_PIXELS` each, so a lazy (dask, zarr) array is never
    loaded whole, however big its planes. ``attrs``: metadata kept with the data, as in `OutputFile`
    (e.g. ``LABELS_ATTRS`` for labels); ``dtype``: written dtype (default the array's).
    """
    shape = tuple(np.shape(array))
    dtype = np.dtype(dtype if dtype is not None else array.dtype)
    if len(shape) < 2:
        raise ValueError(f"an image needs at least two axes, got shape {shape}")
    rows = max(1, BLOCK_PIXELS // max(1, shape[-1]))
    with OutputFile(path, shape, dtype, attrs=attrs) as out:
        for index in np.ndindex(*shape[:-2]):
            for y in range(0, shape[-2], rows):
                block = index + (slice(y, min(y + rows, shape[-2])),)
                out.array[block] = np.asarray(array[block], dtype=dtype)
