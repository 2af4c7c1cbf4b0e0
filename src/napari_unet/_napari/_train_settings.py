"""Train UNet's advanced settings: the network and run choices, folded away behind one button."""
from __future__ import annotations

from magicgui.widgets import ComboBox, Container, FloatSpinBox, PushButton, SpinBox

from napari_unet.conventions import interactive_network
from napari_unet.model import MAX_CONTEXT_PLANES

from ._pickers import auto_choices, channel_axis_choices, device_choices, has_gpu, parse_channel_axis

__all__ = ["AdvancedTrainSettings", "whole_number_box"]

PATCH_SIZES = (32, 64, 96, 128, 192, 256, 384, 512)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
_TITLE = "Advanced settings"


class AdvancedTrainSettings(Container):
    """A fold-out button and, below it, the settings most users never change.

    Parameters
    ----------
    first_image : callable
        Returns the image layer of the first training pair (or None): its shape offers the channel axes.

    Attributes
    ----------
    toggle : PushButton
        Shows or hides ``body``.
    body : Container
        dims (2D or 3D), depth, base_channels, patch_size, batch_size, learning_rate (0 = automatic),
        background (the window of the local background subtracted; 0 = off), context_planes (2D models
        on stacks: neighbouring planes read with each plane; 0 = off), device and the images' channel_axis.
    """

    def __init__(self, first_image):
        super().__init__(labels=False)
        self._first_image = first_image
        self.toggle = PushButton(text="▸ " + _TITLE)
        self.dims = ComboBox(label="Model", choices=[("2D (plane by plane)", 2), ("3D", 3)], value=2)
        depth, base = interactive_network(has_gpu())
        self.depth = SpinBox(label="Depth", value=depth, min=1, max=7, tooltip="Number of poolings")
        self.base_channels = SpinBox(label="Base channels", value=base, min=2, max=512,
                                     tooltip="Feature maps of the first level (doubling at each level)")
        self.patch_size = ComboBox(label="Patch size", choices=auto_choices(PATCH_SIZES), value=0,
                                   tooltip="Side of the training patches (auto: 128 on CPU, 256 on GPU in 2D)")
        self.batch_size = ComboBox(label="Batch size", choices=auto_choices(BATCH_SIZES), value=0,
                                   tooltip="Patches per step (auto: 8 on CPU, 16 on GPU in 2D)")
        self.learning_rate = FloatSpinBox(label="Learning rate", value=0.0, min=0.0, max=1.0, step=1e-4,
                                          tooltip="auto: 2e-3, or 1e-4 when continuing")
        self.learning_rate.native.setSpecialValueText("auto")  # shown for 0
        self.background = whole_number_box("Background window", 1023, 2, "off",
                                           "Uneven illumination or haze: subtract a smooth local background "
                                           "estimated over this many px (about 3 object diameters); off: 0")
        self.context_planes = whole_number_box("Context planes", MAX_CONTEXT_PLANES, 1, "off",
                                               "2D model on a z-stack: read each plane with this many planes "
                                               "above and below it (2.5D: 3 for nuclei on planes 3x further "
                                               "apart than the pixels); off: each plane alone")
        self.device = ComboBox(label="Device", choices=device_choices(), value="auto")
        self.channel_axis = ComboBox(label="Channel axis", choices=self._channel_choices,
                                     tooltip="Axis of the images that holds channels (RGB is automatic)")
        self.body = Container(widgets=[self.dims, self.depth, self.base_channels, self.patch_size,
                                       self.batch_size, self.learning_rate, self.background,
                                       self.context_planes, self.device, self.channel_axis],
                              visible=False)
        self.extend([self.toggle, self.body])
        self.toggle.changed.connect(self._on_toggle)
        self.dims.changed.connect(self._on_dims)

    @property
    def shown(self) -> bool:
        """Whether the settings are unfolded."""
        return self.body.visible

    def _on_toggle(self, *_):
        self.body.visible = not self.body.visible
        self.toggle.text = ("▾ " if self.body.visible else "▸ ") + _TITLE

    def _on_dims(self, *_):
        self.context_planes.enabled = self.dims.value == 2  # a 3D model sees its neighbouring planes already

    def _channel_choices(self, widget=None):
        return channel_axis_choices(self._first_image())

    def parsed_channel_axis(self) -> int | None:
        """The chosen channel axis (None: no channels, or RGB)."""
        return parse_channel_axis(self.channel_axis.value)

    def training_kwargs(self) -> dict:
        """The settings as `napari_unet.iter_train` arguments (automatic choices as None)."""
        return dict(dims=self.dims.value, depth=self.depth.value, base_channels=self.base_channels.value,
                    device=self.device.value, patch_size=self.patch_size.value or None,
                    batch_size=self.batch_size.value or None, learning_rate=self.learning_rate.value or None,
                    background=int(self.background.value) or None,
                    context_planes=(int(self.context_planes.value) or None) if self.dims.value == 2 else None)


def whole_number_box(label: str, maximum: int, step: int, zero_text: str, tooltip: str) -> FloatSpinBox:
    """A spin box of whole numbers from 0 that shows ``zero_text`` for 0.

    magicgui's SpinBox is superqt's QLargeIntSpinBox, which never shows a special value text; Qt's
    QDoubleSpinBox with no decimals does (its value is a float: read it with ``int()``).
    """
    box = FloatSpinBox(label=label, value=0, min=0, max=maximum, step=step, tooltip=tooltip)
    box.native.setDecimals(0)
    box.native.setSpecialValueText(zero_text)  # shown for the minimum, 0
    return box
