"""Live training's GUI side: watch the annotations, hand copies to the run, show its previews.

`LiveSession` lives on the GUI thread for one live run of the Train widget. It copies the labels
layers a moment after each edit (paint, erase, fill, undo: napari's Labels events) and leaves the copy
in the run's `napari_unet.train.Latest` mailbox; it looks at what the viewer shows twice a second and
leaves that window as a `PreviewRequest`; and it draws the `Preview`s the run sends back into a Labels
layer "<image> preview" placed below the annotations and not editable. The run (a worker) never touches
the viewer or the user's layers.
"""
from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QTimer

from napari_unet.conventions import labels_dtype_for
from napari_unet.train.live import LabelsUpdate, Latest, PreviewRequest, preview_window

from ._layers import drop_channel_axis, labels_array, same_layer, spatial_geometry
from ._lifecycle import weak_method

__all__ = ["LiveSession", "live_training", "preview_name", "LABELS_EVENTS"]

#: The Labels layer events after which the annotations are read again (``set_data`` covers undo/redo).
LABELS_EVENTS = ("paint", "data", "labels_update", "set_data")
#: Milliseconds of quiet after an edit before the labels are copied (one copy per brush stroke).
SETTLE_MS = 250
#: Milliseconds between two looks at what the viewer shows.
VIEW_POLL_MS = 500


#: Layer metadata marking a live preview: the ``unique_id`` of the image it previews.
PREVIEW_KEY = "napari_unet_preview"


def preview_name(image_name: str) -> str:
    """Name of the preview layer of an image."""
    return f"{image_name} preview"


