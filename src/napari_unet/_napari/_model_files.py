"""Saving and loading the current model from the widgets (file dialogs, notifications)."""
from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_error, show_info

from ._dialogs import ask_export_package_path, ask_open_model_path, ask_save_model_path
from ._store import STORE

__all__ = ["save_current_model", "load_model_file", "export_current_model"]


def save_current_model(name: str, parent=None, path: str | None = None):
    """Save `STORE`'s model (asking for a file name unless ``path`` is given); returns the path written.

    Problems are notified (prefixed with ``name``, the widget's) and give None.
    """
    from napari_unet import save_model

    if STORE.model is None:
        show_error(f"{name}: there is no model to save yet: train one first")
        return None
    path = path or ask_save_model_path(parent)
    if not path:
        return None
    try:
        written = save_model(STORE.model, path)
    except (OSError, ValueError, TypeError) as exc:
        show_error(f"{name}: could not save the model: {exc}")
        return None
    show_info(f"{name}: model saved to {written}")
    return written


def load_model_file(name: str, parent=None, path: str | None = None):
    """Load a model file (asking for it unless ``path`` is given) and make it `STORE`'s model.

    Refused files (foreign, damaged, unsafe: `napari_unet.load_model` runs nothing of them) are
    notified and give None.
    """
    from napari_unet import load_model

    path = path or ask_open_model_path(parent)
    if not path:
        return None
    try:
        model = load_model(path)
    except (OSError, ValueError) as exc:
        show_error(f"{name}: {exc}")
        return None
    STORE.set(model, f"loaded from {Path(path).name}")
    show_info(f"{name}: loaded {Path(path).name}: {STORE.describe()}")
    return model


def export_current_model(name: str, runner, parent=None, path: str | None = None):
    """Export `STORE`'s model as a bioimage.io package (asking for a file name unless ``path`` is given).

    The output is checked here, on the GUI thread, so a bad name is refused at once; the export itself
    (test tensors, TorchScript, the package's validation) runs as an ``"export"`` job of ``runner`` (the
    widget's `JobRunner`), whose errors become notifications. Returns the job, or None when refused.
    """
    import importlib.util

    from napari_unet.bioimageio import EXTRA_HINT, check_package_output, export_package

    model = STORE.model
    if model is None:
        show_error(f"{name}: there is no model to export yet: train one first")
        return None
    if importlib.util.find_spec("bioimageio") is None or importlib.util.find_spec("bioimageio.spec") is None:
        show_error(f"{name}: {EXTRA_HINT}")
        return None
    path = path or ask_export_package_path(parent)
    if not path:
        return None
    try:
        check_package_output(path)
    except (OSError, ValueError) as exc:
        show_error(f"{name}: could not export the model: {exc}")
        return None
    return runner.start("export", lambda stop: export_package(model, path),
                        on_result=lambda job, written: show_info(f"{name}: bioimage.io package written to {written}"))
