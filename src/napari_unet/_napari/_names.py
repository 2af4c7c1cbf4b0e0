"""Following renamed Image layers (a segmentation is named after its image)."""
from __future__ import annotations

import weakref

from napari.layers import Image
from qtpy.QtCore import QTimer

from ._lifecycle import weak_method

__all__ = ["ImageNames"]


class ImageNames:
    """Calls ``on_renamed(image, old_name)`` after an Image layer of ``viewer`` was renamed.

    The call comes in the next turn of the event loop, once napari and the layer pickers have taken
    in the rename (renaming another layer inside it confuses them).
    """

    def __init__(self, viewer, on_renamed):
        self._on_renamed = on_renamed
        self._names = weakref.WeakKeyDictionary()  # Image layer -> its name when last seen
        self._callback = weak_method(self._renamed)
        for layer in viewer.layers:
            self._follow(layer)
        viewer.layers.events.inserted.connect(weak_method(self._inserted))

    def _inserted(self, event) -> None:
        self._follow(event.value)

    def _follow(self, layer) -> None:
        if isinstance(layer, Image) and layer not in self._names:
            self._names[layer] = layer.name
            layer.events.name.connect(self._callback)

    def _renamed(self, event) -> None:
        image = event.source
        old, self._names[image] = self._names.get(image), image.name
        if old is not None and old != image.name:
            QTimer.singleShot(0, weak_method(self._call, image, old))

    def _call(self, image, old) -> None:
        self._on_renamed(image, old)
