"""The `Model` bundle: the UNet (`napari_unet.unet`) with its configuration and everything prediction needs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from . import conventions
from .unet import UNet, background_windows

__all__ = ["UNet", "Model", "ModelConfig", "halo_for_depth", "network_from_config", "network_kwargs",
           "xy_pool_levels_for"]


def halo_for_depth(depth: int, extra: int = 0) -> int:
    """Context (pixels) that makes a tile's centre exact, rounded up to a multiple of ``2**depth``.

    Each level ``l`` of the contraction and expansion path adds two 3x3 convolutions at a pixel pitch of
    ``2**l`` and each pooling adds ``2**l``; the bottleneck adds two at ``2**depth``. The sum is
    ``6 * 2**depth - 2`` (94 for depth 4), plus ``extra`` (a `LocalBackground`'s reach), rounded up so
    tile origins stay aligned to the pooling grid.
    """
    step = 2**depth
    raw = 6 * step - 2 + int(extra)
    return int(-(-raw // step) * step)


def network_kwargs(config: "ModelConfig") -> dict:
    """The `UNet` arguments of a configuration (also what a bioimage.io package's rdf passes)."""
    kwargs = dict(dims=config.dims, in_channels=config.in_channels, num_classes=config.num_classes,
                  depth=config.depth, base_channels=config.base_channels)
    if config.xy_pool_levels:  # left out otherwise: packages of isotropic networks stay as they were
        kwargs["xy_pool_levels"] = config.xy_pool_levels
    if config.background:
        kwargs["background"] = background_windows(config.background, config.spacing, config.dims)
    return kwargs


def network_from_config(config: "ModelConfig") -> UNet:
    """Build the (untrained) network described by a model configuration."""
    return UNet(**network_kwargs(config))


def xy_pool_levels_for(spacing, depth: int) -> int:
    """Poolings in Y and X only before Z is pooled too, for a (Z, Y, X) voxel ``spacing`` (nnU-Net's rule).

    While the features' Z pitch is at least twice their XY pitch, a level pools Y and X only (which
    doubles their pitch); then every axis is pooled. (3, 1, 1) gives 1, (5, 1, 1) gives 2, (1.5, 1, 1) 0.
    """
    z, xy = float(spacing[0]), float(min(spacing[1:]))
    levels = 0
    while levels < depth and z >= 2 * xy:
        xy *= 2
        levels += 1
    return levels


def _whole(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def _numbers(name: str, values, n: int) -> tuple:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of {n} numbers, got {values!r}") from None
    if len(out) != n or not all(np.isfinite(out)):
        raise ValueError(f"{name} must be {n} finite number(s) (one per input channel), got {values!r}")
    return out


#: `ModelConfig` fields newer than the first model files, with the defaults that `to_dict` leaves out.
#: The training arithmetics a configuration records (`ModelConfig.precision`).
PRECISIONS = ("fp32", "bf16", "fp16")
#: The most neighbouring planes on each side a 2D model may read with each plane (`ModelConfig.context_planes`).
MAX_CONTEXT_PLANES = 8
_LATER_FIELDS = {"spacing": None, "xy_pool_levels": 0, "loss": "ce", "edge_weight": 1.0, "instance_boundary": "inner",
                 "augment": [], "precision": None, "background": None, "context_planes": 0}  # as to_dict writes them (lists for tuples)


@dataclass(frozen=True)
class ModelConfig:
    """What a model is: architecture, task, normalization, and how it was trained. Frozen and typed.

    Build one with keywords (every field but ``mode`` has a default, from `napari_unet.conventions`);
    derive a changed copy with `dataclasses.replace`. Invalid values raise ValueError at construction,
    so a configuration read from a file is checked before any network is built.

    Attributes
    ----------
    dims, depth, base_channels, in_channels : int
        The network: 2D or 3D, poolings, feature maps of the first level, input channels.
    mode : {"semantic", "instance"}
    class_ids : tuple of int
        Painted label id of each output channel (instance models: `conventions.INSTANCE_CLASS_IDS`).
    class_names : tuple of str
        One name per output channel (default from `conventions.class_names`).
    norm_low, norm_high : tuple of float
        Per-channel intensities mapped to 0 and 1 by `Model.preprocess` (default: the identity).
    trained_steps, trained_seconds, best_val_loss, patch_size, batch_size, learning_rate, border_band
        The training record (summed over fine-tuning runs for steps and seconds).
    spacing : tuple of float or None
        Voxel size per spatial axis relative to the finest one (``(3, 1, 1)``: planes 3 px apart), as
        declared at training; instance post-processing measures distances with it. None: isotropic.
    xy_pool_levels : int
        3D: poolings in Y and X only before Z is pooled (`UNet`; from ``spacing`` by `xy_pool_levels_for`).
    loss, edge_weight, instance_boundary, augment
        The training choices of the last run (docs/training-quality.md): loss (`conventions.LOSSES`),
        cross-entropy weight along class changes, how the instance boundary class is drawn
        (`conventions.INSTANCE_BOUNDARIES`), extra augmentations (`conventions.AUGMENTATIONS`). Files
        written before they were stored read as the defaults, which is what those models were trained with
        unless ``loss="ce+dice"`` was asked for.
    background : int or None
        Window (px along the finest axis, odd) of the local background the network subtracts from its
        input (`napari_unet.unet.LocalBackground`): for uneven illumination. None: none subtracted.
    context_planes : int
        2D models: neighbouring planes on each side that the network reads with each plane of a stack, as
        extra input channels (2.5D; `napari_unet.data.PlaneContext`). ``in_channels`` counts them: the
        image's channels times ``2 * context_planes + 1``. 0: each plane alone.
    precision : {"fp32", "bf16", "fp16"} or None
        The arithmetic of the last training run (bf16 / fp16: mixed precision, `device.compute_precision`);
        None when not recorded (never trained, or trained before it was).
    """

    mode: str = "semantic"
    dims: int = 2
    depth: int = conventions.DEFAULT_DEPTH
    base_channels: int = conventions.DEFAULT_BASE_CHANNELS
    in_channels: int = 1
    class_ids: tuple = (conventions.BACKGROUND, 2)
    class_names: tuple = ()
    norm_low: tuple = ()
    norm_high: tuple = ()
    trained_steps: int = 0
    trained_seconds: float = 0.0
    best_val_loss: float | None = None
    patch_size: tuple | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    border_band: int = 0
    spacing: tuple | None = None
    xy_pool_levels: int = 0
    loss: str = conventions.LOSSES[0]
    edge_weight: float = 1.0
    instance_boundary: str = conventions.INSTANCE_BOUNDARIES[0]
    augment: tuple = ()
    precision: str | None = None
    background: int | None = None
    context_planes: int = 0

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        if self.mode not in conventions.MODES:
            raise ValueError(f"mode must be 'semantic' or 'instance', got {self.mode!r}")
        if self.dims not in (2, 3) or isinstance(self.dims, bool):
            raise ValueError(f"dims must be 2 or 3, got {self.dims!r}")
        put("dims", int(self.dims))
        put("depth", _whole("depth", self.depth, 1, 8))
        put("base_channels", _whole("base_channels", self.base_channels, 1, 1024))
        put("in_channels", _whole("in_channels", self.in_channels, 1, 1024))
        ids = self.class_ids if self.mode == "semantic" else conventions.INSTANCE_CLASS_IDS
        try:
            ids = tuple(_whole("a class id", c, 0, 2**31 - 1) for c in ids)
        except TypeError:
            raise ValueError(f"class_ids must be a list of label ids, got {self.class_ids!r}") from None
        if len(ids) < 2 or len(set(ids)) != len(ids):
            raise ValueError(f"class_ids must be at least two different label ids, got {list(ids)}")
        if self.mode == "semantic" and conventions.NOT_ANNOTATED in ids:
            raise ValueError("class_ids of a semantic model cannot include 0, which means 'not annotated'")
        put("class_ids", ids)
        names = tuple(str(n) for n in self.class_names) or conventions.class_names(self.mode, ids)
        if len(names) != len(ids):
            raise ValueError(f"class_names has {len(names)} names for {len(ids)} classes")
        put("class_names", names)
        n = self.in_channels
        put("norm_low", _numbers("norm_low", self.norm_low or (0.0,) * n, n))
        put("norm_high", _numbers("norm_high", self.norm_high or (1.0,) * n, n))
        if any(hi <= lo for lo, hi in zip(self.norm_low, self.norm_high)):  # would divide by ~0 or flip contrast
            raise ValueError(f"norm_high must be above norm_low in every channel, got low {list(self.norm_low)} "
                             f"and high {list(self.norm_high)}")
        put("trained_steps", _whole("trained_steps", self.trained_steps, 0, 2**62))
        put("trained_seconds", float(self.trained_seconds))
        if self.patch_size is not None:
            put("patch_size", tuple(_whole("a patch size", p, 1, 2**16) for p in self.patch_size))
        if self.spacing is not None:
            put("spacing", relative_spacing(self.spacing, self.dims))
        put("xy_pool_levels", _whole("xy_pool_levels", self.xy_pool_levels, 0, self.depth if self.dims == 3 else 0))
        if self.background is not None:
            put("background", _whole("background", self.background, 3, 1023) | 1)  # odd: centred on its pixel
        put("context_planes", _whole("context_planes", self.context_planes, 0, MAX_CONTEXT_PLANES))
        if self.context_planes and (self.dims != 2 or self.in_channels % (2 * self.context_planes + 1)):
            raise ValueError("context_planes is for 2D models, whose input channels are the image's channels "
                             f"times 2 * context_planes + 1; got a {self.dims}D model with {self.in_channels} "
                             "input channel(s)")
        self._check_choices(put)

    def _check_choices(self, put):
        for name, allowed in (("loss", conventions.LOSSES), ("instance_boundary", conventions.INSTANCE_BOUNDARIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {getattr(self, name)!r}")
        w = self.edge_weight
        if isinstance(w, bool) or not isinstance(w, (int, float, np.number)) or not (np.isfinite(w) and w >= 1):
            raise ValueError(f"edge_weight must be a number of at least 1 (1: no extra weight), got {w!r}")
        put("edge_weight", float(w))
        aug = (self.augment,) if isinstance(self.augment, str) else tuple(self.augment)
        unknown = [a for a in aug if a not in conventions.AUGMENTATIONS]
        if unknown:
            raise ValueError(f"augment must name some of {', '.join(conventions.AUGMENTATIONS)}, got {unknown}")
        put("augment", tuple(a for a in conventions.AUGMENTATIONS if a in aug))  # one order, no repeats
        if self.precision not in (None, *PRECISIONS):
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (or None), got {self.precision!r}")

    @property
    def num_classes(self) -> int:
        """Output channels of the network (one per class id)."""
        return len(self.class_ids)

    @property
    def image_channels(self) -> int:
        """Channels of the images the model takes (``in_channels`` without the context planes)."""
        return self.in_channels // (2 * self.context_planes + 1)

    @property
    def size_multiples(self) -> tuple:
        """Per spatial axis, what a network input's size must be a multiple of (one pixel at the deepest
        level): ``2**depth``, but Z only ``2**(depth - xy_pool_levels)`` in 3D, since Z is pooled fewer times."""
        z = 2 ** (self.depth - self.xy_pool_levels)
        return (z,) + (2 ** self.depth,) * 2 if self.dims == 3 else (2 ** self.depth,) * 2

    def to_dict(self) -> dict:
        """Plain JSON-ready data (tuples as lists), as stored in model files.

        The fields added after 0.1 are left out while they hold their defaults, so that a file of an
        isotropic model still opens in the versions before them.
        """
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        for name, default in _LATER_FIELDS.items():
            if data[name] == default:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """The configuration stored in a model file; ValueError for unknown keys or invalid values."""
        if not isinstance(data, dict):
            raise ValueError(f"the configuration must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        # 0.1 files also stored the derivable num_classes (checked) and a format_version (the file's own)
        data = dict(data)
        num_classes = data.pop("num_classes", None)
        data.pop("format_version", None)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown configuration key(s) {', '.join(unknown)}: written by a newer napari-unet?")
        config = cls(**data)
        if num_classes is not None and num_classes != config.num_classes:
            raise ValueError(f"num_classes is {num_classes!r} but there are {config.num_classes} class ids")
        return config


@dataclass
class Model:
    """A trained network plus what prediction needs: normalization, classes, mode and axes.

    Attributes
    ----------
    network : torch.nn.Module
        (N, C, *spatial) normalized float input -> (N, K, *spatial) logits.
    config : ModelConfig
        Architecture, task, normalization and the training record.
    history : list of dict
        Training log (one entry per validation point); saved with the model.
    """

    network: UNet
    config: ModelConfig
    history: list = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(self.config).__name__}")

    @classmethod
    def untrained(cls, config: ModelConfig | None = None, *, seed: int | None = None, **fields_) -> "Model":
        """A model with freshly initialized weights (in eval mode): for tests, benchmarks, training.

        Parameters
        ----------
        config : ModelConfig, optional
            The configuration; or give its fields as keywords (``Model.untrained(dims=3, depth=2)``).
        seed : int, optional
            Seeds the initialization.
        """
        if config is None:
            config = ModelConfig(**fields_)
        elif fields_:
            config = replace(config, **fields_)
        if seed is not None:
            torch.manual_seed(seed)
        return cls(network_from_config(config).eval(), config)

    @property
    def dims(self) -> int:
        return self.config.dims

    @property
    def depth(self) -> int:
        return self.config.depth

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def halo(self) -> int:
        """Context in pixels for exact tiling (see `halo_for_depth`), the background's reach included."""
        return halo_for_depth(self.depth, self.background_reach)

    def for_prepared_input(self) -> "Model":
        """This network for inputs whose channels already hold each plane's context planes (a window read
        through `napari_unet.data.as_channels_first` with ``context_planes``); the model itself without them."""
        if not self.config.context_planes:
            return self
        return Model(self.network, replace(self.config, context_planes=0), self.history)

    @property
    def background_reach(self) -> int:
        """Context in pixels the subtracted background needs (`napari_unet.unet.LocalBackground`); 0 without."""
        reach = getattr(getattr(self.network, "background", None), "reach", None)
        return int(reach()) if reach is not None else 0

    def preprocess(self, image: Any) -> np.ndarray:
        """Normalize one item as the network expects it.

        Parameters
        ----------
        image : array-like
            ``(C, *spatial)`` with ``C == in_channels`` (any dtype; dask/zarr are read).

        Returns
        -------
        numpy.ndarray
            float32 ``(C, *spatial)``: intensities mapped with the percentiles stored at training time.
        """
        arr = np.asarray(image)
        if arr.ndim != self.dims + 1 or arr.shape[0] != self.in_channels:
            raise ValueError(
                f"preprocess expects (channels={self.in_channels}, {self.dims} spatial axes), got shape "
                f"{arr.shape}")
        return normalize(arr, self.config.norm_low, self.config.norm_high)

    def describe(self) -> str:
        """A short human-readable summary (used by ``napari-unet info``)."""
        c = self.config
        params = sum(p.numel() for p in self.network.parameters())
        lines = [
            f"napari-unet model: {c.dims}D UNet, depth {c.depth}, base channels {c.base_channels},"
            f" {params / 1e6:.2f} M parameters",
            f"mode: {c.mode}; input channels: {c.in_channels}; outputs: {c.num_classes} ({', '.join(c.class_names)})",
            f"normalization: low {np.round(c.norm_low, 3).tolist()}, high {np.round(c.norm_high, 3).tolist()}",
            f"exact tiling halo: {self.halo} px",
        ]
        if c.spacing is not None or c.xy_pool_levels:
            lines.insert(1, f"voxel spacing (Z, Y, X, relative): {list(c.spacing or (1.0,) * c.dims)}; "
                            f"poolings in Y and X only: {c.xy_pool_levels}")
        if c.background:
            lines.insert(-1, f"background: subtracted, estimated over {c.background} px windows")
        if c.context_planes:
            lines.insert(-1, f"context planes: each plane of a stack is read with {c.context_planes} plane(s) "
                             f"above and below it ({c.image_channels} image channel(s) x {2 * c.context_planes + 1})")
        if c.trained_steps:
            lines.append(f"trained: {c.trained_steps} steps, {c.trained_seconds:.0f} s, "
                         f"best validation loss {c.best_val_loss}" + (f", last run in {c.precision}" if c.precision else ""))
            lines.append(f"training choices: loss {c.loss}, edge weight {c.edge_weight:g}, "
                         + (f"boundary {c.instance_boundary}, " if c.mode == "instance" else "")
                         + f"extra augmentation {', '.join(c.augment) or 'none'}")
        return "\n".join(lines)


def relative_spacing(spacing, dims: int) -> tuple:
    """A voxel size (any unit) as floats relative to its finest axis; ValueError unless ``dims`` positive numbers."""
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != dims or not all(np.isfinite(values)) or min(values) <= 0:
        raise ValueError(f"spacing must be {dims} positive voxel sizes, one per spatial axis (e.g. (3, 1, 1) "
                         f"for planes 3 px apart), got {spacing!r}")
    return tuple(round(v / min(values), 6) for v in values)


def spacing_from_scales(scales, dims: int):
    """The voxel spacing a new model trains with, from its images' voxel sizes (napari layers' ``scale``).

    Parameters
    ----------
    scales : sequence of sequences of float
        One voxel size per image (its last ``dims`` entries are the spatial axes).
    dims : int

    Returns
    -------
    tuple of float or None
        `relative_spacing` of the common voxel size; None for 2D or isotropic voxels.

    Raises
    ------
    ValueError
        When the images have different voxel sizes.
    """
    if dims != 3:
        return None
    found = {relative_spacing(tuple(s)[-dims:], dims) for s in scales if len(s) >= dims}  # else: not 3D images
    if len(found) > 1:
        raise ValueError(f"the images have different voxel sizes {sorted(found)}: train on images of one voxel size "
                         "(or set the layers' scale alike)")
    spacing = found.pop() if found else None
    return None if dims != 3 or spacing is None or len(set(spacing)) == 1 else spacing


def normalize(arr: np.ndarray, low, high) -> np.ndarray:
    """Map per-channel intensities ``low -> 0`` and ``high -> 1`` (float32, channel axis first)."""
    low = np.asarray(low, dtype=np.float32).reshape((-1,) + (1,) * (arr.ndim - 1))
    high = np.asarray(high, dtype=np.float32).reshape((-1,) + (1,) * (arr.ndim - 1))
    scale = 1.0 / np.maximum(high - low, 1e-6)
    out = arr.astype(np.float32, copy=True)
    out -= low
    out *= scale
    return out
