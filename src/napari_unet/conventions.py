"""Label conventions and the default network, stated once.

Semantic mode (sparse strokes, what people paint)
    0 = not annotated (no loss), 1..K = classes, and label 1 is the background by convention.
    Segmentations write each pixel's class id, with the background written as 0 so that a napari
    Labels layer shows only the objects.
Instance mode (dense masks)
    0 = background, every other id one object, every pixel annotated. The network learns three
    classes, background / interior / boundary, and prediction separates objects from them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["NOT_ANNOTATED", "BACKGROUND", "IGNORE", "INSTANCE_CLASS_IDS", "INSTANCE_CLASS_NAMES", "MODES",
           "DEFAULT_DEPTH", "DEFAULT_BASE_CHANNELS", "default_base_channels", "DEFAULT_TIME_BUDGET", "MAX_SEMANTIC_CLASSES", "interactive_network",
           "LOSSES", "DEFAULT_LOSS", "default_edge_weight", "INSTANCE_BOUNDARIES", "AUGMENTATIONS",
           "class_names", "written_labels", "labels_dtype_for"]

#: Semantic labels: a pixel nobody painted.
NOT_ANNOTATED = 0
#: Semantic labels: the painted id of the background class (written as 0 in segmentations).
BACKGROUND = 1
#: Training targets: pixels that carry no loss.
IGNORE = -1
#: Instance mode: the painted "class ids" of the three learned classes, and their names.
INSTANCE_CLASS_IDS = (0, 1, 2)
INSTANCE_CLASS_NAMES = ("background", "interior", "boundary")
MODES = ("semantic", "instance")

#: The default network of the API and the CLI. 16 base channels instead of the seed's 32: a CPU step
#: is 2.4x cheaper, and the quality targets need the steps a 60 s budget gives (README, "Defaults").
DEFAULT_DEPTH = 4
DEFAULT_BASE_CHANNELS = 16
#: Semantic mode: the most painted classes accepted unless asked for (more ids: instance masks, surely).
MAX_SEMANTIC_CLASSES = 16
#: Seconds of training when neither a time budget nor a number of epochs is given.
DEFAULT_TIME_BUDGET = 60.0
#: Training choices stored in a model's configuration (docs/training-quality.md): the loss, how the
#: instance boundary class is drawn, and the optional extra augmentations (the first of each: the default).
LOSSES = ("ce", "ce+dice")
#: The loss of a new model (benchmarks/results/training.md). Older model files without a stored loss were
#: trained with "ce" (the first of LOSSES), and read so.
DEFAULT_LOSS = "ce"


def default_edge_weight(mode: str, dims: int) -> float:
    """The outline weight of a new model (BENCHMARKS.md, fourth session): 3 for 2D instance models, where
    it found the faint nuclei an unlucky run missed and fitted outlines better; 1 for strokes (few
    outlines, lower click scores) and 3D models (weight 2 lost in 3D). Older files without one: 1."""
    return 3.0 if (mode, dims) == ("instance", 2) else 1.0


def default_base_channels(mode: str, dims: int, precision: str) -> int:
    """Feature maps of a new network's first level: 32 for 2D instance models (dense masks) where training
    runs in mixed precision (a GPU, a CPU with bf16 units), else `DEFAULT_BASE_CHANNELS`. There a bf16
    step of 32 channels costs 1.1x an fp32 step of 16, and in the same time it fitted outlines better
    (hard stand-in, five seeds: mean F1 0.845 against 0.807, F1@0.5 0.949 against 0.936); strokes and 3D
    models keep 16 (strokes lost with 32: BENCHMARKS.md, sixth and seventh sessions)."""
    return 32 if (mode, dims) == ("instance", 2) and precision != "fp32" else DEFAULT_BASE_CHANNELS


INSTANCE_BOUNDARIES = ("inner", "thick", "touching")
AUGMENTATIONS = ("elastic", "blur", "contrast")


def interactive_network(has_gpu: bool) -> tuple[int, int]:
    """(depth, base channels) the Train widget offers: 4/32 with a GPU, 3/16 on a CPU only.

    On a quiet 2-core CPU the 4/32 network manages about 70 steps in the default minute (foreground
    IoU 0.81 on the 512x512 sample) where 3/16 manages about 160 (IoU 0.92), and a click answers 2.4x
    faster: a new user's first Train must work well, and at once.
    """
    return (4, 32) if has_gpu else (3, 16)


def class_names(mode: str, class_ids: Sequence[int]) -> tuple[str, ...]:
    """Names of the output channels: instance classes, or "background" / "class N" for painted ids."""
    if mode == "instance":
        return INSTANCE_CLASS_NAMES
    return tuple("background" if int(c) == BACKGROUND else f"class {int(c)}" for c in class_ids)


def labels_dtype_for(max_label: int):
    """The smallest unsigned dtype (uint8, uint16) holding ``max_label``, else int64."""
    if max_label < 256:
        return np.dtype(np.uint8)
    if max_label < 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.int64)


def written_labels(class_ids: Sequence[int]) -> np.ndarray:
    """The label written for each output channel of a semantic model: its painted id, background as 0.

    Returns
    -------
    numpy.ndarray
        One value per channel, in the smallest dtype that holds them (`labels_dtype_for`).
    """
    lut = np.asarray([0 if int(c) == BACKGROUND else int(c) for c in class_ids], dtype=np.int64)
    return lut.astype(labels_dtype_for(int(lut.max(initial=0))))
