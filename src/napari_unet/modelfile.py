"""Model files: one file with weights, architecture, normalization, mode and classes.

Files are written with `torch.save` and read with ``torch.load(weights_only=True)``, which refuses any
pickled object other than tensors and plain containers: loading a shared file never runs its code. The
configuration is stored as JSON text.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .outputs import atomic_path
from .publish import resolve_link
from .model import Model, ModelConfig, network_from_config

__all__ = ["save_model", "load_model", "check_model_output", "MAGIC"]

MAGIC = "napari-unet-model"
#: The one format version: the file's layout. The configuration's own fields are `ModelConfig`'s.
FORMAT_VERSION = 1
#: Endings of model file names.
MODEL_SUFFIXES = (".pt", ".pth")


def save_model(model: Model, path) -> Path:
    """Save a model to one file, atomically (an existing file is replaced only when the new one is complete).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    if not isinstance(model, Model):
        raise TypeError(f"save_model takes a napari_unet Model, got {type(model).__name__}")
    path = check_model_output(path)
    payload = {
        "format": MAGIC,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.config.to_dict()),
        "history": json.dumps(model.history),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()},
    }
    try:
        # through a Python file: a folder that is not writable, or a full disk, is an OSError (torch's own
        # file writer raises a RuntimeError naming none of it)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(payload, f)
    except OSError as exc:
        raise OSError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
    return path


def check_model_output(path) -> Path:
    """Check that a model may be saved to ``path``, before any work is done for it.

    A model file name ends in ``.pt`` (or ``.pth``), its folder exists, and an existing file there is
    replaced only when it is a napari-unet model itself: nobody's labels or images are ever
    overwritten by a model.

    Raises
    ------
    ValueError, FileNotFoundError
        Saying what to change.
    """
    return check_file_output(path, MODEL_SUFFIXES, "model.pt", load_model, "model", "a napari-unet model")


def check_file_output(path, suffixes, example: str, load, kind: str, what: str) -> Path:
    """Check a path for a file output of one kind (a model, a package); an existing file there must be
    one of napari-unet's of that kind (``load`` opens it without error), or it is never replaced.

    Parameters
    ----------
    path : path
    suffixes : tuple of str
        Accepted endings (lower case, with the dot).
    example : str
        A file name shown in messages (``"model.pt"``).
    load : callable
        Opens an existing file of that kind, raising ValueError for anything else.
    kind, what : str
        For messages: ``"model"``, and what an existing file must be (``"a napari-unet model"``).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder: give a file name such as {example}")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{str(path)!r} is not a {kind} file name: {kind} files end in {suffixes[0]} (e.g. {example})")
    target = resolve_link(path)  # a symlinked output is written where it points: check that place
    if not target.parent.exists():
        raise FileNotFoundError(f"the folder {str(target.parent)!r} does not exist")
    if not target.parent.is_dir():  # found only when saving, after all the training, before
        raise NotADirectoryError(f"{str(target.parent)!r} is a file, not a folder: choose a {kind} path in a folder")
    if target.exists():
        try:
            load(path)
        except ValueError:
            raise ValueError(f"{str(path)!r} exists and is not {what}: it is never replaced; choose another "
                             "file name") from None
    return path


def load_model(path) -> Model:
    """Load a model file safely (no code from the file is executed).

    ``path`` is a ``.pt`` file or a bioimage.io package (``.zip``) exported by napari-unet
    (`napari_unet.bioimageio.load_package`; other packages are refused).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not a napari-unet model, is damaged, or was written by a newer version.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder, not a model file")
    if path.suffix.lower() == ".zip":  # a bioimage.io package: only napari-unet's own, and nothing of it runs
        from .bioimageio import load_package

        return load_package(path)
    _check_checksums(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip/EOF errors, refused globals: all mean "not a model we can trust"
        raise ValueError(f"{str(path)!r} is not a napari-unet model file ({_load_failure(path, exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != MAGIC:
        raise ValueError(f"{str(path)!r} is not a napari-unet model file (it may be a plain PyTorch checkpoint)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} was written by a newer napari-unet (format version "
                         f"{payload.get('format_version')}): upgrade napari-unet")
    try:
        config = ModelConfig.from_dict(json.loads(payload["config"]))
        history = json.loads(payload.get("history", "[]"))
        _check_weights(config, payload["state_dict"])  # before any memory is allocated for the network
        network = network_from_config(config)
        network.load_state_dict(payload["state_dict"], strict=True)
    except Exception as exc:
        raise ValueError(f"{str(path)!r} is a damaged napari-unet model file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    network.eval()
    return Model(network=network, config=config, history=history)


def _check_checksums(path: Path) -> None:
    """Refuse an archive whose stored data no longer matches its checksums: ``torch.load`` does not check
    them, so a file damaged after saving (a bad disk, a broken copy) would load with wrong weights."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
        return  # not a readable zip archive: torch.load says what it is
    if bad is not None:
        raise ValueError(f"{str(path)!r} is a damaged napari-unet model file (its data does not match "
                         "the checksums stored with it: the file changed after it was saved); use an intact copy")


def _check_weights(config: ModelConfig, state_dict) -> None:
    """Refuse weights that are not exactly those of ``config``'s network, without building it.

    The network is laid out on torch's "meta" device (shapes only, no memory), so a small file that
    declares a huge network is refused at once instead of allocating gigabytes first.
    """
    if not isinstance(state_dict, dict):
        raise TypeError("the weights are not a mapping of tensors")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in network_from_config(config).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if found.keys() != expected.keys() or len(found) != len(state_dict):
        missing, extra = sorted(expected.keys() - found.keys()), sorted(set(state_dict) - expected.keys())
        raise ValueError(f"the weights do not match the configuration (missing {missing[:3]}, unexpected {extra[:3]})")
    wrong = [k for k in expected if found[k] != expected[k]]
    if wrong:
        raise ValueError(f"the weights do not match the configuration ({wrong[0]}: {found[wrong[0]]} in the file, "
                         f"{expected[wrong[0]]} expected)")


def _load_failure(path: Path, exc: Exception) -> str:
    """A short reason for a failed ``torch.load``."""
    import zipfile

    text = str(exc)
    if "GLOBAL" in text or "Unsupported global" in text:
        return "it contains executable Python objects, which are never loaded"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":  # pickle protocol marker: a plain pickle may run code when loaded
            return "it is a plain Python pickle, which is never loaded because it could run code"
        return "it is not a PyTorch archive"
    return "the archive is damaged or truncated"
