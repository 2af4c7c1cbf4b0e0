"""napari-unet: train a UNet on painted annotations and segment large microscopy stacks.

The core (this package) imports no Qt, napari or magicgui; the napari plugin lives in
``napari_unet._napari``.
"""
__version__ = "0.1.0"

from .model import Model, ModelConfig, UNet
from .interactive import SegmentHit, segment_at, to_training_labels
from .modelfile import load_model, save_model
from .predict import iter_predict, predict, segment
from .train import iter_train, train

__all__ = ["__version__", "Model", "ModelConfig", "UNet", "train", "iter_train", "predict", "segment", "iter_predict",
           "save_model", "load_model", "segment_at", "SegmentHit", "to_training_labels"]
