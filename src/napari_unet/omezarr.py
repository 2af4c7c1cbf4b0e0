"""OME-Zarr (NGFF 0.4 / 0.5) images and the label images napari-unet writes into them.

A segmentation of an OME-Zarr image is written into it as an NGFF label image,
``IMAGE.ome.zarr/labels/NAME``: a pyramid with the image's levels (labels downsampled by nearest
neighbour), the image's axes, units and coordinate transformations (without its channel axis),
``image-label`` metadata (colors and class names of semantic models, the source image) and NAME in
the ``labels`` group's list. The image's own arrays and metadata are never touched. The label is
written under a hidden temporary name inside ``labels/`` and renamed into place when complete; only
then is NAME added to the list, so the list never names a missing or half-written label. An existing
label is replaced only when napari-unet wrote it (its attributes carry `OWNER_KEY`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import INCOMPLETE_ATTR, check_zarr_codecs
from .outputs import _replace, atomic_path, copy_blocks
from .provenance import PROVENANCE_KEY

__all__ = ["OWNER_KEY", "OmeImage", "LabelTarget", "LabelImageOutput", "read_ome_image", "read_ome_labels", "label_target",
           "declared_channel_axis", "label_name", "write_label_image", "COLORS"]

#: Attribute of a label image written by napari-unet (its provenance); others are never replaced.
OWNER_KEY = PROVENANCE_KEY
LABELS_DIR = "labels"
#: RGBA colours of the first semantic classes (label values 2, 3, ...); background (0) is transparent.
COLORS = ((255, 64, 64, 255), (64, 160, 255, 255), (255, 200, 0, 255), (0, 200, 120, 255), (200, 80, 255, 255),
          (255, 128, 0, 255), (0, 220, 220, 255), (255, 100, 180, 255))
#: Pixels of a pyramid level computed at a time.
_BLOCK = 1024


def _group_attrs(folder: Path) -> tuple[int, dict] | None:
    """(zarr format, attributes) of a zarr group folder, read as JSON; None if it is not a group."""
    try:
        meta = json.loads((folder / "zarr.json").read_text())
        if isinstance(meta, dict) and meta.get("node_type") == "group":
            return 3, dict(meta.get("attributes") or {})
    except (OSError, ValueError):
        pass
    if (folder / ".zgroup").is_file():
        try:
            return 2, dict(json.loads((folder / ".zattrs").read_text()))
        except FileNotFoundError:
            return 2, {}
        except (OSError, ValueError):
            return None
    return None


def _ome(fmt: int, attrs: dict) -> dict:
    """The NGFF part of a group's attributes (under "ome" in 0.5)."""
    return dict(attrs.get("ome") or {}) if fmt == 3 else attrs


@dataclass(frozen=True)
class OmeImage:
    """An OME-Zarr image (a multiscale group), as far as labels need it.

    Attributes
    ----------
    path : Path
    zarr_format : int
        2 (NGFF 0.4) or 3 (NGFF 0.5).
    version : str
    multiscale : dict
        The first ``multiscales`` entry.
    shapes, chunks : tuple
        Shape and chunks of each level.
    labels : tuple of str
        The names in ``labels/``'s list.
    attrs : dict
        All of the group's attributes (a label's provenance is there).
    image_label : dict or None
        The ``image-label`` metadata of a label image; None for an image.
    """

    path: Path
    zarr_format: int
    version: str
    multiscale: dict
    shapes: tuple
    chunks: tuple
    labels: tuple = ()
    attrs: dict = field(default_factory=dict)
    image_label: dict | None = None

    @property
    def axes(self) -> list:
        """Axes as dicts (name, type, unit); names only when the file has no axes."""
        axes = self.multiscale.get("axes") or [{"name": n} for n in "tczyx"[-len(self.shapes[0]):]]
        return [dict(a) if isinstance(a, dict) else {"name": str(a)} for a in axes]

    @property
    def channel_axis(self) -> int | None:
        """The axis the metadata declares as channels, if any."""
        for k, a in enumerate(self.axes):
            if a.get("type") == "channel" or (not a.get("type") and a.get("name") == "c"):
                return k
        return None

    @property
    def paths(self) -> list:
        return [str(d["path"]) for d in self.multiscale["datasets"]]

    def transforms(self, level: int, drop: int | None = None) -> list:
        """The coordinate transformations of a level (scale, translation), without axis ``drop``."""
        return [_drop_axis(t, drop) for t in self.multiscale["datasets"][level].get("coordinateTransformations", [])]

    def geometry(self, drop: int | None = None) -> dict:
        """napari ``scale``/``translate``/``axis_labels``/``units`` of level 0 (without axis ``drop``)."""
        n = len(self.shapes[0]) - (drop is not None)
        scale, translate = np.ones(n), np.zeros(n)
        for t in self.transforms(0, drop) + [_drop_axis(t, drop) for t in
                                             self.multiscale.get("coordinateTransformations", [])]:
            if t.get("type") == "scale" and len(t.get("scale", ())) == n:
                scale, translate = scale * t["scale"], translate * t["scale"]
            elif t.get("type") == "translation" and len(t.get("translation", ())) == n:
                translate = translate + t["translation"]
        axes = [a for k, a in enumerate(self.axes) if k != drop]
        return {"scale": scale.tolist(), "translate": translate.tolist(),
                "axis_labels": [a.get("name", "") for a in axes], "units": [a.get("unit") or "pixel" for a in axes]}


