"""Pickers the widgets share: layers, channel axis, device, sizes with "auto"."""
from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton
from napari.layers import Image, Labels

from ._layers import level0
from ._live import PREVIEW_KEY
from ._probabilities import PROBABILITY_KEY
from ._uncertainty import UNCERTAINTY_KEY

__all__ = ["LayerComboBox", "layer_choices", "auto_choices", "channel_axis_choices", "parse_channel_axis",
           "device_choices", "has_gpu", "PairRow"]


#: Metadata keys of the plugin's views of a model's output (see `layer_choices`).
_VIEW_KEYS = (PREVIEW_KEY, PROBABILITY_KEY, UNCERTAINTY_KEY)


def auto_choices(values) -> list:
    """(label, value) choices with "auto" (0) first."""
    return [("auto", 0)] + [(str(v), v) for v in values]


def layer_choices(viewer_ref, kind):
    """A magicgui ``choices`` callable listing the viewer's layers of one type, top layer last.

    The plugin's own views of a model's output (live preview, uncertainty, probabilities) are left out:
    they are never something to train on or to segment (a removed annotations layer must not leave a
    picker on the model's preview).
    """

    def choices(widget=None):
        viewer = viewer_ref()
        if viewer is None:
            return []
        return [(layer.name, layer) for layer in viewer.layers
                if isinstance(layer, kind) and not any(key in layer.metadata for key in _VIEW_KEYS)]

    return choices


class LayerComboBox(ComboBox):
    """A layer picker that keeps the chosen layer when a layer is renamed.

    magicgui matches the old and new choices by their names, so a rename of the chosen layer would
    select the first layer instead (and a Train or Segment press would then use the wrong one).
    """

    def reset_choices(self, *_):
        chosen = self.value
        super().reset_choices()
        if chosen is not None and self.value is not chosen and any(c is chosen for c in self.choices):
            self.value = chosen


class PairRow(Container):
    """One (image, labels) pair to train on.

    Attributes
    ----------
    image : ComboBox
        Image layers of the viewer.
    labels : ComboBox
        Labels layers of the viewer (the annotations).
    remove : PushButton
        Removes this pair (hidden on the first pair).
    """

    def __init__(self, viewer_ref, removable: bool):
        super().__init__(layout="horizontal", labels=False)
        self.image = LayerComboBox(choices=layer_choices(viewer_ref, Image), tooltip="Image to learn from")
        self.labels = LayerComboBox(choices=layer_choices(viewer_ref, Labels),
                                    tooltip="Its annotations (a Labels layer)")
        self.remove = PushButton(text="✕", tooltip="Remove this pair", visible=removable)
        self.remove.native.setMaximumWidth(28)
        self.extend([self.image, Label(value="→"), self.labels, self.remove])


def channel_axis_choices(layer) -> list:
    """Choices for a "Channel axis" combo box: none, or one of the short axes of the image."""
    if layer is None:
        return [("none", "none")]
    if getattr(layer, "rgb", False):
        return [("RGB(A) colours (last axis)", "rgb")]
    shape = np.shape(level0(layer.data))
    choices = [("none", "none")]
    # channels are few; long axes are space or time and would make no sense here
    choices += [(f"axis {i} (size {s})", str(i)) for i, s in enumerate(shape) if 1 < s <= 32]
    return choices


def parse_channel_axis(value) -> int | None:
    """Value of a channel-axis combo box -> channel_axis argument of the core."""
    if value in (None, "none"):
        return None
    if value == "rgb":
        return -1
    return int(value)


def has_gpu() -> bool:
    """Whether torch sees a CUDA or MPS device."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or (mps is not None and mps.is_available())


def device_choices() -> list:
    """Devices this machine has, "auto" first."""
    import torch

    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        choices.append("cuda")
        if torch.cuda.device_count() > 1:
            choices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        choices.append("mps")
    return choices
