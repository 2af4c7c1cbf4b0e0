"""Click to segment in the viewer: a mouse callback, a job per click (`napari_unet.segment_at`) and the
clicked object written into the segmentation layer as one undoable edit."""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from functools import partial

import numpy as np
from napari.utils.notifications import show_error, show_info

from napari_unet.interactive import segment_at

from ._layers import image_array, is_lazy, make_output, spatial_shape
from ._lifecycle import weak_method
from ._pickers import parse_channel_axis
from ._provenance import mark_output
from ._segmentation import SegmentationLayer, SegmentationState

__all__ = ["ClickToSegment"]


@dataclass(frozen=True)
class _Click:
    """A click being segmented: where, on what, with which model."""

    t_click: float
    image: object
    channel_axis: int | None
    point: tuple  # spatial pixel coordinates in the image
    shape: tuple  # spatial shape of the image
    model: object


class ClickToSegment:
    """The click-to-segment behaviour of the Segment widget.

    Parameters
    ----------
    widget : SegmentWidget
        Gives the viewer, image, model, device, channel axis, runner and status line (held weakly).

    Attributes
    ----------
    last_latency : float or None
        Seconds from the last click to its object appearing in the layer.
    last_timing : dict
        Where that time went: ``worker`` (segmenting the window), ``apply`` (writing into the layer),
        ``total``.
    """

    def __init__(self, widget):
        self._widget = weakref.ref(widget)
        self._callback = None
        self._job = None
        self._pending = None
        self.last_latency: float | None = None
        self.last_timing: dict = {}

    @property
    def listening(self) -> bool:
        """Whether the mouse callback is on the viewer's canvas."""
        return self._callback is not None

    @property
    def busy(self) -> bool:
        """Whether a click is being segmented."""
        return self._job is not None

    def listen(self, on: bool) -> None:
        """Put the mouse callback on the canvas (or take it off)."""
        viewer = self._widget().viewer
        if viewer is None:
            return
        if not on:
            self.stop_listening()
        elif self._callback is None:
            self._callback = _weak_drag_callback(self._on_mouse)
            viewer.mouse_drag_callbacks.append(self._callback)

    def stop_listening(self) -> None:
        widget = self._widget()
        viewer = widget.viewer if widget is not None else None
        if self._callback is not None and viewer is not None and self._callback in viewer.mouse_drag_callbacks:
            viewer.mouse_drag_callbacks.remove(self._callback)
        self._callback = None

    def _on_mouse(self, viewer, event):
        """Mouse-drag callback: a press and release without moving is a click; drags still pan."""
        if event.button != 1 or event.modifiers:
            return
        active = viewer.layers.selection.active
        if active is not None and getattr(active, "mode", "pan_zoom") != "pan_zoom":
            return  # the user is painting, picking or transforming
        press = np.asarray(event.pos, dtype=float)
        position = tuple(event.position)
        yield
        moved = False
        while event.type == "mouse_move":
            moved = moved or float(np.abs(np.asarray(event.pos, dtype=float) - press).max()) > 3
            yield
        if not moved:
            self.at(position)

    # ------------------------------------------------------------------------------------- one click
    def at(self, world_position):
        """Segment around a point (world coordinates) and add the object found there; returns the job.

        A click arriving while one is segmented is handled next; problems are notified.
        """
        t_click = time.perf_counter()
        widget = self._widget()
        name = widget.NAME
        image, model = widget.image.value, widget.current_model()
        if image is None:
            show_error(f"{name}: choose the image to segment first")
        elif model is None:
            show_error(f"{name}: there is no model yet: train one with Train UNet, or load a model file")
        elif widget.running:
            show_info(f"{name}: wait for the running segmentation to finish before clicking")
        elif self._job is not None:
            self._pending = world_position
        elif widget.viewer.dims.ndisplay != 2:
            show_info(f"{name}: click to segment works in the 2D view")
        else:
            try:
                click = self._click(t_click, image, model, world_position)
            except ValueError as exc:
                show_error(f"{name}: {exc}")
                return None
            return None if click is None else self._start(click)
        return None

    def _click(self, t_click, image, model, world_position) -> _Click | None:
        """The click in the image's pixels (None outside the image)."""
        widget = self._widget()
        data, axis = image_array(image, parse_channel_axis(widget.channel_axis.value))
        shape = spatial_shape(data, axis)
        if model.config.image_channels != (np.shape(data)[axis] if axis is not None else 1):
            raise ValueError(f"the model takes {model.config.image_channels} channel(s): set the image's channel axis")
        coords = list(image.world_to_data(world_position))
        # layer axis -> spatial axis of the data; a declared channel axis is not spatial (an RGB layer's
        # colour axis is not a layer axis at all)
        spatial_axis = {d: d for d in range(image.ndim)}
        if axis is not None and not getattr(image, "rgb", False):
            c = axis % len(coords)
            del coords[c]
            spatial_axis = {d: (d if d < c else d - 1) for d in range(image.ndim) if d != c}
        point = tuple(int(round(v)) for v in coords)
        if len(point) != len(shape) or any(not 0 <= p < s for p, s in zip(point, shape)):
            return None
        viewer = widget.viewer
        offset = viewer.dims.ndim - image.ndim
        displayed = sorted(spatial_axis[d - offset] for d in viewer.dims.displayed if d - offset in spatial_axis)
        if displayed != [len(shape) - 2, len(shape) - 1]:
            raise ValueError("click to segment needs the image's last two axes (Y, X) on screen")
        if len(shape) < model.dims:
            raise ValueError(f"this is a {model.dims}D model but the image has {len(shape)} spatial axes")
        return _Click(t_click, image, axis, point, shape, model)

    def _start(self, click: _Click):
        widget = self._widget()
        data = image_array(click.image, click.channel_axis)[0]
        work = partial(_segment_click, click.model, data, click.point, widget.device.value, click.channel_axis)
        self._job = widget.runner.start("click", work, layers=[click.image],
                                        on_result=weak_method(self._apply, click),
                                        on_finished=weak_method(self._finished))
        widget.status.value = "segmenting around the click…"
        return self._job

    def _apply(self, click: _Click, job, hit) -> None:
        widget = self._widget()
        if job.stopped:  # its image was removed meanwhile
            return
        if widget.running:  # a whole-image run started meanwhile and is writing the same layer
            widget.status.value = "click ignored: a segmentation is running"
            return
        if not hit.value:
            widget.status.value = "no object at the click (the model sees background there)"
            return
        viewer = widget.viewer
        seg = SegmentationLayer.find(viewer, click.image, click.shape)
        if seg is None:
            data = image_array(click.image, click.channel_axis)[0]
            out = make_output(click.shape, np.int32, is_lazy(data))
            seg = SegmentationLayer.add(viewer, click.image, out, click.channel_axis,
                                        SegmentationState.for_model(click.model))
            mark_output(seg.layer, click.model, click.image, features=False, channel_axis=click.channel_axis)
        under = int(np.asarray(seg.data[click.point]))
        if under:
            widget.status.value = f"already segmented (label {under})"
            return
        t_apply = time.perf_counter()
        try:
            new_id, count = seg.add_object(hit, click.model)
        except ValueError as exc:
            show_error(f"{widget.NAME}: {exc}")
            return
        now = time.perf_counter()
        self.last_latency = now - click.t_click
        self.last_timing = dict(worker=hit.seconds, apply=now - t_apply, total=self.last_latency)
        widget.status.value = f"added object {new_id} ({count} px) in {self.last_latency:.2f} s"

    def _finished(self, job) -> None:
        if job is not self._job:
            return
        self._job = None
        pending, self._pending = self._pending, None
        widget = self._widget()
        if pending is not None and widget is not None and not widget.closing:
            self.at(pending)


def _segment_click(model, image, point, device, channel_axis, stop):
    """The click job (in the worker)."""
    return segment_at(model, image, point, device=device, channel_axis=channel_axis)


def _weak_drag_callback(method):
    """A mouse-drag callback (a generator function, as napari needs) calling ``method`` while it lives."""
    ref = weakref.WeakMethod(method)

    def callback(viewer, event):
        m = ref()
        if m is None:
            return
        result = m(viewer, event)
        if result is not None:
            yield from result

    return callback