def _drop_axis(transform: dict, axis: int | None) -> dict:
    out = dict(transform)
    for key in ("scale", "translation"):
        if axis is not None and isinstance(out.get(key), list):
            out[key] = [v for k, v in enumerate(out[key]) if k != axis]
    return out


def read_ome_image(path) -> OmeImage | None:
    """The OME-Zarr image at ``path``, or None when it is not one (a label image is not an image).

    Raises
    ------
    ValueError
        For stores that decode Python objects, and for NGFF versions other than 0.4 and 0.5.
    """
    found = _read_multiscale(Path(path))
    return None if found is None or found.image_label is not None else found


def read_ome_labels(image: OmeImage) -> dict:
    """Name -> `OmeImage` (with ``image_label`` set) of each label image the image's list names and holds."""
    labels = {}
    for name in image.labels:
        found = _read_multiscale(image.path / LABELS_DIR / name) if name == label_name(name) else None
        if found is not None and found.image_label is not None:
            labels[name] = found
    return labels


def _read_multiscale(path: Path) -> OmeImage | None:
    found = _group_attrs(path)
    if found is None:
        return None
    fmt, attrs = found
    ome = _ome(fmt, attrs)
    multiscales = ome.get("multiscales")
    if not multiscales:
        return None
    version = str(ome.get("version") or multiscales[0].get("version") or "")
    if (fmt, version) not in ((2, "0.4"), (3, "0.5")):
        raise ValueError(f"{str(path)!r} is OME-Zarr version {version or '(none)'}: labels are written into "
                         "NGFF 0.4 (zarr 2) or 0.5 (zarr 3) images; convert it with ome-zarr")
    check_zarr_codecs(path)
    import zarr

    group = zarr.open_group(str(path), mode="r")
    levels = [group[str(d["path"])] for d in multiscales[0]["datasets"]]
    labels = ()
    found = _group_attrs(path / LABELS_DIR)
    if found is not None:
        labels = tuple(str(n) for n in _ome(*found).get("labels", []))
    label = ome.get("image-label")
    return OmeImage(path, fmt, version, dict(multiscales[0]), tuple(tuple(a.shape) for a in levels),
                    tuple(tuple(a.chunks) for a in levels), labels, dict(attrs),
                    dict(label) if isinstance(label, dict) else None)


def declared_channel_axis(path) -> int | None:
    """The channel axis an OME-Zarr image's metadata declares (None for other inputs)."""
    try:
        image = read_ome_image(path) if str(path).rstrip("/\\").lower().endswith(".zarr") else None
    except ValueError:
        return None
    return None if image is None else image.channel_axis


