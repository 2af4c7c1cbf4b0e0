"""Writing an NGFF label image into an OME-Zarr image: atomically, as a pyramid with the image's levels.

See `napari_unet.omezarr` for what is written where. The label is built under a hidden temporary name
inside ``labels/`` (or a whole new ``labels`` group beside the image's arrays), renamed into place when
complete, and only then named in the ``labels`` list.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .io import INCOMPLETE_ATTR
from .omezarr import (LABELS_DIR, OWNER_KEY, LabelTarget, check_replaceable, drop_axis, group_attrs, label_target)
from .outputs import atomic_path, copy_blocks
from .publish import PendingOutput, _flush_to_disk, clean_stale, publish, temporary_name, uninterruptible

__all__ = ["LabelImageOutput", "write_label_image", "COLORS"]

#: RGBA colours of the first semantic classes (label values 2, 3, ...); background (0) is transparent.
COLORS = ((255, 64, 64, 255), (64, 160, 255, 255), (255, 200, 0, 255), (0, 200, 120, 255), (200, 80, 255, 255),
          (255, 128, 0, 255), (0, 220, 220, 255), (255, 100, 180, 255))
#: Pixels of a pyramid level computed at a time.
_BLOCK = 1024


class LabelImageOutput(PendingOutput):
    """An NGFF label image written under a temporary name inside ``labels/``; like `outputs.OutputFile`.

    Write the full-resolution labels into ``array``; `finish` computes the pyramid and writes the
    metadata, `commit` renames the label into place and then adds its name to the ``labels`` list
    (a new ``labels`` group appears whole, with its list). Leaving the ``with`` block with an error
    removes everything written: the image is as it was.

    Parameters
    ----------
    target : LabelTarget
    shape, dtype :
        Of the segmentation: the image's level-0 shape, without ``channel_axis``.
    channel_axis : int, optional
        The image's axis the segmentation does not have (default: the declared channel axis, when the
        shape lacks one axis).
    attrs : dict, optional
        JSON-able attributes of the label group, e.g. the provenance (stored under `OWNER_KEY`).
    classes : dict, optional
        Label value -> class name (semantic models): written as ``image-label`` colors and properties.
    """

    def __init__(self, target: LabelTarget, shape, dtype, *, channel_axis=None, attrs=None, classes=None):
        self.target, self.image = target, target.image
        self.path = target.path  # where the label image goes (as `OutputFile.path`)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "iu":
            raise ValueError(f"label images hold integers, got {self.dtype}")
        self.drop = self._dropped_axis(tuple(int(s) for s in shape), channel_axis)
        self.shape = tuple(int(s) for s in shape)
        self.attrs = {OWNER_KEY: {}, **dict(attrs or {})}
        json.dumps(self.attrs)  # TypeError now, not after the prediction
        self.classes = {int(k): str(v) for k, v in (classes or {}).items()}
        labels_dir = self.image.path / LABELS_DIR
        self._fresh = group_attrs(labels_dir) is None
        if self._fresh and labels_dir.exists():
            raise ValueError(f"{str(labels_dir)!r} exists but is not a zarr group: move it away first")
        # leftovers of a killed run (hidden, named after the run) are removed or reported first
        clean_stale(labels_dir if self._fresh else labels_dir / target.name)
        # a new labels group is made whole beside the image's arrays, then renamed: never half there
        self._staging = temporary_name(labels_dir) if self._fresh else None
        self.tmp = self._staging / target.name if self._fresh else temporary_name(labels_dir / target.name)
        self._finished = self._committed = False
        try:
            self._create()
        except BaseException:
            self.abort()
            raise

    def _dropped_axis(self, shape, channel_axis):
        full = self.image.shapes[0]
        if len(shape) == len(full) and channel_axis is None:
            drop = None
        else:
            drop = channel_axis if channel_axis is not None else self.image.channel_axis
            drop = None if drop is None else drop % len(full)
        expected = tuple(s for k, s in enumerate(full) if k != drop)
        if tuple(shape) != expected:
            raise ValueError(f"the segmentation's shape {tuple(shape)} does not match the image "
                             f"{str(self.image.path)!r} (shape {tuple(full)}): a label image has the image's shape"
                             + (" without its channel axis" if drop is not None else ""))
        return drop

    def _level_shapes(self):
        return [tuple(s for k, s in enumerate(shape) if k != self.drop) for shape in self.image.shapes]

    def _create(self):
        import zarr

        fmt = self.image.zarr_format
        if self._fresh:
            staging = zarr.open_group(str(self._staging), mode="w", zarr_format=fmt)
            staging.attrs.update({"labels": [self.target.name]} if fmt == 2 else
                                 {"ome": {"version": self.image.version, "labels": [self.target.name]}})
        group = zarr.open_group(str(self.tmp), mode="w", zarr_format=fmt)
        group.attrs.update({INCOMPLETE_ATTR: True})
        self._group = group
        self.levels = [self._create_level(group, path, shape)
                       for path, shape in zip(self.image.paths, self._level_shapes())]
        self.array = self.levels[0]

    def _create_level(self, group, path, shape):
        chunks = tuple([1] * (len(shape) - 2) + [min(s, 1024) for s in shape[-2:]])
        extra = ({"chunk_key_encoding": {"name": "v2", "separator": "/"}} if self.image.zarr_format == 2 else
                 {"dimension_names": [a.get("name") for k, a in enumerate(self.image.axes) if k != self.drop]})
        return group.create_array(path, shape=shape, chunks=chunks, dtype=self.dtype, fill_value=0, **extra)

    def _metadata(self) -> dict:
        axes = [a for k, a in enumerate(self.image.axes) if k != self.drop]
        datasets = [{"path": p, "coordinateTransformations": self.image.transforms(i, self.drop)}
                    for i, p in enumerate(self.image.paths)]
        multiscale = {"name": self.target.name, "axes": axes, "datasets": datasets}
        top = self.image.multiscale.get("coordinateTransformations")
        if top:
            multiscale["coordinateTransformations"] = [drop_axis(t, self.drop) for t in top]
        label = {"source": {"image": "../../"}}
        if self.classes:
            others = [v for v in sorted(self.classes) if v != 0]
            label["colors"] = [{"label-value": 0, "rgba": [0, 0, 0, 0]}] + [
                {"label-value": v, "rgba": list(COLORS[k % len(COLORS)])} for k, v in enumerate(others)]
            label["properties"] = [{"label-value": v, "class": n} for v, n in sorted(self.classes.items())]
        if self.image.zarr_format == 2:
            return {"multiscales": [{"version": "0.4", **multiscale}], "image-label": {"version": "0.4", **label},
                    **self.attrs}
        return {"ome": {"version": self.image.version, "multiscales": [multiscale], "image-label": label},
                **self.attrs}

    def finish(self):
        """Compute the lower levels from the full-resolution labels and write the metadata."""
        if self._finished:
            return
        for source, level in zip(self.levels, self.levels[1:]):
            _downsample_nearest(source, level)
        self._group.attrs.put(self._metadata())
        self._finished = True

    def commit(self):
        """Rename the finished label into place, then name it in the ``labels`` list."""
        self.finish()
        if self._committed:
            return
        labels_dir = self.image.path / LABELS_DIR
        if self._fresh:
            _flush_to_disk(self._staging)
            with uninterruptible([labels_dir]):
                os.rename(self._staging, labels_dir)  # fails, changing nothing, if labels/ appeared meanwhile
        else:
            dest = labels_dir / self.target.name
            check_replaceable(dest)
            with uninterruptible([dest]):  # the label and its entry in the list arrive together
                publish(self.tmp, dest)
                _add_to_list(labels_dir, self.image.zarr_format, self.target.name)
        self._committed = True

    def abort(self):
        """Remove what was written; the image is left as it was (or as committed)."""
        self.array = self.levels = self._group = None
        if not self._committed:
            for folder in (self._staging, self.tmp):
                if folder is not None and folder.exists():
                    shutil.rmtree(folder, ignore_errors=True)


def write_label_image(image, name, labels, *, attrs=None, classes=None, channel_axis=None) -> Path:
    """Write ``labels`` (numpy, dask, zarr: never loaded whole) into an OME-Zarr image as label ``name``.

    The same checks and atomic write as ``napari-unet predict IMAGE -o IMAGE/labels/NAME``; ``attrs``,
    ``classes`` and ``channel_axis`` as in `LabelImageOutput`. Returns the label image's path.
    """
    target = label_target(Path(image) / LABELS_DIR / name)
    if target is None:
        raise ValueError(f"{str(image)!r} is not an OME-Zarr image (a .zarr group with multiscales metadata)")
    dtype = np.dtype(labels.dtype)
    dtype = np.dtype(np.uint8) if dtype.kind == "b" else dtype
    with target.output(np.shape(labels), dtype, channel_axis=channel_axis, attrs=attrs, classes=classes) as out:
        copy_blocks(labels, out.array, dtype)
    return target.path


def _add_to_list(labels_dir: Path, fmt: int, name: str) -> None:
    """Add ``name`` to the labels group's list, rewriting its metadata file atomically."""
    file = labels_dir / ("zarr.json" if fmt == 3 else ".zattrs")
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        meta = {}
    attrs = meta.setdefault("attributes", {}) if fmt == 3 else meta
    ome = attrs.setdefault("ome", {}) if fmt == 3 else attrs
    names = list(ome.get("labels") or [])
    if name in names:
        return
    ome["labels"] = names + [name]
    with atomic_path(file) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2))


