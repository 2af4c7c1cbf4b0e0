"""The **Segment with UNet** dock widget: whole-image segmentation, click to segment, corrections."""
from __future__ import annotations

import time
import weakref
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, ProgressBar, PushButton
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

from ._base import JobWidget
from ._layers import (META_KEY, channel_axis_choices, device_choices, find_labels_layer, fixed_label, forget_edits,
                      image_array, is_lazy, level0, make_output, parse_channel_axis, region_box, remove_output_store,
                      same_layer, segmentation_name, set_progress, spatial_geometry, spatial_shape, to_training_labels)
from ._lifecycle import weak_method
from ._store import STORE
from ._train_widget import LayerComboBox, auto_choices, layer_choices
from ._workers import Job, click_segment, segment_updates

__all__ = ["SegmentWidget", "CLICK_WINDOW_2D", "CLICK_WINDOW_3D", "UNDO_LIMIT"]

NAME = "Segment with UNet"
#: Window segmented around a click: a 2D model sees this many pixels of the displayed plane...
CLICK_WINDOW_2D = (256, 256)
#: ...a 3D model this block (planes, rows, columns).
CLICK_WINDOW_3D = (32, 128, 128)
#: Re-running into an in-memory segmentation of at most this many pixels is one undoable edit
#: (Ctrl+Z on the layer); bigger results replace the layer's data.
UNDO_LIMIT = 2**22
TILE_SIZES = (128, 256, 384, 512, 768, 1024, 1536, 2048, 4096)


