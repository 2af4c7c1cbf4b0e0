"""Outputs that are never left half-written: a temporary name, then a rename; never over an input."""
from __future__ import annotations

import json
import mmap
import os
import shutil
from pathlib import Path

import numpy as np

from . import __version__
from .io import INCOMPLETE_ATTR, LABELS_ATTR, WRITER_ATTR, _check_format, _suffix
from .omezarr import names_label_image
from .publish import (PendingOutput, _remove, atomic_path, clean_stale, publish, resolve_link, temporary_name,
                      uninterruptible)

__all__ = ["atomic_path", "check_output_path", "written_by_napari_unet", "refuse_inputs_as_outputs",
           "release_pages", "OutputFile", "commit_together", "write_image", "copy_blocks", "BLOCK_PIXELS"]


def check_output_path(path) -> Path:
    """Raise a clear error for an output path that cannot be written (format, folder, file/folder clash)."""
    _refuse_label_group(path)
    ext = _check_format(path, "output")
    path = resolve_link(path)  # a symlinked output is written where it points; the link stays
    if not path.parent.exists():
        raise FileNotFoundError(f"the output folder {str(path.parent)!r} does not exist")
    if not path.parent.is_dir():
        raise NotADirectoryError(f"{str(path.parent)!r} is a file, not a folder: choose an output path in a folder")
    if path.exists() and path.is_dir() != (ext == ".zarr"):
        raise ValueError(f"{str(path)!r} exists and is a {'folder' if path.is_dir() else 'file'}: "
                         "choose another output path")
    if path.exists() and not written_by_napari_unet(path):
        why = ("a .npy file cannot record who wrote it" if ext == ".npy" else "it was not written by napari-unet")
        raise ValueError(f"{str(path)!r} already exists and {why}, so it is never replaced: choose another "
                         "output path, or delete it first")
    return path


def _refuse_label_group(path) -> None:
    """A path inside an OME-Zarr image's ``labels/`` holds a label image, written only by the label writer."""
    if names_label_image(path) and not _suffix(path):
        raise ValueError(f"{str(path)!r} is inside an OME-Zarr image's labels group, which holds label images "
                         "only: give labels there with `napari-unet predict -o`, and probabilities (or any other "
                         "array) a .zarr, .tif or .npy path of their own")


def _stored_attrs(path: Path, ext: str) -> dict:
    """The metadata of an existing output, read without decoding any array data."""
    if ext == ".zarr":
        for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
            try:
                meta = json.loads((path / name).read_text())
            except (OSError, ValueError):
                continue
            meta = meta.get(key) if key else meta
            if isinstance(meta, dict):
                return meta
        return {}
    if ext in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                described = tif.shaped_metadata or ({},)
            return described[0] if isinstance(described[0], dict) else {}
        except Exception:  # noqa: BLE001 - an unreadable file is simply not ours
            return {}
    return {}


def written_by_napari_unet(path) -> bool:
    """True when an existing image output carries napari-unet's tags (so it may be replaced)."""
    path = Path(path)
    attrs = _stored_attrs(path, _suffix(path))
    return any(tag in attrs for tag in (WRITER_ATTR, LABELS_ATTR, INCOMPLETE_ATTR))


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


class OutputFile(PendingOutput):
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
        clean_stale(resolve_link(path))  # leftovers of a killed run: removed, restored or reported
        self.path = check_output_path(path)
        self.attrs = {WRITER_ATTR: __version__, **(attrs or {})}
        try:
            json.dumps(self.attrs)
        except (TypeError, ValueError) as e:
            raise TypeError(f"output attrs must be JSON-able (numbers, strings, lists, dicts): {e}") from None
        self.ext = _suffix(self.path)
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self.tmp = temporary_name(self.path)
        self._scratch = None
        self._finished = self._committed = False
        try:
            self._create(chunks)
        except BaseException:
            self.abort()
            raise

    def _check_free_space(self):
        """Refuse, before anything is written, an output the disk cannot hold (memory-mapped scratch
        files are sparse: without this a full disk would show up later as a bus error)."""
        nbytes = float(np.prod(self.shape, dtype=np.float64)) * self.dtype.itemsize
        needed = {".zarr": 0.0, ".npy": 1.0}.get(self.ext, 2.0) * nbytes  # TIFF: scratch + file
        free = shutil.disk_usage(self.path.parent).free
        if needed > free:
            raise OSError(f"the output {str(self.path)!r} needs about {needed / 2**30:.1f} GiB but only "
                          f"{free / 2**30:.1f} GiB are free there: free some space or write a .zarr output")

    def _create(self, chunks):
        shape = self.shape
        self._check_free_space()
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
            publish(self.tmp, self.path)
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


def commit_together(*outputs):
    """Finish every `OutputFile` (the slow part), then move them all into place back to back.

    An error or Ctrl-C while finishing leaves every destination as it was, never a new file next to a
    stale or missing partner (e.g. probabilities without their labels).
    """
    for output in outputs:
        output.finish()
    with uninterruptible([o.path for o in outputs]):  # Ctrl-C comes before or after all the renames
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
    with OutputFile(path, shape, dtype, attrs=attrs) as out:
        copy_blocks(array, out.array, dtype)


def copy_blocks(array, dest, dtype) -> None:
    """Copy ``array`` into ``dest`` (same shape) in blocks of whole rows of one plane (`BLOCK_PIXELS`)."""
    shape = tuple(np.shape(array))
    rows = max(1, BLOCK_PIXELS // max(1, shape[-1]))
    for index in np.ndindex(*shape[:-2]):
        for y in range(0, shape[-2], rows):
            block = index + (slice(y, min(y + rows, shape[-2])),)
            dest[block] = np.asarray(array[block], dtype=dtype)
