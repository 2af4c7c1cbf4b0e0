"""OME-Zarr (NGFF 0.4 / 0.5) images, as far as their label images need them; where a label image goes.

A segmentation of an OME-Zarr image is written into it as an NGFF label image,
``IMAGE.ome.zarr/labels/NAME``: a pyramid with the image's levels (labels downsampled by nearest
neighbour), the image's axes, units and coordinate transformations (without its channel axis),
``image-label`` metadata (colors and class names of semantic models, the source image) and NAME in
the ``labels`` group's list. The image's own arrays and metadata are never touched. The label is
written under a hidden temporary name inside ``labels/`` and renamed into place when complete; only
then is NAME added to the list, so the list never names a missing or half-written label. An existing
label is replaced only when napari-unet wrote it (its attributes carry `OWNER_KEY`). The writing
itself is `napari_unet.omezarr_labels`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import check_zarr_codecs
from .provenance import PROVENANCE_KEY

__all__ = ["OWNER_KEY", "LABELS_DIR", "OmeImage", "LabelTarget", "read_ome_image", "read_ome_labels", "label_target",
           "names_label_image", "declared_channel_axis", "label_name", "group_attrs", "ome_attrs", "drop_axis", "check_replaceable"]

#: Attribute of a label image written by napari-unet (its provenance); others are never replaced.
OWNER_KEY = PROVENANCE_KEY
LABELS_DIR = "labels"


def group_attrs(folder: Path) -> tuple[int, dict] | None:
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


def ome_attrs(fmt: int, attrs: dict) -> dict:
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
        return [drop_axis(t, drop) for t in self.multiscale["datasets"][level].get("coordinateTransformations", [])]

    def geometry(self, drop: int | None = None) -> dict:
        """napari ``scale``/``translate``/``axis_labels``/``units`` of level 0 (without axis ``drop``)."""
        n = len(self.shapes[0]) - (drop is not None)
        scale, translate = np.ones(n), np.zeros(n)
        for t in self.transforms(0, drop) + [drop_axis(t, drop) for t in
                                             self.multiscale.get("coordinateTransformations", [])]:
            if t.get("type") == "scale" and len(t.get("scale", ())) == n:
                scale, translate = scale * t["scale"], translate * t["scale"]
            elif t.get("type") == "translation" and len(t.get("translation", ())) == n:
                translate = translate + t["translation"]
        axes = [a for k, a in enumerate(self.axes) if k != drop]
        return {"scale": scale.tolist(), "translate": translate.tolist(),
                "axis_labels": [a.get("name", "") for a in axes], "units": [a.get("unit") or "pixel" for a in axes]}


def drop_axis(transform: dict, axis: int | None) -> dict:
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
    found = group_attrs(path)
    if found is None:
        return None
    fmt, attrs = found
    ome = ome_attrs(fmt, attrs)
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
    found = group_attrs(path / LABELS_DIR)
    if found is not None:
        labels = tuple(str(n) for n in ome_attrs(*found).get("labels", []))
    label = ome.get("image-label")
    return OmeImage(path, fmt, version, dict(multiscales[0]), tuple(tuple(a.shape) for a in levels),
                    tuple(tuple(a.chunks) for a in levels), labels, dict(attrs),
                    dict(label) if isinstance(label, dict) else None)


def declared_channel_axis(path) -> int | None:
    """The channel axis an OME-Zarr image's metadata declares, also for one of its pyramid levels (None
    for other inputs)."""
    path = Path(path)
    try:
        if str(path).rstrip("/\\").lower().endswith(".zarr"):
            image = read_ome_image(path)
        else:  # a level: the image is the closest folder above it whose datasets name it
            store = next((p for p in path.parents if str(p).lower().endswith(".zarr")), None)
            above = [] if store is None else [p for p in path.parents if p == store or store in p.parents]
            image = next((im for parent in above if (im := read_ome_image(parent)) is not None
                          and path.relative_to(parent).as_posix() in im.paths), None)
    except ValueError:
        return None
    return None if image is None else image.channel_axis


def label_name(name: str) -> str:
    """A label image name made of letters, digits, ``_``, ``-`` and ``.`` (from a layer name, say)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or "segmentation"
    return name


def _owned(folder: Path) -> bool:
    """Whether a label folder was written by napari-unet."""
    found = group_attrs(folder)
    return found is not None and OWNER_KEY in found[1]


@dataclass(frozen=True)
class LabelTarget:
    """Where a label image goes: ``image.path / "labels" / name``, checked to be writable."""

    image: OmeImage
    name: str

    @property
    def path(self) -> Path:
        return self.image.path / LABELS_DIR / self.name

    def output(self, shape, dtype, *, channel_axis=None, attrs=None, classes=None):
        """A `napari_unet.omezarr_labels.LabelImageOutput` for a segmentation of ``shape`` (see there)."""
        from .omezarr_labels import LabelImageOutput

        return LabelImageOutput(self, shape, dtype, channel_axis=channel_axis, attrs=attrs, classes=classes)


def names_label_image(path) -> bool:
    """Whether ``path`` has the form ``STORE.zarr/labels/NAME``: a label image of an OME-Zarr image."""
    path = Path(str(path).rstrip("/\\"))
    return path.parent.name == LABELS_DIR and path.parent.parent.name.lower().endswith(".zarr")


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
    if not names_label_image(path):
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
    check_replaceable(target.path)
    return target


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_replaceable(dest: Path) -> None:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise ValueError(f"{str(dest)!r} exists and is not a label image: choose another label name")
    if dest.exists() and not _owned(dest):
        raise ValueError(f"{str(dest)!r} is a label image napari-unet did not write: it is never replaced; "
                         "choose another label name")
