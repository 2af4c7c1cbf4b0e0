"""The **Segment with UNet** dock widget: whole-image segmentation, click to segment, corrections."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, ProgressBar, PushButton
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning

from ._annotations import Annotations
from ._base import JobWidget, report_start_error
from ._clicks import ClickToSegment
from ._jobs import Job
from ._layers import (fixed_label, image_array, is_lazy, make_output, remove_output_store,
                      region_on_screen, segmentation_name, set_progress)
from ._lifecycle import weak_method
from ._pickers import LayerComboBox, auto_choices, channel_axis_choices, device_choices, layer_choices, parse_channel_axis
from ._names import ImageNames
from ._probabilities import ProbabilityLayers
from ._provenance import mark_output
from ._segmentation import SegmentationLayer, SegmentationRun
from ._store import STORE

__all__ = ["SegmentWidget"]

NAME = "Segment with UNet"
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
    writes into the same layer: for in-memory results up to ``UNDO_LIMIT`` pixels (`_segmentation`) the
    new result is applied as one edit that Ctrl+Z on the layer undoes; bigger results replace the layer's data (not
    undoable). Lazy (dask/zarr) images, and results over `napari_unet._napari._layers.IN_MEMORY_LIMIT`,
    go to an on-disk zarr array in a temporary folder, filled tile by tile while the layer refreshes,
    with memory bounded by the tile size. Clicked objects are added with `Labels.data_setitem`, so
    they can be undone too. The layer and its state: `SegmentationLayer`; clicks, "Use as
    annotations" and probability layers: small collaborators; all work goes through ``self.runner``.

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
    link_planes : CheckBox
        Shown for a 2D instance model on an image with a stack axis: link each plane's objects to the
        previous plane's, so an object gets one 3D id (`napari_unet.stitch`). Off by default (a time
        series is not a z-stack).
    trim_links : CheckBox
        Shown while ``link_planes`` is on, on by default: linked objects lose their small end sections
        and single-plane objects are dropped (`napari_unet.stitch.trimmed_sections`); off keeps them.
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
        self._run: SegmentationRun | None = None
        self._file_model = None
        #: click to segment (the mouse callback and its jobs)
        self.clicks = ClickToSegment(self)
        self._annotations = Annotations(self)
        self._probabilities = ProbabilityLayers()

        self.image = LayerComboBox(label="Image", choices=layer_choices(self._viewer_ref, Image))
        self.channel_axis = ComboBox(label="Channel axis", choices=self._channel_choices,
                                     tooltip="Axis of the image that holds channels (RGB is automatic)")
        self.model_source = ComboBox(label="Model", choices=[("current model (trained or loaded)", "current"),
                                                             ("model file", "file")], value="current")
        self.model_file = FileEdit(label="Model file", mode="r", filter="*.pt *.zip", visible=False)
        self.model_info = fixed_label(Label(label="", value=""))
        self.tile_size = ComboBox(label="Tile size", choices=auto_choices(TILE_SIZES), value=0,
                                  tooltip="Pixels per tile side; auto fits the device memory")
        self.device = ComboBox(label="Device", choices=device_choices(), value="auto")
        self.show_probabilities = CheckBox(text="Also show probabilities", value=False)
        self.link_planes = CheckBox(text="Link objects across planes", value=False, visible=False,
                                    tooltip="A z-stack segmented plane by plane: an object overlapping one in "
                                            "the previous plane keeps its id (one 3D object); not for time series")
        self.trim_links = CheckBox(text="Trim linked objects' ends", value=True, visible=False,
                                   tooltip="Drop each linked object's small top and bottom sections (blurred "
                                           "light) and objects seen in one plane only; untick for thin objects")
        self.segment_button = PushButton(text="Segment")
        self.progress = ProgressBar(label="Progress", min=0, max=100, value=0)
        self.click_to_segment = CheckBox(text="Click to segment", value=False,
                                         tooltip="Click an object in the image to segment it and add it to "
                                                 "the segmentation layer (drag to pan as usual)")
        self.use_as_annotations = PushButton(text="Use as annotations",
                                             tooltip="Turn the corrected segmentation into training labels "
                                                     "(a new Labels layer) to retrain with")
        self.status = fixed_label(Label(label="", value=""))
        self.extend([self.image, self.channel_axis, self.model_source, self.model_file, self.model_info,
                     self.tile_size, self.device, self.show_probabilities, self.link_planes, self.trim_links,
                     self.segment_button,
                     self.progress,
                     self.click_to_segment, self.use_as_annotations, self.status])

        self.image.changed.connect(self._image_changed)
        self.channel_axis.changed.connect(self._offer_linking)
        self.link_planes.changed.connect(self._offer_linking)
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
        self._names = ImageNames(self.viewer, weak_method(self._rename_segmentation))

    # ------------------------------------------------------------------------------------- public state
    @property
    def clicking(self) -> bool:
        """Whether a click is being segmented."""
        return self.clicks.busy

    @property
    def last_click_latency(self) -> float | None:
        """Seconds from the last click to its object appearing in the layer."""
        return self.clicks.last_latency

    @property
    def last_click_timing(self) -> dict:
        """Where that time went: ``worker`` (segmenting the window), ``apply`` (writing), ``total``."""
        return self.clicks.last_timing

    def current_model(self):
        """The model the next run uses: the shared current model, or the chosen file's."""
        return self._file_model if self.model_source.value == "file" else STORE.model

    def output_layer(self, image=None):
        """The segmentation Labels layer of ``image`` (the chosen image by default), or None."""
        image = image if image is not None else self.image.value
        viewer = self.viewer
        if image is None or viewer is None:
            return None
        seg = SegmentationLayer.find(viewer, image)
        return None if seg is None else seg.layer

    # ------------------------------------------------------------------------------------- helpers
    def _rename_segmentation(self, image, old: str) -> None:
        viewer = self.viewer
        if viewer is None or self.closing:
            return
        seg = SegmentationLayer.find(viewer, image)
        if seg is not None and seg.layer.name == segmentation_name(old) and segmentation_name(image.name) not in viewer.layers:
            seg.layer.name = segmentation_name(image.name)
        self._probabilities.renamed(old, image.name)

    def _channel_choices(self, widget=None):
        return channel_axis_choices(self.image.value if hasattr(self, "image") else None)

    def _image_changed(self, *_):
        self.channel_axis.reset_choices()
        self._offer_linking()

    def _offer_linking(self, *_):
        """"Link objects across planes" only where it means something: a 2D instance model on a stack."""
        from napari_unet.stitch import can_stitch

        image, model = self.image.value, self.current_model()
        spatial = None
        if image is not None:
            data, axis = image_array(image, parse_channel_axis(self.channel_axis.value))
            spatial = len(np.shape(data)) - (axis is not None)
        offered = model is not None and spatial is not None and can_stitch(model, spatial)
        self.link_planes.visible = offered
        self.trim_links.visible = offered and self.link_planes.value  # what linking does, shown with it

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
            if self.model_source.value == "file":
                m = self._file_model
                self.model_info.value = (f"{m.dims}D {m.mode} model from {Path(self.model_file.value).name}" if m
                                         else "choose a napari-unet model file (.pt)")
            else:
                self.model_info.value = STORE.describe()
            self._offer_linking()
        except RuntimeError:  # the Qt widgets were deleted with the viewer before this object
            self.shutdown()

    # ------------------------------------------------------------------------------------- segmentation
    def start(self) -> Job:
        """Segment the chosen image (what the Segment button does); returns the job.

        Raises
        ------
        ValueError
            For missing inputs or settings the core refuses (checked before any layer is made).
        """
        from napari_unet.predict import plan_prediction

        viewer, image, model = self.viewer, self.image.value, self.current_model()
        if image is None:
            raise ValueError("choose an image layer to segment")
        if model is None:
            raise ValueError("there is no model yet: train one with Train UNet, or load a model file")
        if self.runner.running("annotations"):  # it reads the layer this run would update
            raise ValueError("the segmentation is being turned into annotations: segment again when that is done")
        data, axis = image_array(image, parse_channel_axis(self.channel_axis.value))
        # planned once, validating everything before a layer or a file is created; the worker runs this plan
        link = self.link_planes.visible and self.link_planes.value
        plan = plan_prediction(model, data, labels=True, probabilities=bool(self.show_probabilities.value),
                               tile=self.tile_size.value or "auto", device=self.device.value, channel_axis=axis,
                               stitch_planes=True if link else None,
                               stitch_trim=bool(self.trim_links.value) if link else True)
        lazy = is_lazy(data)
        # every output is made before the viewer is touched: a full disk leaves the old result in place
        labels_out = make_output(tuple(plan.shape), np.int32, lazy)
        prob_out = None
        if self.show_probabilities.value:
            try:
                prob_out = make_output(tuple(plan.probabilities_shape), np.float32, lazy, prefix="probabilities")
            except BaseException:
                remove_output_store(labels_out)
                raise
        run = SegmentationRun.prepare(viewer, image, model, labels_out, axis)
        # class names and provenance: on the layer being written now, and on the one holding the result
        run.mark = partial(mark_output, model=model, image=image, plan=plan, channel_axis=axis)
        if not run.undoable:
            run.mark(run.seg.layer)
        if run.kept is not None:
            show_info(f"{NAME}: '{run.kept.layer.name}' was edited by hand, so it is kept as it is; "
                      f"the new result goes to '{run.seg.layer.name}'")
        if prob_out is not None:
            run.prob_layers = self._probabilities.show(viewer, image, model, prob_out, axis)
        self._run = run
        work = partial(_segmentation, plan, labels_out, prob_out, model.mode == "instance")
        job = self._start_main("segment", work, layers=[image, run.seg.layer] + run.prob_layers,
                               on_update=self._on_update, on_finished=self._on_finished)
        self.segment_button.text = "Cancel"
        self.progress.value = 0
        self.status.value = plan.describe()
        return job

    def cancel(self, reason: str = "") -> None:
        """Stop the running segmentation after the current batch of tiles."""
        job, run = self._main, self._run
        if job is None:
            return
        if run is not None and not run.reason:
            run.reason = reason or "it was cancelled"
        job.stop.set()
        self.segment_button.text = "Cancelling…"
        self.segment_button.enabled = False

    def stop(self, reason: str = "") -> None:
        """Same as `cancel` (the Cancel button)."""
        self.cancel(reason)

    def _on_update(self, job, update):
        run = self._run
        if job is not self._main or run is None:
            return
        set_progress(self.progress, round(100 * update.fraction))
        run.state.max_label = max(run.state.max_label, update.max_label)
        if update.kind == "warning":
            show_warning(f"{NAME}: {update.message}")
        elif update.kind == "done":
            kept = run.kept
            run.finish(self.viewer)
            if run.kept is not kept:
                show_info(f"{NAME}: '{run.kept.layer.name}' was edited during the run, so it is kept as it is; "
                          f"the new result is in '{run.seg.layer.name}'")
            self.status.value = f"{update.message}; result in '{run.seg.layer.name}'"
        elif not run.undoable:  # (an undoable run is applied at the end, as one edit)
            run.state.cover(update.regions, np.shape(run.labels_out))
            # each refresh redraws napari's canvas (50-75 ms in software OpenGL): only the labels, only when
            # a finished tile is on screen; the probability layers are refreshed once, at the end
            if any(region_on_screen(self.viewer, run.seg.layer, r) for r in update.regions):
                run.seg.layer.refresh(thumbnail=False)
            self.status.value = f"{100 * update.fraction:.0f}% in {update.elapsed:.0f} s"

    def _on_finished(self, job):
        run, self._run = self._run, None
        self.segment_button.text = "Segment"
        self.segment_button.enabled = True
        if run is None:
            return
        if run.done:
            self.progress.value = 100
            return
        viewer = self.viewer
        shown = run.abandon(viewer) if viewer is not None else ""
        if run.reason:
            show_info(f"{NAME}: segmentation stopped because {run.reason}; {shown}")
            self.status.value = f"stopped: {run.reason}"

    def _on_layer_removed(self, event):
        if self.closing:
            return
        removed = event.value
        job, run = self._main, self._run
        if job is not None and job.uses(removed) and not (run is not None and run.done):
            self.cancel(f"the layer '{removed.name}' was removed")
        for click in self.runner.using(removed):
            if click.kind == "click":
                click.stop.set()  # its object is not added

    # ------------------------------------------------------------------------------------- clicks
    def _click_toggled(self, on: bool):
        self.clicks.listen(on)
        image = self.image.value
        if on and image is not None and self.viewer is not None:
            # clicks on an active Labels layer in paint mode are painting, not ours: make the image active
            self.viewer.layers.selection.active = image
            self.status.value = f"click an object in '{image.name}'"

    def segment_at(self, world_position) -> Job | None:
        """Segment a window around a point (world coordinates) and add the object found there.

        The window is `napari_unet.interactive.default_window` of the model (the displayed plane for a
        2D model). The clicked object goes into the segmentation layer under a new id, only where that
        layer is 0, so existing objects are never touched. Runs in a job; a click arriving meanwhile
        is handled next.
        """
        return self.clicks.at(world_position)

    # ------------------------------------------------------------------------------------- annotations
    def _on_use_as_annotations(self, *_):
        try:
            self.make_annotations()
        except Exception as exc:  # noqa: BLE001 - shown, never a crashed viewer
            report_start_error(NAME, exc)

    def make_annotations(self) -> Job:
        """Convert the chosen image's segmentation into training labels, in a new Labels layer.

        Semantic: objects become their class id and everything else background (1), a dense
        annotation (only inside the parts the model segmented, when it did not segment all of it).
        Instance: copied as is. The conversion runs in a job; when it is done the new layer is added
        and offered to Train UNet (which then continues from the current model).
        """
        return self._annotations.start()

    # ------------------------------------------------------------------------------------- closing
    def _disconnect(self) -> None:
        STORE.changed.disconnect(self._update_model_info, missing_ok=True)
        self.clicks.stop_listening()

    def shutdown(self, timeout: float = 5.0) -> None:
        """End running work (`JobWidget.shutdown`). A stopped run is abandoned as a cancelled one is: a
        previous result stays, without the partial layer beside it; else its layer holds the part done."""
        run = None if self.closing else self._run
        job = self._main
        super().shutdown(timeout)
        if run is None or run.done:
            return
        viewer = self.viewer
        ended = job is None or job.ended.is_set()
        if viewer is not None and ended:  # its end is not shown once closing: clean up here
            run.abandon(viewer)
        else:  # still writing (or no viewer left): never leave a layer locked
            run.seg.layer.editable = True


def _segmentation(plan, labels_out, prob_out, instance, stop):
    """The segmentation job (in the worker): the widget's plan run into its outputs, events batched."""
    from napari_unet.predict import run_prediction
    from napari_unet.progress import MaxTracker, batch_predict_events, until

    tracker = MaxTracker(labels_out)  # the largest id written: clicked objects get the next ones
    events = run_prediction(plan, labels_out=tracker, probabilities_out=prob_out)
    return batch_predict_events(until(events, stop), instance=instance, tracker=tracker)
