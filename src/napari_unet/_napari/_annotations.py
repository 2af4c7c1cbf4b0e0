""""Use as annotations": the Segment widget turns a (corrected) segmentation into training labels."""
from __future__ import annotations

import weakref
from functools import partial

import numpy as np
from napari.utils.notifications import show_info, show_warning

from napari_unet.conventions import BACKGROUND
from napari_unet.interactive import to_training_labels

from ._layers import level0, same_layer, segmentation_name, spatial_geometry
from ._lifecycle import weak_method
from ._segmentation import SegmentationLayer
from ._store import STORE

__all__ = ["Annotations"]


class Annotations:
    """Makes the layer ``"<image> annotations (corrected)"`` from an image's segmentation, in a job of
    the widget's runner, and offers it to Train UNet (`STORE.annotations_ready`).

    Parameters
    ----------
    widget : SegmentWidget
        Gives the viewer, the chosen image and model, the runner and the status line (held weakly).
    """

    def __init__(self, widget):
        self._widget = weakref.ref(widget)

    def start(self):
        """Start the conversion; returns its `Job`. Raises ValueError when there is nothing to convert."""
        widget = self._widget()
        image = widget.image.value
        if image is None:
            raise ValueError("choose the image whose segmentation you corrected")
        if widget.running:  # it would read a layer the run is writing, or one about to be replaced
            raise ValueError("a segmentation is running: wait for it to finish (or cancel it), then use the "
                             "result as annotations")
        seg = SegmentationLayer.find(widget.viewer, image)
        if seg is None:
            raise ValueError(f"there is no '{segmentation_name(image.name)}' layer yet: segment the image first")
        state, model = seg.state, widget.current_model()
        if state is not None:
            mode, class_ids, covered, clicks = state.mode, state.class_ids, state.covered, dict(state.click_classes)
        else:  # a layer from elsewhere: taken as fully segmented by the current model
            mode = model.mode if model is not None else "semantic"
            class_ids = model.config.class_ids if model is not None else (BACKGROUND, BACKGROUND + 1)
            covered, clicks = None, {}
        if covered is not None and mode == "instance":
            show_warning(f"{widget.NAME}: only part of '{seg.layer.name}' was segmented (clicks or a cancelled run); "
                         "instance annotations count every unlabelled pixel as background: segment the whole "
                         "image first if objects are missing")
        work = partial(_convert, level0(seg.layer.data), mode, class_ids, clicks, covered)
        job = widget.runner.start("annotations", work, layers=[image, seg.layer],
                                  on_result=weak_method(self._add, image, seg.layer, mode, covered is None))
        widget.status.value = "converting the segmentation into annotations…"
        return job

    def _add(self, image, seg_layer, mode, whole, job, labels) -> None:
        widget = self._widget()
        viewer = widget.viewer if widget is not None else None
        if viewer is None or job.stopped:
            return
        if not any(same_layer(image, layer) for layer in viewer.layers):
            show_info(f"{widget.NAME}: the image was removed; no annotations made")
            return
        new = viewer.add_labels(labels, name=f"{image.name} annotations (corrected)",
                                **spatial_geometry(seg_layer, None))  # drawn where the segmentation is
        seg_layer.visible = False  # the new layer covers it; one editable layer at a time is less confusing
        if mode == "instance":
            what = "one id per object, 0 background"
        elif whole:
            what = "objects are class ids, the rest background (1)"
        else:
            what = "objects are class ids, the rest of the segmented windows background (1), elsewhere not annotated"
        widget.status.value = f"'{new.name}' made ({what}); retrain with Train UNet"
        show_info(f"{widget.NAME}: '{new.name}' is ready to train on ({what})")
        STORE.annotations_ready.emit(image, new, mode)


def _convert(segmentation, mode, class_ids, click_classes, covered, stop):
    """The conversion job (in the worker; a lazy segmentation is read whole)."""
    return to_training_labels(np.asarray(segmentation), mode, class_ids, click_classes, covered=covered)
