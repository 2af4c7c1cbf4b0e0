"""The napari plugin: widgets, workers, reader, writer and sample data.

This is the only part of napari-unet that imports napari, Qt or magicgui; the widgets are thin
layers over the Qt-free core (`napari_unet.iter_train`, `napari_unet.iter_predict`). Modules are
imported lazily by napari through the manifest (``napari_unet/napari.yaml``).
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
