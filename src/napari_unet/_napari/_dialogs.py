"""File dialogs, kept in one place so tests can answer them without a modal window."""
from __future__ import annotations

from qtpy.QtWidgets import QFileDialog

__all__ = ["ask_save_model_path", "ask_open_model_path", "ask_export_package_path", "MODEL_FILTER"]

MODEL_FILTER = "napari-unet model (*.pt);;All files (*)"
OPEN_MODEL_FILTER = "napari-unet model (*.pt *.zip);;All files (*)"
PACKAGE_FILTER = "bioimage.io package (*.zip);;All files (*)"


def ask_save_model_path(parent=None) -> str:
    """Path to save a model to, or "" when cancelled (``.pt`` is appended when missing)."""
    path, _ = QFileDialog.getSaveFileName(parent, "Save model", "model.pt", MODEL_FILTER)
    if path and "." not in path.rsplit("/", 1)[-1]:
        path += ".pt"
    return path


def ask_open_model_path(parent=None) -> str:
    """Path of a model file to load, or "" when cancelled."""
    path, _ = QFileDialog.getOpenFileName(parent, "Load model", "", OPEN_MODEL_FILTER)
    return path


def ask_export_package_path(parent=None) -> str:
    """Path of the bioimage.io package to write, or "" when cancelled (``.zip`` is appended when missing)."""
    path, _ = QFileDialog.getSaveFileName(parent, "Export for bioimage.io", "model.zip", PACKAGE_FILTER)
    if path and "." not in path.rsplit("/", 1)[-1]:
        path += ".zip"
    return path
