"""What made a segmentation: the model (its hash), napari-unet's version and the settings, as JSON.

The same dictionary goes into a Labels layer's ``metadata`` and into the files napari-unet writes
(zarr attributes, the TIFF description, OME-Zarr label attributes), under `PROVENANCE_KEY`.
"""
from __future__ import annotations

import hashlib
import weakref
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import conventions

__all__ = ["PROVENANCE_KEY", "provenance", "weights_sha256", "label_classes"]

#: Key of the provenance in layer metadata and file attributes.
PROVENANCE_KEY = "napari_unet_provenance"


_hashes = weakref.WeakKeyDictionary()  # network -> (tensor versions, hash): weights hashed once per change


def weights_sha256(model) -> str:
    """SHA-256 of the network's weights (names, shapes, dtypes and values, in order).

    The same weights give the same hash whether the model was just trained, loaded from a ``.pt`` file
    or from a package, so a result can be traced to its model even when that was never saved. Cached
    per network until its tensors change (torch counts in-place changes in ``Tensor._version``).
    """
    state = model.network.state_dict()
    versions = tuple(getattr(t, "_version", None) for t in state.values())
    cached = _hashes.get(model.network)
    if cached is not None and cached[0] == versions and None not in versions:
        return cached[1]
    digest = hashlib.sha256()
    for name, tensor in state.items():
        arr = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{arr.dtype}:{arr.shape};".encode())
        digest.update(arr.tobytes())
    _hashes[model.network] = (versions, digest.hexdigest())
    return _hashes[model.network][1]


def _file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def label_classes(model) -> dict:
    """Label value written by a semantic model -> its class name (background is 0); {} for instance models.

    (An instance model writes one id per object; they all belong to its "interior" class.)
    """
    if model.mode != "semantic":
        return {}
    values = conventions.written_labels(model.config.class_ids)
    return {int(v): str(n) for v, n in zip(values, model.config.class_names)}


def provenance(model, *, model_file=None, plan=None, **settings) -> dict:
    """A JSON-able record of how a segmentation was made.

    Parameters
    ----------
    model : napari_unet.Model
    model_file : path, optional
        The model file it was loaded from (its name and SHA-256 are recorded).
    plan : napari_unet.predict.PredictionPlan, optional
        Records the tile size, halo, batch size and device.
    **settings
        Further JSON-able settings (e.g. ``channel_axis=0``).

    Returns
    -------
    dict
        ``software``, ``version``, ``created`` (UTC, ISO 8601), ``model`` (weights hash, file and its
        hash, mode, classes, architecture, training steps and precision) and ``settings`` (tiles,
        device, test-time augmentation; for instance models the fragment rule and the linking across
        planes).
    """
    from . import __version__

    c = model.config
    record = {"weights_sha256": weights_sha256(model), "mode": c.mode, "class_ids": list(c.class_ids),
              "class_names": list(c.class_names), "dims": c.dims, "depth": c.depth,
              "base_channels": c.base_channels, "in_channels": c.in_channels, "trained_steps": c.trained_steps}
    if c.precision is not None:
        record["training_precision"] = c.precision
    if model_file is not None and Path(model_file).is_file():
        record["file"] = Path(model_file).name
        record["file_sha256"] = _file_sha256(model_file)
    used = {}
    if plan is not None:
        used = {"tile_size": list(plan.tile_size) if plan.tile_size else None, "halo": int(plan.halo),
                "batch_size": int(plan.batch_size), "device": str(plan.device), "tta": bool(plan.tta),
                "precision": plan.precision}
        if model.mode == "instance":  # what changes the objects: fragments, linking across planes
            used.update(min_size=plan.min_size, min_fraction=float(plan.min_fraction),
                        stitch_planes=plan.stitch_planes)
            if plan.stitch_planes is not None:
                used["stitch_trim"] = bool(plan.stitch_trim)
    used.update({k: (v.item() if isinstance(v, np.generic) else v) for k, v in settings.items()})
    return {"software": "napari-unet", "version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": record, "settings": used}