class SegmentWidget(JobWidget):
    """Segment an image with the current UNet, click objects to add them, and turn results into labels.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Passed by napari when the widget is docked from the Plugins menu.

    Notes
    -----
    Output goes to the Labels layer ``"<image> segmentation"``, created on the first run. A re-run
    writes into the same layer: for in-memory results up to `UNDO_LIMIT` pixels the new result is
    applied as one edit that Ctrl+Z on the layer undoes; bigger results replace the layer's data (not
    undoable). Lazy (dask/zarr) images, and results over `napari_unet._napari._layers.IN_MEMORY_LIMIT`,
    go to an on-disk zarr array in a temporary folder, filled tile by tile while the layer refreshes,
    with memory bounded by the tile size. Clicked objects are added with `Labels.data_setitem`, so
    they can be undone too.

    Attributes
    ----------
    image : ComboBox
        Image layer to segment.
    channel_axis : ComboBox
        Axis of the image holding channels (RGB is automatic).
    model_source : ComboBox
        ``"current"`` (the last model trained or loaded, shared with Train UNet) or ``"file"``.
    model_file : FileEdit
        Model file used when ``model_source`` is ``"file"``.
    model_info : Label
    tile_size : ComboBox
        Pixels per tile side; ``0`` ("auto") fits the device's memory.
    device : ComboBox
    show_probabilities : CheckBox
        Also add the class probabilities as Image layers.
    segment_button : PushButton
        "Segment"; reads "Cancel" while running.
    progress : ProgressBar
    click_to_segment : CheckBox
        While on, a click on the image segments a window around it and adds the clicked object.
    use_as_annotations : PushButton
        Turns the (corrected) segmentation into training labels in a new Labels layer.
    status : Label
    """

    NAME = NAME

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._click_job: Job | None = None
        self._pending_click = None
        self._file_model = None
        self._mouse_callback = None
        self._prob_stores = {}  # image name -> probability output of its last run
        self._painting_followed = weakref.WeakSet()  # segmentation layers whose painted ids are tracked
        #: seconds from the last click to its object appearing in the layer
        self.last_click_latency: float | None = None
        #: where that time went: {"worker": segmenting the window, "apply": writing into the layer}
        self.last_click_timing: dict = {}

        self.image = LayerComboBox(label="Image", choices=layer_choices(self._viewer_ref, Image))
        self.channel_axis = ComboBox(label="Channel axis", choices=self._channel_choices,
                                     tooltip="Axis of the image that holds channels (RGB is automatic)")
        self.model_source = ComboBox(label="Model", choices=[("current model (trained or loaded)", "current"),
                                                             ("model file", "file")], value="current")
        self.model_file = FileEdit(label="Model file", mode="r", filter="*.pt", visible=False)
        self.model_info = Label(label="", value="")
        self.tile_size = ComboBox(label="Tile size", choices=auto_choices(TILE_SIZES), value=0,
                                  tooltip="Pixels per tile side; auto fits the device memory")
        self.device = ComboBox(label="Device", choices=device_choices(), value="auto")
        self.show_probabilities = CheckBox(text="Also show probabilities", value=False)
        self.segment_button = PushButton(text="Segment")
        self.progress = ProgressBar(label="Progress", min=0, max=100, value=0)
        self.click_to_segment = CheckBox(text="Click to segment", value=False,
                                         tooltip="Click an object in the image to segment it and add it to "
                                                 "the segmentation layer (drag to pan as usual)")
        self.use_as_annotations = PushButton(text="Use as annotations",
                                             tooltip="Turn the corrected segmentation into training labels "
                                                     "(a new Labels layer) to retrain with")
        self.status = fixed_label(Label(label="", value=""))
        fixed_label(self.model_info)
        self.extend([self.image, self.channel_axis, self.model_source, self.model_file, self.model_info,
                     self.tile_size, self.device, self.show_probabilities, self.segment_button, self.progress,
                     self.click_to_segment, self.use_as_annotations, self.status])

        self.image.changed.connect(self._image_changed)
        self.model_source.changed.connect(self._source_changed)
        self.model_file.changed.connect(self._file_changed)
        self.segment_button.changed.connect(self._on_run_clicked)
        self.click_to_segment.changed.connect(self._click_toggled)
        self.use_as_annotations.changed.connect(self._on_use_as_annotations)
        STORE.changed.connect(self._update_model_info)
        self._update_model_info()
        self._watch_viewer()
        # the segmentation follows its image's name ("<image> segmentation"): a renamed image keeps its
        # segmentation (for re-runs, clicks and "Use as annotations")
        self._image_names = weakref.WeakKeyDictionary()  # Image layer -> its name when last seen
        self._on_renamed = weak_method(self._image_renamed)
        for layer in self.viewer.layers:
            self._follow_name(layer)
        self.viewer.layers.events.inserted.connect(weak_method(self._follow_inserted))

    # ------------------------------------------------------------------------------------- helpers
    def _follow_inserted(self, event) -> None:
        self._follow_name(event.value)

    def _follow_name(self, layer) -> None:
        if isinstance(layer, Image) and layer not in self._image_names:
            self._image_names[layer] = layer.name
            layer.events.name.connect(self._on_renamed)

    def _image_renamed(self, event) -> None:
        image = event.source
        old, self._image_names[image] = self._image_names.get(image), image.name
        if old is not None and old != image.name:
            # after napari and the pickers have taken in this rename (renaming inside it confuses them)
            QTimer.singleShot(0, weak_method(self._rename_segmentation, image, old))

    def _rename_segmentation(self, image, old: str) -> None:
        viewer = self.viewer
        if viewer is None or self._closing:
            return
        segmentation = find_labels_layer(viewer, segmentation_name(old))
        if segmentation is not None and segmentation_name(image.name) not in viewer.layers:
            segmentation.name = segmentation_name(image.name)
        if old in self._prob_stores:
            self._prob_stores[image.name] = self._prob_stores.pop(old)

    def current_model(self):
        """The model the next run uses: the shared current model, or the chosen file's."""
        return self._file_model if self.model_source.value == "file" else STORE.model

    def _channel_choices(self, widget=None):
        return channel_axis_choices(self.image.value if hasattr(self, "image") else None)

    def _image_changed(self, *_):
        self.channel_axis.reset_choices()

    def _source_changed(self, value):
        self.model_file.visible = value == "file"
        self._update_model_info()

    def _file_changed(self, value):
        from napari_unet import load_model

        path = Path(value)
        self._file_model = None
        if path.is_file():
            try:
                self._file_model = load_model(path)
            except (OSError, ValueError) as exc:
                show_error(f"{NAME}: {exc}")
        self._update_model_info()

    def _update_model_info(self, *_):
        try:
            self._show_model_info()
        except RuntimeError:  # the Qt widgets were deleted with the viewer before this object
            self.shutdown()

    def _show_model_info(self):
        if self.model_source.value == "file":
            m = self._file_model
            self.model_info.value = (f"{m.dims}D {m.mode} model from {Path(self.model_file.value).name}" if m
                                     else "choose a napari-unet model file (.pt)")
        else:
            self.model_info.value = STORE.describe()

    def output_layer(self, image=None):
        """The segmentation Labels layer of ``image`` (the chosen image by default), or None."""
        image = image if image is not None else self.image.value
        viewer = self.viewer
        if image is None or viewer is None:
            return None
        return find_labels_layer(viewer, segmentation_name(image.name))

    def _on_screen(self, layer, region) -> bool:
        """Whether a written region intersects the plane the viewer shows (else no refresh is needed)."""
        viewer = self.viewer
        ndisp = viewer.dims.ndisplay
        if tuple(viewer.dims.order) != tuple(range(viewer.dims.ndim)):
            return True  # transposed views: do not guess
        point = layer.world_to_data(viewer.dims.point)
        for axis in range(len(region) - ndisp):
            r, c = region[axis], int(round(point[axis]))
            if isinstance(r, slice):
                if not (r.start or 0) <= c < (r.stop if r.stop is not None else c + 1):
                    return False
            elif int(r) != c:
                return False
        return True

    # ------------------------------------------------------------------------------------- segmentation
    def start(self) -> Job:
        """Segment the chosen image (what the Segment button does).

        Returns
        -------
        Job
            The run; ``job.info["layer"]`` is the output Labels layer.

        Raises
        ------
        ValueError
            For missing inputs or settings the core refuses (checked before any layer is made).
        """
        from napari_unet.predict import plan_prediction

        viewer = self.viewer
        image = self.image.value
        if image is None:
            raise ValueError("choose an image layer to segment")
        model = self.current_model()
        if model is None:
            raise ValueError("there is no model yet: train one with Train UNet, or load a model file")
        data, axis = image_array(image, parse_channel_axis(self.channel_axis.value))
        tile = self.tile_size.value or "auto"
        device = self.device.value
        # validate everything before a layer or a file is created
        plan = plan_prediction(model, data, tile=tile, device=device, channel_axis=axis, output="labels")
        shape = tuple(plan.shape)
        lazy = is_lazy(data)
        name = segmentation_name(image.name)
        existing = find_labels_layer(viewer, name, shape)
        # every output is made before the viewer is touched: a full disk leaves the old result in place
        labels_out = make_output(shape, np.int32, lazy)
        prob_out = None
        if self.show_probabilities.value:
            try:
                prob_out = make_output((model.num_classes,) + shape, np.float32, lazy, prefix="probabilities")
            except BaseException:
                remove_output_store(labels_out)
                raise
        undoable = (existing is not None and isinstance(labels_out, np.ndarray)
                    and isinstance(level0(existing.data), np.ndarray) and labels_out.size <= UNDO_LIMIT)
        if existing is None:
            layer = viewer.add_labels(labels_out, name=name, **spatial_geometry(image, axis))
        else:
            layer = existing
            if not undoable:  # the layer shows the new result as it is written
                old = layer.data
                layer.data = labels_out
                forget_edits(layer)  # Ctrl+Z must not paste edits of the old result into the new one
                remove_output_store(old)
        # "covered": the boxes of the layer the model has segmented so far (None: all of it), so that
        # "Use as annotations" marks as background only places the model actually looked at
        meta = dict(mode=model.mode, class_ids=list(model.config.class_ids), click_classes={}, max_label=0,
                    covered=[])
        if not undoable:  # an undoable run changes the layer (and its metadata) only when it is done
            layer.metadata[META_KEY] = meta
        self._follow_painting(layer)
        prob_layers = [] if prob_out is None else self._probability_layers(image, model, prob_out, axis)

        job = Job("segment", layers=[image, layer] + prob_layers)
        job.info.update(layer=layer, undoable=undoable, labels_out=labels_out, prob_layers=prob_layers,
                        meta=meta, t0=time.perf_counter())
        self._launch(job, segment_updates(model, data, labels_out=labels_out, prob_out=prob_out, job=job,
                                          tile=tile, device=device, channel_axis=axis))
        self.segment_button.text = "Cancel"
        self.progress.value = 0
        self.status.value = plan.describe()
        job.worker.start()
        return job

    def _probability_layers(self, image, model, prob_out, axis):
        """Image layers showing each non-background class probability, backed by ``prob_out``."""
        viewer = self.viewer
        k = model.num_classes
        if not isinstance(prob_out, np.ndarray):
            import dask.array as da

            source = da.from_array(prob_out, chunks=prob_out.chunks)
        else:
            source = prob_out
        names = model.config.class_names
        layers = []
        for c in range(k):
            if names[c] == "background":
                continue
            lname = f"{image.name} probability ({names[c]})"
            found = next((lay for lay in viewer.layers if lay.name == lname and isinstance(lay, Image)), None)
            if found is not None:
                found.data = source[c]
                layers.append(found)
            else:
                layers.append(viewer.add_image(source[c], name=lname, colormap="magma", contrast_limits=(0, 1),
                                               blending="additive", opacity=0.7,
                                               **spatial_geometry(image, axis)))
        # the previous run's on-disk probabilities are no longer shown by any of these layers
        previous = self._prob_stores.pop(image.name, None)
        self._prob_stores[image.name] = prob_out
        if previous is not None:
            remove_output_store(previous)
        return layers

    def cancel(self, reason: str = "") -> None:
        """Stop the running segmentation after the current batch of tiles."""
        job = self._job
        if job is None:
            return
        job.info.setdefault("reason", reason or "it was cancelled")
        job.stop.set()
        self.segment_button.text = "Cancelling…"
        self.segment_button.enabled = False

    def stop(self, reason: str = "") -> None:
        """Same as `cancel` (the Cancel button)."""
        self.cancel(reason)

    def _on_update(self, job, update):
        if job is not self._job or self._closing:
            return
        layer = job.info["layer"]
        set_progress(self.progress, round(100 * update.fraction))
        meta = job.info["meta"]
        meta["max_label"] = max(meta.get("max_label", 0), update.max_label)
        if update.kind == "warning":
            show_warning(f"{NAME}: {update.message}")
            return
        if update.kind == "done":
            job.info["done"] = True
            meta["covered"] = None  # all of it
            if job.info["undoable"]:
                self._apply_as_one_edit(layer, job.info["labels_out"])
                layer.metadata[META_KEY] = meta
            else:
                layer.refresh()
            for p in job.info["prob_layers"]:
                p.refresh()
            self.status.value = f"{update.message}; result in '{layer.name}'"
            return
        if job.info["undoable"]:
            return  # applied at the end, as one edit
        shape = np.shape(job.info["labels_out"])
        meta["covered"].extend(region_box(r, shape) for r in update.regions)
        # each refresh redraws napari's canvas (50-75 ms in software OpenGL): only the labels, only when
        # a finished tile is on screen; the probability layers are refreshed once, at the end
        if any(self._on_screen(layer, r) for r in update.regions):
            layer.refresh(thumbnail=False)
        self.status.value = f"{100 * update.fraction:.0f}% in {update.elapsed:.0f} s"

    @staticmethod
    def _apply_as_one_edit(layer, new):
        """Write ``new`` into the layer as a single history entry (Ctrl+Z restores the previous result).

        A layer whose dtype cannot hold the new ids (a uint8 segmentation reopened from a file, say) gets
        the new array instead: casting would wrap ids around and merge objects.
        """
        old = level0(layer.data)
        if old.dtype.kind in "iu" and new.size and int(new.max()) > np.iinfo(old.dtype).max:
            layer.data = new
            forget_edits(layer)
            return
        changed = np.nonzero(old != new)
        if changed[0].size:
            layer.data_setitem(changed, new[changed].astype(old.dtype, copy=False))
        layer.refresh()

    def _on_finished(self, job):
        layer = job.info.get("layer")  # before _end_job releases the job's references
        if not self._end_job(job):
            return
        self.segment_button.text = "Segment"
        self.segment_button.enabled = True
        if job.info.get("done"):
            self.progress.value = 100
            return
        reason = job.info.get("reason")
        if reason:
            kept = ("the layer is unchanged" if job.info["undoable"]
                    else f"'{layer.name}' holds the part done so far")
            show_info(f"{NAME}: segmentation stopped because {reason}; {kept}")
            self.status.value = f"stopped: {reason}"
            viewer = self.viewer
            if not job.info["undoable"] and viewer is not None and any(same_layer(layer, x) for x in viewer.layers):
                layer.refresh()  # show the last tiles written

    def _on_layer_removed(self, event):
        if self._closing:
            return
        removed = event.value
        job = self._job
        if job is not None and any(same_layer(removed, layer) for layer in job.layers):
            self.cancel(f"the layer '{removed.name}' was removed")
        click = self._click_job
        if click is not None and any(same_layer(removed, layer) for layer in click.layers):
            click.info["cancelled"] = True

    # ------------------------------------------------------------------------------------- click to segment
    def _click_toggled(self, on: bool):
        viewer = self.viewer
        if viewer is None:
            return
        if on:
            if self._mouse_callback is None:
                self._mouse_callback = _weak_drag_callback(self._on_mouse)
                viewer.mouse_drag_callbacks.append(self._mouse_callback)
            image = self.image.value
            if image is not None:
                # clicks on an active Labels layer in paint mode are painting, not ours: make the image active
                viewer.layers.selection.active = image
                self.status.value = f"click an object in '{image.name}'"
        else:
            self._remove_mouse_callback()

    def _remove_mouse_callback(self):
        viewer = self.viewer
        if self._mouse_callback is not None and viewer is not None:
            if self._mouse_callback in viewer.mouse_drag_callbacks:
                viewer.mouse_drag_callbacks.remove(self._mouse_callback)
        self._mouse_callback = None

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
            self.segment_at(position)

    def segment_at(self, world_position) -> Job | None:
        """Segment a window around a point (world coordinates) and add the object found there.

        The window is `CLICK_WINDOW_2D` of the displayed plane for a 2D model (`CLICK_WINDOW_3D` for a
        3D model). The clicked object goes into the segmentation layer under a new id, only where that
        layer is 0, so existing objects are never touched. Runs in a worker; a click arriving meanwhile
        is handled next.
        """
        t_click = time.perf_counter()
        viewer = self.viewer
        image, model = self.image.value, self.current_model()
        if image is None:
            show_error(f"{NAME}: choose the image to segment first")
            return None
        if model is None:
            show_error(f"{NAME}: there is no model yet: train one with Train UNet, or load a model file")
            return None
        if self._job is not None:
            show_info(f"{NAME}: wait for the running segmentation to finish before clicking")
            return None
        if self._click_job is not None:
            self._pending_click = world_position
            return None
        if viewer.dims.ndisplay != 2:
            show_info(f"{NAME}: click to segment works in the 2D view")
            return None
        try:
            request = self._click_request(image, model, world_position)
        except ValueError as exc:
            show_error(f"{NAME}: {exc}")
            return None
        if request is None:
            return None
        source, key, point, offset, shape, axis = request
        job = Job("click", layers=[image])
        job.info.update(t_click=t_click, image=image, shape=shape, axis=axis, point=point, mode=model.mode)
        worker = create_worker(click_segment, model, source, point, offset, key=key, device=self.device.value,
                               _start_thread=False, _ignore_errors=True)
        job.worker = worker
        worker.returned.connect(weak_method(self._apply_click, job))
        worker.errored.connect(weak_method(self._on_click_error, job))
        worker.finished.connect(weak_method(self._on_click_finished, job))
        self._click_job = job
        self.status.value = "segmenting around the click…"
        worker.start()
        return job

    def _click_request(self, image, model, world_position):
        """Where to read the window for a click: (source, key, point in window, offset, shape, axis)."""
        from napari_unet.data import as_channels_first

        data, axis = image_array(image, parse_channel_axis(self.channel_axis.value))
        shape = spatial_shape(data, axis)
        if model.in_channels != (np.shape(data)[axis] if axis is not None else 1):
            raise ValueError(f"the model takes {model.in_channels} channel(s): set the image's channel axis")
        coords = list(image.world_to_data(world_position))
        # layer axis -> spatial axis of the data; a declared channel axis is not spatial (an RGB layer's
        # colour axis is not a layer axis at all)
        spatial_axis = {d: d for d in range(image.ndim)}
        if axis is not None and not getattr(image, "rgb", False):
            c = axis % len(coords)
            del coords[c]
            spatial_axis = {d: (d if d < c else d - 1) for d in range(image.ndim) if d != c}
        point = [int(round(v)) for v in coords]
        if len(point) != len(shape) or any(not 0 <= p < s for p, s in zip(point, shape)):
            return None  # clicked outside the image
        viewer = self.viewer
        offset = viewer.dims.ndim - image.ndim
        displayed = sorted(spatial_axis[d - offset] for d in viewer.dims.displayed if d - offset in spatial_axis)
        n = len(shape)
        if displayed != [n - 2, n - 1]:
            raise ValueError("click to segment needs the image's last two axes (Y, X) on screen")
        dims = model.dims
        if n < dims:
            raise ValueError(f"this is a {dims}D model but the image has {n} spatial axes")
        window = CLICK_WINDOW_2D if dims == 2 else CLICK_WINDOW_3D
        lead = point[: n - dims]
        starts, sizes = [], []
        for p, s, w in zip(point[n - dims:], shape[n - dims:], window):
            w = min(w, s)
            starts.append(int(min(max(p - w // 2, 0), s - w)))
            sizes.append(w)
        key = (slice(None),) + tuple(lead) + tuple(slice(a, a + w) for a, w in zip(starts, sizes))
        local = tuple(p - a for p, a in zip(point[n - dims:], starts))
        return as_channels_first(data, axis), key, local, tuple(lead) + tuple(starts), shape, axis

    def _apply_click(self, job, result):
        if self._closing or job.info.get("cancelled"):
            return
        if self._job is not None:  # a whole-image run started meanwhile and is writing the same layer
            self.status.value = "click ignored: a segmentation is running"
            return
        image = job.info["image"]
        if result.mask is None:
            self.status.value = "no object at the click (the model sees background there)"
            return
        viewer = self.viewer
        name = segmentation_name(image.name)
        layer = find_labels_layer(viewer, name, job.info["shape"])
        if layer is None:
            data = image_array(image, job.info["axis"])[0]
            out = make_output(job.info["shape"], np.int32, is_lazy(data))
            layer = viewer.add_labels(out, name=name, **spatial_geometry(image, job.info["axis"]))
        meta = layer.metadata.setdefault(META_KEY, dict(mode=job.info["mode"], click_classes={}, max_label=0,
                                                        covered=[]))
        self._follow_painting(layer)
        data = level0(layer.data)
        n_lead = len(result.offset) - result.mask.ndim
        lead = result.offset[:n_lead]
        starts = result.offset[n_lead:]
        box = tuple(lead) + tuple(slice(a, a + m) for a, m in zip(starts, result.mask.shape))
        current = np.asarray(data[box])
        under = int(current[tuple(job.info["point"])])
        if under:
            self.status.value = f"already segmented (label {under})"
            return
        free = result.mask & (current == 0)
        new_id = self._next_label(layer, meta)
        if new_id > np.iinfo(np.dtype(data.dtype)).max:
            show_error(f"{NAME}: '{layer.name}' ({data.dtype}) cannot hold label {new_id}")
            return
        local = np.nonzero(free)
        count = local[0].size
        index = tuple(np.full(count, i) for i in lead) + tuple(ix + a for ix, a in zip(local, starts))
        t_apply = time.perf_counter()
        layer.data_setitem(index, new_id)
        meta["max_label"] = new_id
        if isinstance(meta.get("covered"), list):  # the model has looked at this window
            meta["covered"].append(region_box(box, np.shape(data)))
        if job.info["mode"] == "semantic":
            meta.setdefault("click_classes", {})[new_id] = result.value
        now = time.perf_counter()
        self.last_click_latency = now - job.info["t_click"]
        self.last_click_timing = dict(worker=result.seconds, apply=now - t_apply, total=self.last_click_latency)
        self.status.value = f"added object {new_id} ({count} px) in {self.last_click_latency:.2f} s"

    def _follow_painting(self, layer) -> None:
        """Remember the ids the user paints into ``layer`` by hand, so clicked objects never reuse them.

        (In-memory layers are also scanned at each click; a lazy layer is too big to scan.)
        """
        if layer in self._painting_followed:
            return
        self._painting_followed.add(layer)
        layer.events.paint.connect(_note_painted_label)

    @staticmethod
    def _next_label(layer, meta) -> int:
        data = level0(layer.data)
        largest = int(meta.get("max_label", 0))
        if isinstance(data, np.ndarray) and data.size <= 2**26:
            largest = max(largest, int(data.max(initial=0)))  # ids painted by hand count too
        return largest + 1

    def _on_click_error(self, job, exc):
        if not self._closing:
            show_error(f"{NAME}: {exc}")

    def _on_click_finished(self, job):
        job.release()
        if job is not self._click_job:
            return
        self._click_job = None
        pending, self._pending_click = self._pending_click, None
        if pending is not None and not self._closing:
            self.segment_at(pending)

    # ------------------------------------------------------------------------------------- annotations
    def _on_use_as_annotations(self, *_):
        try:
            self.make_annotations()
        except (ValueError, MemoryError) as exc:
            show_error(f"{NAME}: {exc}")

    def make_annotations(self) -> Job:
        """Convert the chosen image's segmentation into training labels, in a new Labels layer.

        Semantic: objects become their class id and everything else background (1), a dense
        annotation. Instance: copied as is. The conversion runs in a worker; when it is done the new
        layer is added and offered to Train UNet (which then continues from the current model).
        """
        image = self.image.value
        if image is None:
            raise ValueError("choose the image whose segmentation you corrected")
        layer = self.output_layer(image)
        if layer is None:
            raise ValueError(f"there is no '{segmentation_name(image.name)}' layer yet: segment the image first")
        meta = dict(layer.metadata.get(META_KEY) or {})
        model = self.current_model()
        mode = meta.get("mode") or (model.mode if model is not None else "semantic")
        class_ids = meta.get("class_ids") or (list(model.config.class_ids) if model is not None else [1, 2])
        covered = meta.get("covered")  # None (also for a layer from elsewhere): fully segmented
        if covered is not None and mode == "instance":
            show_warning(f"{NAME}: only part of '{layer.name}' was segmented (clicks or a cancelled run); instance "
                         "annotations count every unlabelled pixel as background: segment the whole image first "
                         "if objects are missing")
        job = Job("annotations", layers=[image, layer])
        worker = create_worker(_convert, level0(layer.data), mode, class_ids, dict(meta.get("click_classes", {})),
                               covered, _start_thread=False, _ignore_errors=True)
        job.worker = worker
        worker.returned.connect(weak_method(self._add_annotations, job, image, layer, mode, covered is None))
        worker.errored.connect(weak_method(self._on_click_error, job))
        self.status.value = "converting the segmentation into annotations…"
        worker.start()
        return job

    def _add_annotations(self, job, image, seg_layer, mode, whole, labels):
        viewer = self.viewer
        if self._closing or viewer is None:
            return
        if not any(same_layer(image, layer) for layer in viewer.layers):
            show_info(f"{NAME}: the image was removed; no annotations made")
            return
        new = viewer.add_labels(labels, name=f"{image.name} annotations (corrected)", scale=seg_layer.scale,
                                translate=seg_layer.translate)
        seg_layer.visible = False  # the new layer covers it; one editable layer at a time is less confusing
        if mode == "instance":
            what = "one id per object, 0 background"
        elif whole:
            what = "objects are class ids, the rest background (1)"
        else:
            what = "objects are class ids, the rest of the segmented windows background (1), elsewhere not annotated"
        self.status.value = f"'{new.name}' made ({what}); retrain with Train UNet"
        show_info(f"{NAME}: '{new.name}' is ready to train on ({what})")
        STORE.annotations_ready.emit(image, new, mode)

    # ------------------------------------------------------------------------------------- closing
    def _extra_jobs(self) -> list:
        return [self._click_job]

    def _disconnect(self) -> None:
        STORE.changed.disconnect(self._update_model_info, missing_ok=True)
        self._remove_mouse_callback()


def _note_painted_label(event) -> None:
    """A Labels layer's paint event: its brush/fill label counts toward the largest id in use."""
    layer = event.source
    meta = layer.metadata.get(META_KEY)
    if meta is not None:
        meta["max_label"] = max(int(meta.get("max_label", 0)), int(layer.selected_label))


def _convert(segmentation, mode, class_ids, click_classes, covered):
    """Worker function for `SegmentWidget.make_annotations` (reads a lazy segmentation whole)."""
    return to_training_labels(np.asarray(segmentation), mode, class_ids, click_classes, covered=covered)


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
