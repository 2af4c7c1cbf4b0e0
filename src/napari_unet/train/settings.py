"""What the caller asked for, validated and resolved once into a frozen `TrainSettings`."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .. import conventions as C
from ..data import AnnotatedItems, collect_annotated, compute_normalization
from ..device import compute_precision, resolve_device
from ..model import MAX_CONTEXT_PLANES, Model, ModelConfig, relative_spacing, xy_pool_levels_for

__all__ = ["TrainSettings", "resolve_settings", "default_patch_size", "default_batch_size",
           "default_learning_rate", "VALIDATION_FRACTION", "BORDER_BAND", "LOSSES"]

#: Defaults of `iter_train`: annotated blocks held out to pick the best model; the border band width (px).
VALIDATION_FRACTION = 0.15
BORDER_BAND = 3
#: Training losses (`napari_unet.train.masked_loss`): cross-entropy, or cross-entropy + soft Dice.
LOSSES = C.LOSSES


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run needs to know, resolved (no ``None`` left where a default applies).

    Attributes
    ----------
    mode : {"semantic", "instance"}
    dims : {2, 3}
        The network's (``init``'s when fine-tuning).
    device : torch.device
    time_budget : float or None
        Seconds; `resolve_settings` gives `DEFAULT_TIME_BUDGET` when neither this nor ``epochs`` is set.
    epochs : int or None
    seed : int or None
    channel_axis : int or None
    patch_size : tuple of int
        Aligned to ``2**depth`` and no larger than the largest annotated item needs.
    batch_size : int
    learning_rate : float
        The peak of the schedule.
    validation_fraction : float
    border_band : int
        As applied: 0 unless semantic labels with label 1 as background.
    class_ids : tuple of int
        Painted ids of the output channels (the labels' classes, or ``init``'s).
    config : ModelConfig
        The network to train: a new one (normalization from the images), or ``init``'s.
    init : Model or None
        The model fine-tuning starts from (never modified).
    loss : {"ce", "ce+dice"}
        The training (and validation) loss.
    edge_weight : float
        Cross-entropy weight of the pixels along class changes (1: none).
    instance_boundary : {"inner", "thick", "touching"}
        Instance mode: how the boundary class is drawn (`napari_unet.data.instance_targets`).
    augment : tuple of str
        The optional extra augmentations (`napari_unet.data.augment_extra`).
    precision : {"bf16", "fp16", "fp32"}
        Of the training steps (`napari_unet.device.compute_precision`); weights are always kept in fp32.
    """

    mode: str
    dims: int
    device: torch.device
    time_budget: float | None
    epochs: int | None
    seed: int | None
    channel_axis: int | None
    patch_size: tuple
    batch_size: int
    learning_rate: float
    validation_fraction: float
    border_band: int
    class_ids: tuple
    config: ModelConfig
    init: Model | None = None
    loss: str = "ce"
    edge_weight: float = 1.0
    instance_boundary: str = "inner"
    augment: tuple = ()
    precision: str = "fp32"

    @property
    def align(self) -> tuple:
        """Per spatial axis, patch sizes are multiples of this (`ModelConfig.size_multiples`)."""
        return self.config.size_multiples


def default_patch_size(dims: int, device: torch.device) -> tuple:
    """128 px in 2D on CPU, 256 px on CUDA, 64^3 in 3D."""
    if dims == 2:
        return (256,) * 2 if device.type == "cuda" else (128,) * 2
    return (64,) * 3


def default_batch_size(dims: int, device: torch.device) -> int:
    """8 patches in 2D (16 on CUDA), 2 in 3D."""
    return (16 if device.type == "cuda" else 8) if dims == 2 else 2


def default_learning_rate(fine_tuning: bool) -> float:
    """2e-3 for a new network, 1e-4 when fine-tuning (continuing at 5e-4 lost quality on some seeds: BENCHMARKS.md)."""
    return 1e-4 if fine_tuning else 2e-3


def _whole(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value > 0


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def _check_request(mode, dims, time_budget, epochs, init):
    """The checks that need no data (the first errors a caller sees)."""
    if mode not in C.MODES:
        raise ValueError(f"mode must be 'semantic' (sparse strokes) or 'instance' (dense masks), got {mode!r}")
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    if time_budget is not None:
        if isinstance(time_budget, bool) or not isinstance(time_budget, (int, float)) \
                or not math.isfinite(time_budget) or time_budget <= 0:
            raise ValueError(f"time budget must be a positive number of seconds, got {time_budget!r}")
    if epochs is not None and not _whole(epochs):
        raise ValueError(f"epochs must be a positive whole number, got {epochs!r}")
    if init is not None:
        if not isinstance(init, Model):
            raise TypeError("init must be a napari_unet Model (load one with napari_unet.load_model)")
        if init.mode != mode:
            raise ValueError(f"the model to continue from was trained in {init.mode!r} mode, not {mode!r}")


def _check_seed(seed) -> None:
    # numpy and torch refuse these with messages of their own, after the data are prepared
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or not 0 <= seed < 2**63):
        raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1 (or None), got {seed!r}")


