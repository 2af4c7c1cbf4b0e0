"""Loading the bioimage.io packages napari-unet made: our configuration and weights, nothing else.

A package is a zip archive with an ``rdf.yaml`` description. napari-unet writes its own model
configuration into the description's ``config`` field (under `CONFIG_KEY`) and its weights as
``pytorch_state_dict``; loading reads exactly these two with a YAML parser that builds only plain data
and ``torch.load(weights_only=True)``, then rebuilds the network from napari-unet's own UNet class. The
architecture source file in the package is never imported: no code from a package ever runs here.
"""
from __future__ import annotations

import hashlib
import io
import warnings
import zipfile
from pathlib import Path

import torch

from ..model import Model, ModelConfig, network_from_config

__all__ = ["load_package", "read_rdf", "CONFIG_KEY", "PACKAGE_FORMAT_VERSION", "PACKAGE_SUFFIX"]

#: Key of napari-unet's entry in the rdf's ``config`` field.
CONFIG_KEY = "napari-unet"
#: Layout of that entry (the model configuration itself is `ModelConfig`'s).
PACKAGE_FORMAT_VERSION = 1
PACKAGE_SUFFIX = ".zip"
_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: Descriptions are small; a larger one is not a description we wrote.
_MAX_RDF_BYTES = 8 * 2**20
_FOREIGN_ADVICE = ("napari-unet runs only packages it exported (its own UNet, never a package's code); run this one "
                   "with bioimageio.core (`bioimageio predict`), ilastik or deepImageJ")


def read_rdf(path) -> dict:
    """The description (``rdf.yaml``) of a bioimage.io package, as plain data.

    Raises
    ------
    ValueError
        If ``path`` is not a zip archive holding a readable description.
    """
    import yaml

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{str(path)!r} is not a bioimage.io model package (not a zip archive)")
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in _RDF_NAMES if n in zf.namelist()), None)
            if name is None:
                raise ValueError(f"{str(path)!r} is not a bioimage.io model package (no rdf.yaml inside)")
            if zf.getinfo(name).file_size > _MAX_RDF_BYTES:
                raise ValueError(f"{str(path)!r} has a {name} too large to be a model description")
            rdf = yaml.safe_load(zf.read(name))  # plain data only: safe_load constructs no Python objects
    except (zipfile.BadZipFile, yaml.YAMLError, OSError, EOFError) as exc:
        raise ValueError(f"{str(path)!r} is a damaged bioimage.io package ({type(exc).__name__})") from None
    if not isinstance(rdf, dict):
        raise ValueError(f"{str(path)!r} is not a bioimage.io model package (its rdf.yaml is not a mapping)")
    return rdf


def load_package(path) -> Model:
    """Load a bioimage.io model package exported by napari-unet, safely.

    Parameters
    ----------
    path : path
        A ``.zip`` written by `export_package` (``napari-unet export``).

    Returns
    -------
    Model
        The model, as `napari_unet.load_model` gives it for the ``.pt`` file it was exported from.

    Raises
    ------
    ValueError
        If the file is not a package, is damaged, or was not made by napari-unet (foreign packages are
        refused: their architecture would be their own code).
    """
    from ..modelfile import MAGIC, _check_weights

    path = Path(path)
    rdf = read_rdf(path)
    ours = rdf.get("config", {}).get(CONFIG_KEY) if isinstance(rdf.get("config"), dict) else None
    if not isinstance(ours, dict) or ours.get("format") != MAGIC:
        name = rdf.get("name") or "this model"
        raise ValueError(f"{str(path)!r} ({str(name)[:60]!r}) is a bioimage.io package not made by napari-unet: "
                         f"{_FOREIGN_ADVICE}")
    if ours.get("format_version") != PACKAGE_FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} was exported by a newer napari-unet (package format "
                         f"{ours.get('format_version')!r}): upgrade napari-unet")
    try:
        config = ModelConfig.from_dict(ours.get("model"))
        history = ours.get("history") or []
        state_dict = _read_weights(path, rdf)
        _check_weights(config, state_dict)  # shapes checked before any memory is allocated for the network
        network = network_from_config(config)
        network.load_state_dict(state_dict, strict=True)
    except Exception as exc:
        raise ValueError(f"{str(path)!r} is a damaged napari-unet package ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    network.eval()
    return Model(network=network, config=config, history=list(history))


def _read_weights(path: Path, rdf: dict) -> dict:
    """The ``pytorch_state_dict`` weights named by the rdf, checked against its sha256."""
    entry = (rdf.get("weights") or {}).get("pytorch_state_dict")
    if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
        raise ValueError("the package has no pytorch_state_dict weights")
    source = entry["source"]
    with zipfile.ZipFile(path) as zf:
        if source not in zf.namelist():
            raise ValueError(f"the weights file {source!r} is not in the package")
        data = zf.read(source)
    sha = entry.get("sha256")
    if sha is not None and hashlib.sha256(data).hexdigest() != sha:
        raise ValueError(f"the weights file {source!r} does not match its sha256 in rdf.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError("the weights are not a mapping of tensors")
    return state