def _downsample_nearest(source, dest) -> None:
    """Fill ``dest`` with ``source`` sampled at the centres of ``dest``'s pixels (labels stay labels).

    Works block by block (about `_BLOCK` pixels a side), for any ratio of shapes.
    """
    src_shape, shape = tuple(source.shape), tuple(dest.shape)
    index = [np.minimum(((np.arange(n) + 0.5) * (m / n)).astype(np.int64), m - 1) for m, n in zip(src_shape, shape)]
    steps = [1] * (len(shape) - 2) + [_BLOCK, _BLOCK]
    for corner in np.ndindex(*[-(-n // s) for n, s in zip(shape, steps)]):
        out = tuple(slice(c * s, min((c + 1) * s, n)) for c, s, n in zip(corner, steps, shape))
        picks = [ix[o] for ix, o in zip(index, out)]
        box = tuple(slice(int(p[0]), int(p[-1]) + 1) for p in picks)
        local = [p - p[0] for p in picks]
        slices = [_as_slice(p) for p in local]
        dest[out] = np.asarray(source[box])[tuple(slices) if None not in slices else np.ix_(*local)]


def _as_slice(picks):
    """A slice picking the same indices, when they are evenly spaced (far faster than fancy indexing)."""
    step = int(picks[1] - picks[0]) if len(picks) > 1 else 1
    if step > 0 and np.array_equal(picks, np.arange(len(picks)) * step + picks[0]):
        return slice(int(picks[0]), int(picks[-1]) + 1, step)
    return None
