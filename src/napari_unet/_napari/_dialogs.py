"""File dialogs, kept in one place so tests can answer them without a modal window."""
from __future__ import annotations

from qtpy.QtWidgets import QFileDialog

__all__ = ["ask_save_model_path", "ask_open_model_path", "MODEL_FILTER"]

MODEL_FILTER = "napari-unet model (*.pt);;All files (*)"


def ask_save_model_path(parent=None) -> str:
    """Path to save a model to, or "" when cancelled (``.pt`` is appended when missing)."""
    path, _ = QFileDialog.getSaveFileName(parent, "Save model", "model.pt", MODEL_FILTER)
    if path and "." not in path.rsplit("/", 1)[-1]:
        path += ".pt"
    return path


def ask_open_model_path(parent=None) -> str:
    """Path of a model file to load, or "" when cancelled."""
    path, _ = QFileDialog.getOpenFileName(parent, "Load model", "", MODEL_FILTER)
    return path
