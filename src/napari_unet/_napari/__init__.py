"""The napari plugin: widgets, their job runner, reader, writer and sample data.

This is the only part of napari-unet that imports napari, Qt or magicgui; the widgets are thin
layers over the Qt-free core (`napari_unet.iter_train`, `napari_unet.predict.run_prediction`,
`napari_unet.segment_at`, `napari_unet.to_training_labels`, the event batching of
`napari_unet.progress`). Modules are imported lazily by napari through the manifest (``napari.yaml``).

_base            JobWidget: what both dock widgets share (viewer reference, runner, shutdown)
_jobs            Job and JobRunner: every background task (train, segment, click, annotations)
_train_widget    Train UNet
_segment_widget  Segment with UNet, with its collaborators:
  _segmentation  the segmentation layer and its typed state (SegmentationLayer, SegmentationState)
  _clicks        click to segment
  _annotations   "Use as annotations"
  _probabilities the probability layers
  _names         following renamed images
_pickers         layer, channel-axis and device pickers shared by the widgets
_model_files     saving and loading the current model; _dialogs the file dialogs
_layers          layer helpers (arrays to give the core, output arrays, geometry)
_store           the current model shared by the widgets
_plot, _lifecycle, _reader, _writer, _sample
"""
__all__ = ["TrainWidget", "SegmentWidget", "STORE"]


def __getattr__(name):  # lazy: importing the package must not start Qt
    if name == "TrainWidget":
        from ._train_widget import TrainWidget

        return TrainWidget
    if name == "SegmentWidget":
        from ._segment_widget import SegmentWidget

        return SegmentWidget
    if name == "STORE":
        from ._store import STORE

        return STORE
    raise AttributeError(name)
