"""The **Train UNet** dock widget."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info, show_warning

from ._base import JobWidget
from ._jobs import Job
from ._layers import (drop_channel_axis, fixed_label, image_array, labels_array, same_layer, set_progress,
                      spatial_geometry)
from ._lifecycle import weak_method
from ._live import LiveSession, live_training
from ._model_files import export_current_model, load_model_file, save_current_model
from ._pickers import PairRow
from ._plot import LossPlot
from ._store import STORE
from ._train_settings import AdvancedTrainSettings
from ._uncertainty import UncertaintyView

__all__ = ["TrainWidget"]

MODES = [("sparse strokes (semantic)", "semantic"), ("instance masks (instance)", "instance")]
NAME = "Train UNet"


@dataclass
class _TrainRun:
    """The running training, as the widget shows it."""

    offset: int  # steps of the previous runs drawn in the loss plot (fine-tuning continues the curve)
    budget: float | None  # None: live, until Stop
    reason: str = ""  # why it was stopped, when the widget stopped it
    done: bool = False


class TrainWidget(JobWidget):
    """Train a UNet on the annotations painted in napari.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Passed by napari when the widget is docked from the Plugins menu.

    Notes
    -----
    Training runs in a napari worker on the core's `napari_unet.iter_train` generator. The worker gets
    copies of the annotations and never touches the viewer; its updates (batched to a few per second)
    are applied here, on the GUI thread. The trained model goes to the shared `STORE`, where the
    **Segment with UNet** widget picks it up at once.

    Attributes
    ----------
    pairs : Container
        `PairRow`s: (image, labels) pairs to train on; ``add_pair_button`` adds one.
    mode : ComboBox
        ``"semantic"`` (sparse strokes: 0 not annotated, 1 background, 2.. classes) or ``"instance"``
        (dense masks: 0 background, one id per object).
    time_budget : FloatSpinBox
        Seconds of training.
    continue_training : CheckBox
        Fine-tune the current model instead of starting a new one.
    advanced : AdvancedTrainSettings
        Folded away (``advanced.toggle``): model dims, depth, base channels, patch size, batch size,
        learning rate (0 = automatic), device and the images' channel axis.
    train_button : PushButton
        "Train"; reads "Stop" while training runs.
    progress : ProgressBar
    status : Label
    loss_plot : LossPlot
        Training and validation loss, live.
    save_button, load_button : PushButton
    model_info : Label
        Describes the current model.
    """

    NAME = NAME

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._run: _TrainRun | None = None
        self._live: LiveSession | None = None
        self.pairs = Container(labels=False)
        self.add_pair_button = PushButton(text="+ Add image/labels pair",
                                          tooltip="Train on several images at once")
        self.mode = ComboBox(label="Mode", choices=MODES, value="semantic",
                             tooltip="Sparse strokes: 0 = not annotated, 1 = background, 2.. = classes.\n"
                                     "Instance masks: dense, 0 = background, one id per object.")
        self.time_budget = FloatSpinBox(label="Time budget (s)", value=60.0, min=1.0, max=86400.0, step=10.0,
                                        tooltip="How long to train")
        self.continue_training = CheckBox(text="Continue from the current model", value=False,
                                          tooltip="Fine-tune the current model on these annotations "
                                                  "(its classes and architecture are kept)")
        self.live = CheckBox(text="Live: train while I paint", value=False,
                             tooltip="Train until Stop; new strokes join the training within seconds, and a "
                                     "preview of the model's segmentation of what is on screen is shown")
        self.show_hesitation = CheckBox(text="Show where the model hesitates", value=False,
                                        tooltip="A layer '<image> uncertainty': bright where the model is unsure "
                                                "between two classes, i.e. where a stroke helps most.\n"
                                                "Live: refreshed with each preview; otherwise computed for the "
                                                "displayed plane whenever the model changes")
        self.uncertainty = UncertaintyView(self.runner)
        self.advanced = AdvancedTrainSettings(self._first_image)
        self.train_button = PushButton(text="Train")
        self.progress = ProgressBar(label="Progress", min=0, max=100, value=0)
        self.status = fixed_label(Label(label="", value=""))
        self.plot_box = Container(labels=False)
        self.loss_plot = LossPlot()
        self.plot_box.native.layout().addWidget(self.loss_plot)
        self.save_button = PushButton(text="Save model…")
        self.load_button = PushButton(text="Load model…")
        self.export_button = PushButton(text="Export for bioimage.io…")
        self.model_info = fixed_label(Label(label="Model", value=STORE.describe()))
        self.extend([self.pairs, self.add_pair_button, self.mode, self.time_budget, self.continue_training,
                     self.live, self.show_hesitation, self.advanced, self.train_button,
                     self.progress, self.status,
                     self.plot_box, Container(widgets=[self.save_button, self.load_button, self.export_button],
                                              layout="horizontal", labels=False), self.model_info])
        self.add_pair()

        self.add_pair_button.changed.connect(self.add_pair)
        self.train_button.changed.connect(self._on_run_clicked)
        self.live.changed.connect(self._on_live_toggled)
        self.show_hesitation.changed.connect(self._on_hesitation_toggled)
        self.save_button.changed.connect(self.save_model)
        self.load_button.changed.connect(self.load_model)
        self.export_button.changed.connect(self.export_model)
        STORE.changed.connect(self._on_model_changed)
        STORE.annotations_ready.connect(self._on_annotations_ready)
        self._on_model_changed(STORE.model)
        self._watch_viewer()

    # ------------------------------------------------------------------------------------- helpers
    def rows(self) -> list:
        """The `PairRow`s."""
        return list(self.pairs)

    def add_pair(self, *_) -> PairRow:
        """Add an (image, labels) row; new rows preselect the next image/labels not used yet."""
        row = PairRow(self._viewer_ref, removable=bool(len(self.pairs)))
        self.pairs.append(row)
        row.reset_choices()
        used_images = [r.image.value for r in self.rows()[:-1]]
        used_labels = [r.labels.value for r in self.rows()[:-1]]
        for combo, used in ((row.image, used_images), (row.labels, used_labels)):
            free = [c for c in combo.choices if not any(same_layer(c, u) for u in used)]
            if free and used:
                combo.value = free[0]
        row.remove.changed.connect(weak_method(self._remove_row, row))
        if len(self.pairs) == 1:
            row.image.changed.connect(weak_method(self._image_changed))
        return row

    def _remove_row(self, row, *_):
        if row in self.pairs and len(self.pairs) > 1:
            self.pairs.remove(row)

    def _image_changed(self, *_):
        self.advanced.channel_axis.reset_choices()

    def _first_image(self):
        rows = self.rows() if hasattr(self, "pairs") else []
        return rows[0].image.value if rows else None

    def _on_live_toggled(self, live: bool):
        self.time_budget.enabled = not live  # a live run has no budget

    def _on_model_changed(self, model):
        try:
            self.model_info.value = STORE.describe()
            self.continue_training.enabled = model is not None
            if model is None:
                self.continue_training.value = False
            if self.show_hesitation.value and model is not None and STORE.source != "live training":
                self.refresh_hesitation()  # a live run's previews bring their own maps
        except RuntimeError:  # the Qt widgets were deleted with the viewer before this object
            self.shutdown()

    def _on_annotations_ready(self, image_layer, labels_layer, mode):
        viewer = self.viewer
        if viewer is None or not any(same_layer(labels_layer, layer) for layer in viewer.layers):
            return  # made in another viewer
        self.reset_choices()
        row = self.rows()[0]
        row.image.value = next(c for c in row.image.choices if same_layer(c, image_layer))
        row.labels.value = next(c for c in row.labels.choices if same_layer(c, labels_layer))
        self.mode.value = mode
        if STORE.model is not None:
            self.continue_training.value = True

    # ------------------------------------------------------------------------------------- uncertainty
    def _on_hesitation_toggled(self, on: bool):
        if self._live is not None:
            self._live.want_hesitation(on)
        if not on:
            self.uncertainty.hide()
        elif self._live is None:
            self.refresh_hesitation()

    def refresh_hesitation(self):
        """Map where the current model hesitates on the first image (its displayed plane), in the
        background, into "<image> uncertainty"; returns the job (None when it cannot start)."""
        row = self.rows()[0]
        return self.uncertainty.refresh(self.viewer, row.image.value, row.labels.value, STORE.model,
                                        self.advanced.parsed_channel_axis(), self.advanced.device.value,
                                        self.status)

    # ------------------------------------------------------------------------------------- training
    def _training_inputs(self):
        pairs = []
        for i, row in enumerate(self.rows()):
            image, labels = row.image.value, row.labels.value
            which = f" (pair {i + 1})" if len(self.pairs) > 1 else ""
            if image is None:
                raise ValueError(f"choose an image layer{which}: open an image, or try File > Open Sample > "
                                 "napari-unet > Nuclei")
            if labels is None:
                raise ValueError(f"choose a Labels layer with your annotations{which}: add one with the "
                                 "'New labels layer' button and paint strokes (1 = background, 2 = objects)")
            pairs.append((image, labels))
        axis = self.advanced.parsed_channel_axis()
        images, labels, layers, axes = [], [], [], set()
        for image, lab in pairs:
            arr, ax = image_array(image, axis)
            axes.add(ax)
            images.append(arr)
            # a copy: the user may keep painting while training runs
            labels.append(drop_channel_axis(labels_array(lab), np.shape(arr), ax))
            layers += [image, lab]
        if len(axes) > 1:
            raise ValueError("mix of RGB and non-RGB images: train on images with the same channels")
        return images, labels, layers, axes.pop()

    def start(self) -> Job:
        """Start training with the current settings (what the Train button does).

        Returns
        -------
        Job
            The run; its worker is ``job.worker``.

        Raises
        ------
        ValueError
            When the inputs are missing; errors found by the core arrive as notifications.
        """
        images, labels, layers, channel_axis = self._training_inputs()
        init = None
        if self.continue_training.value:
            init = STORE.model
            if init is None:
                show_info(f"{NAME}: no current model to continue from; training a new one")
        kwargs = dict(self.advanced.training_kwargs(), mode=self.mode.value, init=init,
                      time_budget=float(self.time_budget.value), channel_axis=channel_axis)
        if init is not None:  # background window and context planes are part of the network: kept
            kwargs.update(background=None, context_planes=None)
        else:  # a new 3D model learns the voxel size the image layers declare (their scale)
            from napari_unet.model import spacing_from_scales

            scales = [spatial_geometry(layer, channel_axis)["scale"] for layer in layers[::2]]  # no channel axis
            kwargs["spacing"] = spacing_from_scales(scales, kwargs["dims"])
        work = partial(_training, images, labels, kwargs)
        if self.live.value:
            del kwargs["time_budget"]
            self._live = LiveSession(self.viewer, list(zip(layers[::2], layers[1::2])), [np.shape(a) for a in images],
                                     channel_axis, init.dims if init is not None else kwargs["dims"], labels)
            self._live.hesitation = self.show_hesitation.value
            work = partial(live_training, images, labels, kwargs, self._live.updates, self._live.previews)
        self._run = _TrainRun(offset=self.loss_plot.start_run() if init is not None else 0,
                              budget=kwargs.get("time_budget"))
        if init is None:
            self.loss_plot.clear()
        job = self._start_main("train", work, layers=layers, on_update=self._on_update,
                               on_finished=self._on_finished)
        self.train_button.text = "Stop"
        self.live.enabled = False  # a run stays what it started as (live or with a budget) until it ends
        self.progress.value = 0
        self.status.value = "preparing the training data…"
        return job

    def stop(self, reason: str = "") -> None:
        """Ask the running training to stop; it ends after the current step, keeping the best model."""
        job, run = self._main, self._run
        if job is None:
            return
        if run is not None and not run.reason:
            run.reason = reason
        job.stop.set()
        self.train_button.text = "Stopping…"
        self.train_button.enabled = False

    def _on_update(self, job, update):
        run = self._run
        if job is not self._main or run is None:
            return
        off = run.offset
        if update.losses:
            self.loss_plot.add_train([(s + off, v) for s, v in update.losses])
        if update.val_loss is not None:
            self.loss_plot.add_validation(update.step + off, update.val_loss)
        set_progress(self.progress, round(100 * update.fraction))
        if self._live is not None and update.kind in ("labels", "preview"):
            self.status.value = self._live.on_update(update) or self.status.value
            if update.kind == "preview" and self.show_hesitation.value:
                self.uncertainty.show_live(self.viewer, self._live, update.data)
            return
        if update.kind == "start":
            self.status.value = update.message
        elif update.kind == "warning":  # e.g. a live edit that cannot be used, or a smaller batch after OOM
            self.status.value = update.message
            show_warning(f"{NAME}: {update.message}")
        elif update.kind == "done":
            run.done = True
            if update.step == 0:  # nothing learned: an untrained network must not replace the current model
                kept = "the current model is unchanged" if STORE.model is not None else "no model yet"
                self.status.value = f"stopped before the first training step; {kept}"
                show_info(f"{NAME}: training stopped before its first step; {kept}")
                return
            model = update.model
            what = "stopped" if update.stopped else "finished"
            STORE.set(model, "trained here")
            best = f", best validation loss {update.best_val_loss:.4g}" if update.best_val_loss is not None else ""
            self.status.value = f"{what}: {update.step} steps in {update.elapsed:.0f} s{best}"
            reason = run.reason
            if reason:
                show_info(f"{NAME}: training stopped because {reason}; the model so far is kept")
            elif update.stopped:
                show_info(f"{NAME}: stopped after {update.step} steps; kept the best model so far")
        else:
            loss = f"loss {update.loss:.4f}" if update.loss is not None else ""
            best = f" · best val {update.best_val_loss:.4f}" if update.best_val_loss is not None else ""
            of = f"of {run.budget:.0f} s" if run.budget is not None else "(live: until Stop)"
            self.status.value = f"step {update.step} · {loss}{best} · {update.elapsed:.0f} s {of}"

    def _on_finished(self, job):
        run, self._run = self._run, None
        if self._live is not None:
            self._live.close()
            self._live = None
        self.train_button.text = "Train"
        self.train_button.enabled = True
        self.live.enabled = True
        if run is not None and run.done:
            self.progress.value = 100

    def _on_layer_removed(self, event):
        job = self._main
        if job is None or self.closing:
            return
        if job.uses(event.value):
            self.stop(f"the layer '{event.value.name}' was removed")

    # ------------------------------------------------------------------------------------- model files
    def save_model(self, *_, path: str | None = None):
        """Save the current model (asks for a file name unless ``path`` is given); returns the path."""
        return save_current_model(NAME, self.native, path)

    def load_model(self, *_, path: str | None = None):
        """Load a model file as the current model (asks for the file unless ``path`` is given).

        Files are read safely by `napari_unet.load_model`: a foreign, damaged or malicious file is
        refused with a notification and nothing of it runs.
        """
        if self.running:  # the run's model becomes the current one at its end: the loaded one would be lost
            show_error(f"{NAME}: stop the training before loading a model (its model becomes the current one "
                       "when it ends); Segment with UNet can use a model file meanwhile")
            return None
        model = load_model_file(NAME, self.native, path)
        if model is not None:
            self.mode.value = model.mode
        return model

    def export_model(self, *_, path: str | None = None):
        """Export the current model as a bioimage.io package, as a background job (see `export_current_model`)."""
        return export_current_model(NAME, self.runner, self.native, path)

    # ------------------------------------------------------------------------------------- closing
    def _disconnect(self) -> None:
        if self._live is not None:  # its end is not shown once closing: stop watching the layers now
            self._live.close()
        STORE.changed.disconnect(self._on_model_changed, missing_ok=True)
        STORE.annotations_ready.disconnect(self._on_annotations_ready, missing_ok=True)


def _training(images, labels, settings, stop):
    """The training job (in the worker): `napari_unet.iter_train`, its events batched for the GUI."""
    from napari_unet.progress import batch_train_events
    from napari_unet.train import iter_train

    return batch_train_events(iter_train(images, labels, stop=stop, **settings))
