"""An image's segmentation layer and what the plugin knows about it (typed, in the layer's metadata).

`SegmentationState` is stored in ``layer.metadata["napari_unet"]`` and built in one place
(`SegmentationState.for_model`); `SegmentationLayer` wraps the Labels layer and is the one place that
writes results into it (a whole result as one undoable edit, a clicked object, a replaced array).
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from napari_unet.interactive import region_box

from ._layers import forget_edits, level0, remove_output_store, segmentation_name, spatial_geometry

__all__ = ["META_KEY", "SegmentationState", "SegmentationLayer", "SegmentationRun", "UNDO_LIMIT"]

#: Key of the plugin's entry in a segmentation layer's ``metadata``.
META_KEY = "napari_unet"
#: Re-running into an in-memory segmentation of at most this many pixels is one undoable edit
#: (Ctrl+Z on the layer); bigger results replace the layer's data.
UNDO_LIMIT = 2**22
#: In-memory layers up to this many pixels are scanned for hand-painted ids at each click.
SCAN_LIMIT = 2**26

_painting_followed = weakref.WeakSet()  # layers whose painted ids are tracked
_plugin_writing = weakref.WeakSet()  # layers the plugin is writing into right now (not a hand edit)


@dataclass
class SegmentationState:
    """What the plugin knows about a segmentation layer.

    Attributes
    ----------
    mode : str
        The model's mode (``"semantic"`` or ``"instance"``).
    class_ids : tuple of int
        The model's painted class ids (semantic: 1 = background).
    covered : list of boxes or None
        The parts the model has segmented (`napari_unet.interactive.region_box` boxes: click windows,
        tiles of a cancelled run); None once all of the layer was segmented. "Use as annotations"
        marks as background only pixels inside them.
    max_label : int
        The largest id in the layer as far as known (results, clicks, the brush): clicked objects get
        the next one.
    click_classes : dict
        Id of each object added by a click on a semantic model -> its class id.
    image_id : hashable
        The ``unique_id`` of the image layer this is the segmentation of: the plugin finds its layers
        by this, never by their name (a user's own layer of that name is never taken over).
    edited : bool
        The user edited the layer by hand (paint, fill, erase) since the model's result was put in it:
        a new whole-image result then goes to a new layer and the corrections are kept.
    """

    mode: str
    class_ids: tuple
    covered: list | None = field(default_factory=list)
    max_label: int = 0
    click_classes: dict = field(default_factory=dict)
    image_id: object = None
    edited: bool = False

    @classmethod
    def for_model(cls, model, image=None) -> "SegmentationState":
        """The state of a layer about to receive ``model``'s output for ``image`` (nothing covered yet)."""
        return cls(mode=model.mode, class_ids=tuple(int(c) for c in model.config.class_ids),
                   image_id=None if image is None else image.unique_id)

    def cover(self, regions, shape) -> None:
        """Record regions (slices over the layer's axes) as segmented by the model."""
        if self.covered is not None:
            self.covered.extend(region_box(r, shape) for r in regions)


class SegmentationLayer:
    """The Labels layer ``"<image> segmentation"`` of an image, and its `SegmentationState`.

    Parameters
    ----------
    layer : napari.layers.Labels
    """

    def __init__(self, layer):
        self.layer = layer

    @classmethod
    def find(cls, viewer, image, shape=None) -> "SegmentationLayer | None":
        """The plugin's segmentation layer of ``image`` (with that shape, when given), or None.

        Recognised by its metadata (`SegmentationState.image_id`), never by its name; the newest one
        when there are several.
        """
        from napari.layers import Labels

        for layer in reversed(list(viewer.layers)):
            state = layer.metadata.get(META_KEY) if isinstance(layer, Labels) else None
            if isinstance(state, SegmentationState) and state.image_id == image.unique_id and (
                    shape is None or tuple(np.shape(level0(layer.data))) == tuple(shape)):
                return cls(layer)
        return None

    @classmethod
    def add(cls, viewer, image, data, channel_axis, state: SegmentationState) -> "SegmentationLayer":
        """Add a new segmentation layer for ``image`` over ``data``, drawn on top of the image."""
        layer = viewer.add_labels(data, name=segmentation_name(image.name), **spatial_geometry(image, channel_axis))
        seg = cls(layer)
        state.image_id = image.unique_id
        seg.state = state
        return seg

    @contextmanager
    def writing(self):
        """The plugin writes into the layer: its paint events are not the user's edits."""
        _plugin_writing.add(self.layer)
        try:
            yield
        finally:
            _plugin_writing.discard(self.layer)

    @property
    def edited(self) -> bool:
        """Whether the user edited the layer by hand since the model's result was put in it."""
        state = self.state
        return state is not None and state.edited

    @property
    def data(self):
        """The full-resolution array."""
        return level0(self.layer.data)

    @property
    def state(self) -> SegmentationState | None:
        """The layer's state; None for a layer the plugin did not make (e.g. opened from a file)."""
        state = self.layer.metadata.get(META_KEY)
        return state if isinstance(state, SegmentationState) else None

    @state.setter
    def state(self, state: SegmentationState) -> None:
        self.layer.metadata[META_KEY] = state
        self.follow_painting()

    def state_for(self, model) -> SegmentationState:
        """The layer's state, made for ``model`` (nothing covered) when the layer has none yet."""
        if self.state is None:
            self.state = SegmentationState.for_model(model)
        return self.state

    def can_undo_into(self, new) -> bool:
        """Whether writing ``new`` (the next result) can be one undoable edit of this layer."""
        return (isinstance(new, np.ndarray) and isinstance(self.data, np.ndarray) and new.size <= UNDO_LIMIT
                and tuple(np.shape(self.data)) == tuple(new.shape))

    def replace_data(self, new) -> None:
        """Show ``new`` instead of the layer's array (not undoable; the old temporary store is deleted)."""
        old = self.layer.data
        self.layer.data = new
        forget_edits(self.layer)  # Ctrl+Z must not paste edits of the old result into the new one
        remove_output_store(old)

    def apply_result(self, new) -> None:
        """Write a whole result into the layer as one edit (Ctrl+Z restores the previous result).

        A layer whose dtype cannot hold the new ids (a uint8 segmentation reopened from a file, say)
        gets the new array instead: casting would wrap ids around and merge objects.
        """
        layer, old = self.layer, self.data
        if old.dtype.kind in "iu" and new.size and int(new.max()) > np.iinfo(old.dtype).max:
            layer.data = new
            forget_edits(layer)
            return
        changed = np.nonzero(old != new)
        if changed[0].size:
            with self.writing():
                layer.data_setitem(changed, new[changed].astype(old.dtype, copy=False))
        layer.refresh()

    def next_label(self) -> int:
        """The id a new object gets: above every id known to be in the layer (hand-painted ones too)."""
        state = self.state
        largest = state.max_label if state is not None else 0
        data = self.data
        if isinstance(data, np.ndarray) and data.size <= SCAN_LIMIT:
            largest = max(largest, int(data.max(initial=0)))
        return largest + 1

    def add_object(self, hit, model) -> tuple[int, int]:
        """Add a clicked object (`napari_unet.SegmentHit`) under a new id, where the layer is 0.

        One undoable edit. Returns (new id, pixels written).

        Raises
        ------
        ValueError
            When the layer's dtype cannot hold the new id.
        """
        state = self.state_for(model)
        data = self.data
        key = hit.key
        free = hit.mask & (np.asarray(data[key]) == 0)
        new_id = self.next_label()
        if new_id > np.iinfo(np.dtype(data.dtype)).max:
            raise ValueError(f"'{self.layer.name}' ({data.dtype}) cannot hold label {new_id}")
        n_lead = len(hit.origin) - hit.mask.ndim
        local = np.nonzero(free)
        count = local[0].size
        index = tuple(np.full(count, i) for i in hit.origin[:n_lead])
        index += tuple(ix + a for ix, a in zip(local, hit.origin[n_lead:]))
        with self.writing():  # a clicked object is the model's, not a hand edit
            self.layer.data_setitem(index, new_id)
        state.max_label = new_id
        state.cover([key], np.shape(data))  # the model has looked at this window
        if state.mode == "semantic":
            state.click_classes[new_id] = hit.value
        return new_id, count

    def follow_painting(self) -> None:
        """Count the ids the user paints by hand, so clicked objects never reuse them.

        (In-memory layers are also scanned at each click; a lazy layer is too big to scan.)
        """
        if self.layer not in _painting_followed:
            _painting_followed.add(self.layer)
            self.layer.events.paint.connect(_note_painted_label)


@dataclass
class SegmentationRun:
    """A whole-image segmentation on its way into a layer; the previous result is never lost.

    - No segmentation layer yet: a new one shows the result as it is written (locked meanwhile).
    - One the user edited by hand: it is kept as it is; the result goes to a new layer.
    - One small enough: it keeps showing the previous result, and the new one is applied at the end as
      one undoable edit (if the user paints into it meanwhile, the painting stays and the result goes
      to a new layer instead).
    - A bigger or lazy one: it keeps showing the previous result while a new, locked layer shows the
      new one being written; at the end the new result takes the previous one's place.
    A run that fails or is cancelled leaves the previous result as it was.

    Attributes
    ----------
    seg : SegmentationLayer
        The layer the run writes into (or updates at the end, when ``undoable``).
    state : SegmentationState
        The layer's state once the run is applied.
    labels_out : array-like
        Where the run writes.
    undoable : bool
        ``labels_out`` is applied to ``seg`` as one edit at the end.
    previous : SegmentationLayer or None
        The earlier result that the new one replaces once complete.
    kept : SegmentationLayer or None
        An earlier result with hand edits, left as it is.
    prob_layers : list
        Image layers showing its probabilities.
    reason : str
        Why it was stopped, when the widget stopped it.
    mark : callable, optional
        Called with the Labels layer that holds the result at the end (its class names, provenance).
    """

    seg: SegmentationLayer
    state: SegmentationState
    labels_out: object
    undoable: bool
    image: object = None
    channel_axis: int | None = None
    previous: SegmentationLayer | None = None
    kept: SegmentationLayer | None = None
    prob_layers: list = field(default_factory=list)
    reason: str = ""
    done: bool = False
    mark: object = None

    @classmethod
    def prepare(cls, viewer, image, model, labels_out, channel_axis) -> "SegmentationRun":
        """Choose the run's output layer (see the class); adds a new layer when one is needed."""
        state = SegmentationState.for_model(model, image)
        seg = SegmentationLayer.find(viewer, image, np.shape(labels_out))
        kept = previous = None
        if seg is not None and seg.edited:
            kept, seg = seg, None
        undoable = seg is not None and seg.can_undo_into(labels_out)
        if seg is not None and not undoable:
            previous, seg = seg, None
        if seg is None:
            seg = SegmentationLayer.add(viewer, image, labels_out, channel_axis, state)
            seg.layer.editable = False  # painting into what the run is writing would be lost
        return cls(seg, state, labels_out, undoable, image, channel_axis, previous, kept)

    def finish(self, viewer) -> None:
        """The run is complete: the whole layer is covered; apply or show the result."""
        self.done = True
        self.state.covered = None
        if self.undoable and self.seg.edited:  # painted during the run: the painting stays
            self.kept = self.seg
            self.seg = SegmentationLayer.add(viewer, self.image, self.labels_out, self.channel_axis, self.state)
        elif self.undoable:
            self.seg.apply_result(self.labels_out)
            self.seg.state = self.state
        else:
            self.seg.layer.editable = True
            if self.previous is not None and self.previous.layer in viewer.layers:
                running, self.seg = self.seg, self.previous  # the new result takes the old one's place
                self.seg.replace_data(self.labels_out)
                self.seg.state = self.state
                viewer.layers.remove(running.layer)
            else:
                self.seg.layer.refresh()
        if self.mark is not None:
            self.mark(self.seg.layer)
        for p in self.prob_layers:
            p.refresh()

    def abandon(self, viewer) -> str:
        """The run stopped before its end (cancelled, failed); says what the user now sees."""
        if self.undoable:
            return f"'{self.seg.layer.name}' is unchanged"
        self.seg.layer.editable = True
        if self.previous is not None and self.previous.layer in viewer.layers:
            if self.seg.layer in viewer.layers:
                viewer.layers.remove(self.seg.layer)
            remove_output_store(self.labels_out)
            return f"'{self.previous.layer.name}' is unchanged"
        if self.seg.layer in viewer.layers:
            self.seg.layer.refresh()  # show the last tiles written
        return f"'{self.seg.layer.name}' holds the part done so far"


def _note_painted_label(event) -> None:
    """A Labels layer's paint event: its brush/fill label counts toward the largest id in use, and
    unless the plugin itself is writing, the layer now holds the user's corrections."""
    layer = event.source
    state = layer.metadata.get(META_KEY)
    if isinstance(state, SegmentationState) and layer not in _plugin_writing:
        state.max_label = max(state.max_label, int(layer.selected_label))
        state.edited = True