class LiveSession:
    """The GUI side of one live run.

    Parameters
    ----------
    viewer : napari.Viewer
    pairs : list of (Image layer, Labels layer)
        What is trained on; the first image is previewed.
    image_shapes : list of tuple
        Shape of each image array given to the run (channels included).
    channel_axis : int or None
    dims : {2, 3}
        The model's spatial axes.
    first : list of ndarray
        The labels the run starts from (so an unchanged copy is never sent again).

    Attributes
    ----------
    updates, previews : Latest
        The mailboxes the run reads (`napari_unet.train.iter_train_live`).
    version : int
        Annotations sent so far.
    taken : list of LabelsTaken
        What the run reported trained on, in order.
    preview_times : list of float
        `time.perf_counter` times at which a preview was drawn.
    preview_seconds : list of float
        What each preview cost the run (seconds of its worker).
    """

    def __init__(self, viewer, pairs, image_shapes, channel_axis, dims, first):
        self.updates, self.previews = Latest(), Latest()
        self.pairs, self.image_shapes, self.channel_axis, self.dims = list(pairs), list(image_shapes), channel_axis, dims
        self._viewer = viewer
        self._last = list(first)
        self._request = None
        self._changed_at = None
        self.version = 0
        self.hesitation = False  # also ask the run for where the model hesitates (the Train widget's checkbox)
        self.taken, self.preview_times, self.preview_seconds = [], [], []
        self.preview_layer = None
        self._settle = QTimer(singleShot=True, interval=SETTLE_MS)
        self._settle.timeout.connect(weak_method(self._send_labels))
        self._poll = QTimer(interval=VIEW_POLL_MS)
        self._poll.timeout.connect(weak_method(self._send_view))
        self._callbacks = []
        for _, lab in self.pairs:
            for name in LABELS_EVENTS:
                emitter = getattr(lab.events, name, None)
                if emitter is not None:
                    callback = weak_method(self._on_edit)
                    emitter.connect(callback)
                    self._callbacks.append((emitter, callback))
        self._poll.start()
        self._send_view()
        if self._request is not None:  # made now, when Train is pressed: making a layer stalls the viewer
            self.show_preview(_EmptyPreview(self._request), count=False)

    # ------------------------------------------------------------------------------------- annotations
    def _on_edit(self, *_) -> None:
        if self._changed_at is None:
            self._changed_at = time.perf_counter()
        self._settle.start()  # restarted by every event of a stroke

    def _send_labels(self) -> None:
        """Copy the annotations (GUI thread) and hand the copy to the run, if they changed."""
        copies = [drop_channel_axis(labels_array(lab), shape, self.channel_axis)
                  for (_, lab), shape in zip(self.pairs, self.image_shapes)]
        changed_at, self._changed_at = self._changed_at, None
        if all(np.shape(a) == np.shape(b) and np.array_equal(a, b) for a, b in zip(copies, self._last)):
            return  # a refresh, a new plane shown: nothing was painted
        self._last = copies
        self.version += 1
        self.updates.put(LabelsUpdate(tuple(copies), self.version, changed_at or time.perf_counter()))

    # ------------------------------------------------------------------------------------- preview
    def want_hesitation(self, on: bool) -> None:
        """Ask the run for the hesitation map with each preview (or no longer)."""
        self.hesitation = bool(on)
        self._send_view()

    def _send_view(self) -> None:
        request = self.view_request()
        if request is not None and request != self._request:
            self._request = request
            self.previews.put(request)

    def view_request(self) -> PreviewRequest | None:
        """The window of the first image that the viewer shows (its plane, its visible part)."""
        viewer = self._viewer
        image = self.pairs[0][0]
        if viewer is None or not any(same_layer(image, x) for x in viewer.layers):
            return None
        shape = list(self.image_shapes[0])
        if self.channel_axis is not None:
            del shape[self.channel_axis % len(shape)]
        point = np.asarray(image.world_to_data(viewer.dims.point), float)
        corners = np.asarray(image.corner_pixels, float)
        if image.multiscale:  # corner_pixels are in the pixels of the level drawn, the request in level 0's
            factors = np.asarray(image.downsample_factors[image.data_level], float)
            corners = np.stack([corners[0] * factors, (corners[1] + 1) * factors - 1])
        if self.channel_axis is not None and not image.rgb:
            keep = [i for i in range(len(point)) if i != self.channel_axis % len(point)]
            point, corners = point[keep], corners[:, keep]
        n = len(shape)
        displayed = tuple(range(n - self.dims, n))
        plain = viewer.dims.ndisplay == 2 and tuple(viewer.dims.order) == tuple(range(viewer.dims.ndim))
        center = [int(round(p)) for p in point]
        visible = [shape[a] for a in displayed]
        if plain:
            lo, hi = corners[0], corners[1]
            for k, a in enumerate(displayed[-2:], start=len(displayed) - 2):
                if hi[a] - lo[a] >= 2:  # drawn at least once
                    center[a], visible[k] = int((lo[a] + hi[a]) // 2), int(hi[a] - lo[a] + 1)
        else:
            for a in displayed:
                center[a] = shape[a] // 2
        return PreviewRequest(0, preview_window(center, visible, shape, self.dims), self.hesitation)

    def show_preview(self, preview, count: bool = True) -> None:
        """Draw a `Preview` into the "<image> preview" layer (made below the annotations if needed)."""
        viewer = self._viewer
        image, labels_layer = self.pairs[0]
        if viewer is None or not any(same_layer(image, x) for x in viewer.layers):
            return
        key = preview.request.key
        n_lead = sum(not isinstance(k, slice) for k in key)
        values = np.asarray(preview.labels)
        # the smallest dtype: napari draws uint8 labels with its fastest path
        values = values.astype(labels_dtype_for(int(values.max(initial=0))), copy=False)
        data = values.reshape((1,) * n_lead + values.shape)
        offset = np.array([k.start if isinstance(k, slice) else k for k in key], float)
        geometry = spatial_geometry(image, self.channel_axis, offset)
        translate = np.asarray(geometry["translate"], float)
        layer = self.preview_layer
        if layer is None or not any(same_layer(layer, x) for x in viewer.layers):
            layer = self._make_layer(viewer, image, labels_layer, data, geometry)
        else:  # redrawing a Labels layer is the preview's cost on the GUI thread: each setter only on change
            if not np.array_equal(layer.translate, translate):
                layer.translate = translate
            if layer.data.shape != data.shape or not np.array_equal(layer.data, data):
                layer.data = data
        layer.editable = False
        if count:
            self.preview_times.append(time.perf_counter())
            self.preview_seconds.append(preview.seconds)

    def _make_layer(self, viewer, image, labels_layer, data, geometry):
        # a preview of an earlier run is reused; known by its metadata, so a user's layer of that name never is
        earlier = [x for x in viewer.layers if x.metadata.get(PREVIEW_KEY) == image.unique_id]
        if earlier:
            layer = earlier[-1]
            layer.data = data
            for name, value in geometry.items():
                setattr(layer, name, value)
        else:
            layer = viewer.add_labels(data, name=preview_name(image.name), opacity=0.45,
                                      metadata={PREVIEW_KEY: image.unique_id}, **geometry)
        if labels_layer in viewer.layers:  # (it may have been removed while the run stops)
            below = viewer.layers.index(labels_layer)
            here = viewer.layers.index(layer)
            if here > below:
                viewer.layers.move(here, below)
            viewer.layers.selection.active = labels_layer  # painting goes on in the annotations
        self.preview_layer = layer
        return layer

    def on_update(self, update) -> str:
        """A ``"preview"`` or ``"labels"`` update of the run; returns a status line (or "")."""
        from ._store import STORE

        if update.kind == "preview":
            self.show_preview(update.data)
            STORE.set(update.data.model, "live training")  # Segment, Save model... use the live model
            return ""
        self.taken.append(update.data)
        return f"step {update.step} · {update.message}, {update.data.latency:.1f} s after the edit"

    # ------------------------------------------------------------------------------------- end
    def close(self) -> None:
        """Stop watching (the run ended); the preview layer stays."""
        self._settle.stop()
        self._poll.stop()
        for emitter, callback in self._callbacks:
            emitter.disconnect(callback)
        self._callbacks = []
        self._viewer = None  # a closed viewer is not kept alive by a session that is over


class _EmptyPreview:
    """An empty preview of a request: the layer before the first one comes."""

    def __init__(self, request):
        self.request, self.seconds = request, 0.0
        shape = [k.stop - k.start for k in request.key if isinstance(k, slice)]
        self.labels = np.zeros(shape, np.uint8)


def live_training(images, labels, settings, updates, previews, stop):
    """The live training job (in the worker): `napari_unet.train.iter_train_live`, batched for the GUI."""
    from napari_unet.progress import batch_train_events
    from napari_unet.train import iter_train_live

    return batch_train_events(iter_train_live(images, labels, updates=updates, previews=previews, stop=stop,
                                              **settings))