def _check_optional(batch_size, learning_rate, validation_fraction, border_band):
    if batch_size is not None and not _whole(batch_size):
        raise ValueError(f"batch_size must be a positive whole number, got {batch_size!r}")
    if learning_rate is not None and not (_number(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
    if not (_number(validation_fraction) and 0 <= validation_fraction < 1):
        raise ValueError(f"validation_fraction must be at least 0 and below 1, got {validation_fraction!r}")
    if isinstance(border_band, bool) or not isinstance(border_band, (int, np.integer)) or border_band < 0:
        raise ValueError(f"border_band must be a whole number of pixels (0 disables it), got {border_band!r}")


def _resolve_classes(mode, seen, init, max_classes=C.MAX_SEMANTIC_CLASSES) -> tuple:
    """Output classes: the painted ones, ``init``'s (refusing new ones), or the instance classes."""
    if mode == "instance":
        return tuple(C.INSTANCE_CLASS_IDS)
    if isinstance(max_classes, bool) or not isinstance(max_classes, (int, np.integer)) or max_classes < 2:
        raise ValueError(f"max_classes must be a whole number of at least 2, got {max_classes!r}")
    if len(seen) > max_classes:
        shown = ", ".join(map(str, seen[:5]))
        raise ValueError(f"the labels have {len(seen)} different ids ({shown}, ...): that looks like instance masks "
                         f"(one id per object), which mode='instance' is for; to train {len(seen)} classes on "
                         f"purpose, pass max_classes={len(seen)}")
    if init is not None:
        class_ids = tuple(init.config.class_ids)
        unknown = sorted(set(seen) - set(class_ids))
        if unknown:
            raise ValueError(f"labels contain class {unknown} that the model was not trained for (its classes"
                             f" are {list(class_ids)}): train a new model to add classes")
        return class_ids
    if len(seen) < 2:
        # a segmentation writes background as 0, which here means "not annotated"
        hint = "" if seen[0] == C.BACKGROUND else (" (a segmentation as labels? its background is 0, 'not annotated': "
                                                  "convert it with napari_unet.interactive.to_training_labels)")
        raise ValueError(f"only one class is painted (label {seen[0]}): paint at least two, e.g. 1 "
                         f"for background and 2 for objects{hint}")
    return tuple(seen)


def resolve_context_planes(context_planes, dims: int, init=None) -> int:
    """The neighbouring planes a 2D model reads on each side of a plane: as asked, else ``init``'s, else 0."""
    if init is not None:
        if context_planes is not None and context_planes != init.config.context_planes:
            raise ValueError(f"the model to continue from reads {init.config.context_planes} context plane(s) on "
                             "each side: leave context_planes out (it is part of the network)")
        return init.config.context_planes
    if context_planes is None:
        return 0
    if isinstance(context_planes, bool) or not isinstance(context_planes, (int, np.integer)) \
            or not 0 <= context_planes <= MAX_CONTEXT_PLANES:
        raise ValueError(f"context_planes must be a whole number from 0 to {MAX_CONTEXT_PLANES}, "
                         f"got {context_planes!r}")
    if context_planes and dims != 2:
        raise ValueError("context_planes is for 2D models on stacks (a 3D model sees its neighbouring planes "
                         "already): leave it out, or train with dims=2")
    return int(context_planes)


def _resolve_config(annotated: AnnotatedItems, mode, dims, depth, base_channels, class_ids, init,
                    spacing=None, background=None, context_planes=0) -> ModelConfig:
    """``init``'s configuration, or a new network's with the images' normalization (and voxel spacing,
    background window)."""
    spacing = None if spacing is None else relative_spacing(spacing, dims)
    if init is not None:
        if init.in_channels != annotated.n_channels:
            raise ValueError(f"the model takes {init.in_channels} channel(s) but the images have "
                             f"{annotated.n_channels}")
        if spacing is not None and spacing != (init.config.spacing or (1.0,) * dims):
            raise ValueError(f"the model to continue from was trained for voxel spacing "
                             f"{list(init.config.spacing or (1.0,) * dims)}, not {list(spacing)}: leave spacing out")
        if background is not None and background != init.config.background:
            raise ValueError(f"the model to continue from subtracts "
                             + (f"the background over {init.config.background} px" if init.config.background
                                else "no background") + ": leave background out (it is part of the network)")
        return init.config
    for name, v in (("depth", depth), ("base_channels", base_channels)):
        if not _whole(v):
            raise ValueError(f"{name} must be a positive whole number, got {v!r}")
    low, high = compute_normalization([(img, idx) for img, _, idx in annotated.items])
    return ModelConfig(mode=mode, dims=dims, depth=depth, base_channels=base_channels,
                       in_channels=annotated.n_channels, class_ids=tuple(class_ids), norm_low=tuple(low),
                       norm_high=tuple(high), spacing=spacing, background=background, context_planes=context_planes,
                       xy_pool_levels=xy_pool_levels_for(spacing, depth) if spacing and dims == 3 else 0)


def _resolve_patch(patch_size, dims, device, align, item_shapes) -> tuple:
    """The asked (or default) patch, each axis rounded up to its multiple in ``align`` (per axis), then
    shrunk to the largest item (rounded up the same way)."""
    if patch_size is None:
        patch = default_patch_size(dims, device)
    else:
        patch = (patch_size,) * dims if np.isscalar(patch_size) else tuple(patch_size)
        if len(patch) != dims or any(int(p) < a for p, a in zip(patch, align)):
            least = align[0] if len(set(align)) == 1 else list(align)
            raise ValueError(f"patch_size must be {dims} sizes of at least {least} px, got {patch_size!r}")
    largest = np.max(np.array(item_shapes), axis=0)
    return tuple(int(-(-min(int(p), int(s)) // a) * a) for p, s, a in zip(patch, largest, align))


def resolve_settings(images, labels, *, mode="semantic", dims=2, depth=C.DEFAULT_DEPTH,
                     base_channels=None, time_budget=None, epochs=None, init=None,
                     device="auto", seed=None, channel_axis=None, patch_size=None, batch_size=None,
                     learning_rate=None, validation_fraction=VALIDATION_FRACTION, border_band=BORDER_BAND,
                     max_classes=C.MAX_SEMANTIC_CLASSES, loss=None, edge_weight=None, instance_boundary=None,
                     augment=None, spacing=None, mixed_precision=None, background=None, context_planes=None):
    """Validate a training request and resolve its defaults, once.

    Parameters are those of `napari_unet.train.iter_train` (``stop`` aside).

    Returns
    -------
    (TrainSettings, AnnotatedItems)
        The settings, and the annotated items of the images (`napari_unet.data.collect_annotated`).

    Raises
    ------
    ValueError, TypeError
        Naming the parameter (or the labels) to fix.
    """
    _check_request(mode, dims, time_budget, epochs, init)
    _check_seed(seed)
    _check_optional(batch_size, learning_rate, validation_fraction, border_band)
    choices = resolve_choices(init, mode, dims, loss=loss, edge_weight=edge_weight, instance_boundary=instance_boundary,
                              augment=augment)
    if init is not None:
        dims = init.dims
    dev = resolve_device(device)
    precision = compute_precision(dev, mixed_precision)
    if base_channels is None:
        base_channels = C.default_base_channels(mode, dims, precision)
    if time_budget is None and epochs is None:
        time_budget = C.DEFAULT_TIME_BUDGET
    context = resolve_context_planes(context_planes, dims, init)
    annotated = collect_annotated(images, labels, dims, channel_axis, mode, context)
    class_ids = _resolve_classes(mode, annotated.classes, init, max_classes)
    config = _resolve_config(annotated, mode, dims, depth, base_channels, class_ids, init, spacing, background,
                             context)
    patch = _resolve_patch(patch_size, dims, dev, config.size_multiples, annotated.item_shapes)
    band = border_band if (mode == "semantic" and class_ids[0] == C.BACKGROUND) else 0
    settings = TrainSettings(
        mode=mode, dims=dims, device=dev, time_budget=None if time_budget is None else float(time_budget),
        epochs=None if epochs is None else int(epochs), seed=seed, channel_axis=channel_axis, patch_size=patch,
        batch_size=int(batch_size) if batch_size is not None else default_batch_size(dims, dev),
        learning_rate=float(learning_rate) if learning_rate is not None else default_learning_rate(init is not None),
        validation_fraction=float(validation_fraction), border_band=int(band), class_ids=class_ids,
        config=config, init=init, precision=precision, **choices)
    return settings, annotated


def resolve_choices(init=None, mode="semantic", dims=2, **asked) -> dict:
    """The training choices (loss, edge_weight, instance_boundary, augment): as asked, else ``init``'s
    (fine-tuning goes on as the model was trained), else the library's defaults for a new ``mode``/``dims`` model; checked."""
    base = init.config if init is not None else ModelConfig()
    # a new model's defaults are stated in conventions; ModelConfig's defaults are what older files mean
    new = dict(loss=C.DEFAULT_LOSS, edge_weight=C.default_edge_weight(mode, dims))
    defaults = dict(asdict(base), **({} if init is not None else new))
    out = {k: defaults[k] if v is None else v for k, v in asked.items()}
    if isinstance(out["augment"], str):
        out["augment"] = tuple(a.strip() for a in out["augment"].split(",") if a.strip() not in ("", "none"))
    try:
        # ModelConfig checks them, once, in one place
        checked = replace(base, **out)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    return {k: getattr(checked, k) for k in out}
