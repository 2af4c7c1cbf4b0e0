"""From (image, labels) pairs to training data, in three stages.

`inputs`
    Labels checked, images as lazy channels-first views, annotated items collected, normalization.
`targets`
    Labels -> class targets (semantic ids, instance background / interior / boundary), the border
    band, held-out validation blocks.
`patches`
    Patch sampling and augmentation.

The label conventions themselves are stated once, in `napari_unet.conventions`.
"""
from ..conventions import IGNORE, INSTANCE_CLASS_NAMES as INSTANCE_CLASSES
from .inputs import (AnnotatedItems, ChannelsFirst, as_channels_first, check_labels, collect_annotated,
                     compute_normalization, iter_items)
from .patches import PatchSampler, augment_patch, crop_patch
from .targets import TrainItem, add_border_band, instance_targets, prepare_items, semantic_targets

__all__ = [
    "IGNORE", "INSTANCE_CLASSES", "check_labels", "ChannelsFirst", "as_channels_first", "iter_items",
    "compute_normalization", "AnnotatedItems", "collect_annotated", "semantic_targets", "instance_targets",
    "add_border_band", "TrainItem", "prepare_items", "PatchSampler", "crop_patch", "augment_patch",
]
