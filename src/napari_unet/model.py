"""The UNet (2D or 3D) and the `Model` bundle that carries it with everything prediction needs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["UNet", "Model", "halo_for_depth", "network_from_config"]


def halo_for_depth(depth: int) -> int:
    """Context (pixels) that makes a tile's centre exact, rounded up to a multiple of ``2**depth``.

    Each level ``l`` of the contraction and expansion path adds two 3x3 convolutions at a pixel pitch of
    ``2**l`` and each pooling adds ``2**l``; the bottleneck adds two at ``2**depth``. The sum is
    ``6 * 2**depth - 2`` (94 for depth 4), rounded up so tile origins stay aligned to the pooling grid.
    """
    step = 2**depth
    raw = 6 * step - 2
    return int(-(-raw // step) * step)


def _conv(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv3d


class _DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU ("same" padding)."""

    def __init__(self, dims: int, c_in: int, c_out: int):
        Conv = _conv(dims)
        Norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        super().__init__(
            Conv(c_in, c_out, 3, padding=1, bias=False), Norm(c_out), nn.ReLU(inplace=True),
            Conv(c_out, c_out, 3, padding=1, bias=False), Norm(c_out), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """The classic UNet: contraction blocks, a bottleneck and expansion blocks with skip connections.

    Parameters
    ----------
    dims : {2, 3}
        Spatial dimensionality.
    in_channels : int
        Number of input channels.
    num_classes : int
        Number of output channels (logits).
    depth : int
        Number of contraction (and expansion) blocks, i.e. of 2x2 poolings.
    base_channels : int
        Feature maps of the first block; they double at each level.

    Notes
    -----
    BatchNorm is used (in eval mode at inference) because its statistics do not depend on the extent of
    the input: tiled inference then matches whole-image inference exactly. Input sizes must be multiples
    of ``2**depth``; `napari_unet.predict` pads for you.
    """

    def __init__(self, dims: int = 2, in_channels: int = 1, num_classes: int = 2, depth: int = 4,
                 base_channels: int = 32):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth!r}")
        self.dims, self.depth = dims, depth
        Conv = _conv(dims)
        Pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        UpConv = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths[:-1]:
            self.down.append(_DoubleConv(dims, c, w))
            c = w
        self.pool = Pool(2)
        self.bottleneck = _DoubleConv(dims, widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(UpConv(widths[level + 1], widths[level], 2, stride=2))
            self.up_blocks.append(_DoubleConv(dims, 2 * widths[level], widths[level]))
        self.head = Conv(widths[0], num_classes, 1)
        self._init_weights()

    def _init_weights(self):
        # He initialization suits the ReLU stacks; torch's default (a=sqrt(5)) starts so small that some
        # seeds sit on a plateau for the first hundred steps, too long for a 60 s budget.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upconv, block in zip(self.up, self.up_blocks):
            x = torch.cat([skips.pop(), upconv(x)], dim=1)
            x = block(x)
        return self.head(x)


def network_from_config(config: dict) -> UNet:
    """Build the (untrained) network described by a model configuration."""
    return UNet(dims=config["dims"], in_channels=config["in_channels"], num_classes=config["num_classes"],
                depth=config["depth"], base_channels=config["base_channels"])


@dataclass
class Model:
    """A trained network plus what prediction needs: normalization, classes, mode and axes.

    Attributes
    ----------
    network : torch.nn.Module
        (N, C, *spatial) normalized float input -> (N, K, *spatial) logits.
    config : dict
        Plain-data description: ``dims``, ``depth``, ``base_channels``, ``in_channels``, ``num_classes``,
        ``mode`` ("semantic" or "instance"), ``class_ids`` (label value of each output channel),
        ``norm_low``/``norm_high`` (per-channel intensities mapped to 0 and 1), and training settings.
    history : list of dict
        Training log (one entry per validation/epoch point); saved with the model.
    """

    network: UNet
    config: dict
    history: list = field(default_factory=list)

    @property
    def dims(self) -> int:
        return int(self.config["dims"])

    @property
    def depth(self) -> int:
        return int(self.config["depth"])

    @property
    def mode(self) -> str:
        return str(self.config["mode"])

    @property
    def in_channels(self) -> int:
        return int(self.config["in_channels"])

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    @property
    def halo(self) -> int:
        """Context in pixels for exact tiling (see `halo_for_depth`)."""
        return halo_for_depth(self.depth)

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
        return normalize(arr, self.config["norm_low"], self.config["norm_high"])

    def describe(self) -> str:
        """A short human-readable summary (used by ``napari-unet info``)."""
        c = self.config
        params = sum(p.numel() for p in self.network.parameters())
        lines = [
            f"napari-unet model: {c['dims']}D UNet, depth {c['depth']}, base channels {c['base_channels']},"
            f" {params / 1e6:.2f} M parameters",
            f"mode: {c['mode']}; input channels: {c['in_channels']}; outputs: {c['num_classes']}"
            f" ({', '.join(str(n) for n in c.get('class_names', []))})",
            f"normalization: low {np.round(c['norm_low'], 3).tolist()}, high {np.round(c['norm_high'], 3).tolist()}",
            f"exact tiling halo: {self.halo} px",
        ]
        if c.get("trained_steps") is not None:
            lines.append(f"trained: {c['trained_steps']} steps, {c.get('trained_seconds', 0):.0f} s, "
                         f"best validation loss {c.get('best_val_loss')}")
        return "\n".join(lines)


def normalize(arr: np.ndarray, low, high) -> np.ndarray:
    """Map per-channel intensities ``low -> 0`` and ``high -> 1`` (float32, channel axis first)."""
    low = np.asarray(low, dtype=np.float32).reshape((-1,) + (1,) * (arr.ndim - 1))
    high = np.asarray(high, dtype=np.float32).reshape((-1,) + (1,) * (arr.ndim - 1))
    scale = 1.0 / np.maximum(high - low, 1e-6)
    out = arr.astype(np.float32, copy=True)
    out -= low
    out *= scale
    return out
