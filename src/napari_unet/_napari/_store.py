"""The model shared by the Train and Segment widgets, without going through a file.

One store per process: the last model trained or loaded in any viewer is "the current model". Widgets
connect to its signals with bound methods, which psygnal holds weakly, so a closed widget is not kept
alive by the store.
"""
from __future__ import annotations

from psygnal import Signal

__all__ = ["ModelStore", "STORE"]


class ModelStore:
    """Holds the current model and announces changes.

    Signals
    -------
    changed(model)
        A model was trained, loaded or cleared (``None``).
    annotations_ready(image_layer, labels_layer, mode)
        The Segment widget turned a segmentation into training labels; the Train widget offers them.
    """

    changed = Signal(object)
    annotations_ready = Signal(object, object, str)

    def __init__(self):
        self.model = None
        self.source = ""

    def set(self, model, source: str = "") -> None:
        """Make ``model`` the current model; ``source`` says where it came from (shown to the user)."""
        self.model = model
        self.source = source
        self.changed.emit(model)

    def clear(self) -> None:
        """Forget the current model."""
        self.set(None, "")

    def describe(self) -> str:
        """One line for the widgets: architecture, mode and origin of the current model."""
        m = self.model
        if m is None:
            return "no model yet: train one or load a model file"
        c = m.config
        trained = f", {c.trained_steps} steps" if c.trained_steps else ""
        return (f"{c.dims}D UNet depth {c.depth}, {c.base_channels} ch, {c.mode}{trained}"
                + (f" ({self.source})" if self.source else ""))


STORE = ModelStore()