def label_name(name: str) -> str:
    """A label image name made of letters, digits, ``_``, ``-`` and ``.`` (from a layer name, say)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or "segmentation"
    return name


def _owned(folder: Path) -> bool:
    """Whether a label folder was written by napari-unet."""
    found = _group_attrs(folder)
    return found is not None and OWNER_KEY in found[1]


@dataclass(frozen=True)
class LabelTarget:
    """Where a label image goes: ``image.path / "labels" / name``, checked to be writable."""

    image: OmeImage
    name: str

    @property
    def path(self) -> Path:
        return self.image.path / LABELS_DIR / self.name

    def output(self, shape, dtype, *, channel_axis=None, attrs=None, classes=None) -> "LabelImageOutput":
        """A `LabelImageOutput` for a segmentation of ``shape`` (see there)."""
        return LabelImageOutput(self, shape, dtype, channel_axis=channel_axis, attrs=attrs, classes=classes)


def label_target(path, image=None) -> LabelTarget | None:
    """The label image that ``path`` (``IMAGE.ome.zarr/labels/NAME``) names, checked; None for other paths.

    Parameters
    ----------
    path : path
        The output path.
    image : path, optional
        The input that is segmented: the label must go into that image (or the image of that level).

    Raises
    ------
    ValueError
        When the path is inside an OME-Zarr image's ``labels`` but cannot be written there: a label
        napari-unet did not write, a name that is not a plain folder name, another image than the input.
    """
    path = Path(str(path).rstrip("/\\"))
    if path.parent.name != LABELS_DIR or not path.parent.parent.name.lower().endswith(".zarr"):
        return None
    ome = read_ome_image(path.parent.parent)
    if ome is None:
        raise ValueError(f"{str(path.parent.parent)!r} is not an OME-Zarr image: labels/NAME outputs go into "
                         "an OME-Zarr image (a group with multiscales metadata)")
    name = path.name
    if name != label_name(name) or name.startswith("."):
        raise ValueError(f"{name!r} is not a label name napari-unet writes: use letters, digits, '_', '-' or '.' "
                         f"(e.g. {label_name(name)!r})")
    if image is not None:
        image = Path(str(image).rstrip("/\\"))
        if not any(_same(ome.path, p) for p in (image, image.parent)):
            raise ValueError(f"labels are written into the image they segment: the input is {str(image)!r}, "
                             f"not {str(ome.path)!r}")
    target = LabelTarget(ome, name)
    _check_replaceable(target.path)
    return target


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _check_replaceable(dest: Path) -> None:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise ValueError(f"{str(dest)!r} exists and is not a label image: choose another label name")
    if dest.exists() and not _owned(dest):
        raise ValueError(f"{str(dest)!r} is a label image napari-unet did not write: it is never replaced; "
                         "choose another label name")


class LabelImageOutput:
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
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "iub":
            raise ValueError(f"label images hold integers, got {self.dtype}")
        self.drop = self._dropped_axis(tuple(int(s) for s in shape), channel_axis)
        self.shape = tuple(int(s) for s in shape)
        self.attrs = {OWNER_KEY: {}, **dict(attrs or {})}
        json.dumps(self.attrs)  # TypeError now, not after the prediction
        self.classes = {int(k): str(v) for k, v in (classes or {}).items()}
        labels_dir = self.image.path / LABELS_DIR
        self._fresh = _group_attrs(labels_dir) is None
        if self._fresh and labels_dir.exists():
            raise ValueError(f"{str(labels_dir)!r} exists but is not a zarr group: move it away first")
        tag = uuid.uuid4().hex[:8]
        # a new labels group is made whole beside the image's arrays, then renamed: never half there
        self._staging = self.image.path / f".{LABELS_DIR}.partial-{tag}" if self._fresh else None
        self.tmp = (self._staging or labels_dir) / (f"{target.name}" if self._fresh else f".{target.name}.partial-{tag}")
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
            multiscale["coordinateTransformations"] = [_drop_axis(t, self.drop) for t in top]
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
            os.rename(self._staging, labels_dir)  # fails, changing nothing, if labels/ appeared meanwhile
        else:
            dest = labels_dir / self.target.name
            _check_replaceable(dest)
            _replace(self.tmp, dest)
            _add_to_list(labels_dir, self.image.zarr_format, self.target.name)
        self._committed = True

    def abort(self):
        """Remove what was written; the image is left as it was (or as committed)."""
        self.array = self.levels = self._group = None
        if not self._committed:
            for folder in (self._staging, self.tmp):
                if folder is not None and folder.exists():
                    shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
        return False


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
        block = np.asarray(source[box])
        dest[out] = block[np.ix_(*[p - p[0] for p in picks])]
