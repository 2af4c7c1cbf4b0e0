"""The "<image> uncertainty" layer of the Train widget: where the current model hesitates.

`UncertaintyView` draws `napari_unet.uncertainty.hesitation` maps over their image as an Image layer
(inferno, additive: dark adds nothing, bright = paint here), placed below the annotations. A map comes
either from a live run's preview (the same forward pass, the window on screen) or from a one-shot
computation of the displayed plane (the whole image for a 2D model on a 2D image) run in the widget's
`JobRunner`; the worker only computes, the layer is made and refreshed here, on the GUI thread.
"""
from __future__ import annotations

import weakref

import numpy as np

from napari_unet.data import as_channels_first
from napari_unet.predict import iter_predict
from napari_unet.progress import until
from napari_unet.uncertainty import hesitation

from ._base import report_start_error
from ._layers import image_array, same_layer, spatial_geometry, spatial_shape
from ._lifecycle import weak_method

__all__ = ["UncertaintyView", "uncertainty_name", "displayed_key", "UNCERTAINTY_KEY"]

#: Layer metadata marking an uncertainty layer: the ``unique_id`` of its image.
UNCERTAINTY_KEY = "napari_unet_uncertainty"


def uncertainty_name(image_name: str) -> str:
    """Name of the uncertainty layer of an image."""
    return f"{image_name} uncertainty"


def displayed_key(viewer, image, channel_axis, dims: int) -> tuple:
    """The spatial index of what a one-shot map covers: the displayed indices of the axes before the
    model's ``dims`` last ones, and the whole of those (a plane for a 2D model on a stack)."""
    shape = spatial_shape(image.data if not image.multiscale else image.data[0], channel_axis)
    lead = len(shape) - dims
    if lead < 0:
        raise ValueError(f"the image '{image.name}' has {len(shape)} spatial axes and the model is {dims}D: "
                         "choose a model made for this image")
    point = list(np.asarray(image.world_to_data(viewer.dims.point), float))
    if channel_axis is not None and not image.rgb:
        del point[channel_axis % len(point)]
    index = tuple(min(max(int(round(p)), 0), s - 1) for p, s in zip(point[:lead], shape[:lead]))
    return index + tuple(slice(0, s) for s in shape[lead:])


def _one_shot(model, pixels, options, stop):
    """The worker's job: the map of ``pixels`` (None when stopped)."""
    done = None
    for event in until(iter_predict(model, pixels, labels=False, probabilities=True, **options), stop):
        done = event if event.kind == "done" else None
    return None if done is None else hesitation(done.probabilities)


class UncertaintyView:
    """The uncertainty layer of one widget and the one-shot computations that refresh it.

    Parameters
    ----------
    runner : JobRunner
        The widget's runner: one-shot computations run there (errors become notifications).

    Attributes
    ----------
    layer : napari.layers.Image or None
        The layer last drawn.
    job : Job or None
        The one-shot computation in progress.
    """

    def __init__(self, runner):
        self.runner = runner
        self.layer = None
        self.job = None

    def show(self, viewer, image, labels_layer, key, values, channel_axis):
        """Draw a map of ``image`` at spatial ``key`` (leading ints, then slices) into its layer."""
        if viewer is None or not any(same_layer(image, x) for x in viewer.layers):
            return None
        n_lead = sum(not isinstance(k, slice) for k in key)
        data = np.asarray(values, np.float32).reshape((1,) * n_lead + tuple(np.shape(values)))
        offset = np.array([k.start if isinstance(k, slice) else k for k in key], float)
        geometry = spatial_geometry(image, channel_axis, offset)
        layer = self.layer
        if layer is None or not any(same_layer(layer, x) for x in viewer.layers):
            # one of an earlier widget or run is reused; known by its metadata, never a user's layer of that name
            layer = next((x for x in viewer.layers if x.metadata.get(UNCERTAINTY_KEY) == image.unique_id), None)
        if layer is None:
            layer = viewer.add_image(data, name=uncertainty_name(image.name), colormap="inferno",
                                     contrast_limits=(0.0, 1.0), blending="additive", opacity=0.7,
                                     metadata={UNCERTAINTY_KEY: image.unique_id}, **geometry)
        else:
            layer.data = data
            for name, value in geometry.items():
                setattr(layer, name, value)
            layer.contrast_limits = (0.0, 1.0)  # the same scale for every map: brighter = more hesitant
        layer.visible = True
        layer.editable = False
        self.layer = layer
        self._below(viewer, layer, labels_layer)
        return layer

    @staticmethod
    def _below(viewer, layer, labels_layer):
        if labels_layer is None or not any(same_layer(labels_layer, x) for x in viewer.layers):
            return
        here, below = viewer.layers.index(layer), viewer.layers.index(labels_layer)
        if here > below:
            viewer.layers.move(here, below)
        viewer.layers.selection.active = labels_layer  # painting goes on in the annotations

    def hide(self) -> None:
        """Hide the layer and stop a computation in progress (the layer stays, for a later look)."""
        if self.job is not None:
            self.job.stop.set()
        if self.layer is not None:
            self.layer.visible = False

    def show_live(self, viewer, session, preview):
        """Draw the map a live run's `Preview` brought (if any) over the session's first image."""
        if preview.hesitation is not None:
            image, labels_layer = session.pairs[0]
            self.show(viewer, image, labels_layer, preview.request.key, preview.hesitation, session.channel_axis)

    def refresh(self, viewer, image, labels_layer, model, channel_axis, device, status):
        """`compute`, or why not in the ``status`` label / a notification; returns the job or None."""
        if model is None or image is None:
            status.value = "the uncertainty view shows once there is a model: train or load one"
            return None
        try:
            return self.compute(viewer, image, labels_layer, model, channel_axis, device)
        except Exception as exc:  # noqa: BLE001 - shown, never a crashed viewer
            report_start_error(self.runner.name, exc)
            return None

    def compute(self, viewer, image, labels_layer, model, channel_axis, device="auto"):
        """Start a one-shot map of the displayed plane of ``image`` with ``model``; returns the job.

        A computation still running is stopped: only the newest model's map is drawn.
        """
        data, axis = image_array(image, channel_axis)
        key = displayed_key(viewer, image, axis, model.dims)
        # the displayed plane (with a 2.5D model's context planes), channels first
        source = as_channels_first(data, axis, model.config.context_planes)
        plane_model = model.for_prepared_input()
        if self.job is not None:
            self.job.stop.set()

        def work(stop):
            pixels = np.asarray(source[(slice(None),) + key])  # read in the worker: a lazy image is read there
            return _one_shot(plane_model, pixels, dict(device=device, channel_axis=0), stop)

        job = self.runner.start("uncertainty", work, layers=[image] + ([labels_layer] if labels_layer else []),
                                on_result=weak_method(self._on_result, weakref.ref(viewer), image, labels_layer, key,
                                                      axis),
                                on_finished=weak_method(self._on_finished))
        self.job = job
        return job

    def _on_result(self, viewer_ref, image, labels_layer, key, axis, job, values):
        if job is self.job and values is not None and not job.stopped:
            self.show(viewer_ref(), image, labels_layer, key, values, axis)

    def _on_finished(self, job):
        if job is self.job:
            self.job = None
