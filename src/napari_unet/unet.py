"""The network: the classic UNet (2D or 3D), in a file that needs nothing but torch.

This file is shipped as it is inside the bioimage.io packages that ``napari-unet export`` writes (their
``pytorch_state_dict`` weights name `UNetProbabilities` from it), so it imports nothing from napari-unet
but its defaults, and those only when it is part of the package.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

try:
    from .conventions import DEFAULT_BASE_CHANNELS, DEFAULT_DEPTH
except ImportError:  # this file alone, as a bioimage.io package ships it: its rdf passes every argument
    DEFAULT_DEPTH, DEFAULT_BASE_CHANNELS = 4, 16

__all__ = ["UNet", "UNetProbabilities", "LocalBackground", "background_windows"]


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


def background_windows(size: int, spacing: Optional[Sequence[float]], dims: int) -> List[int]:
    """`LocalBackground`'s odd window per axis for ``size`` px along the finest axis (fewer planes along
    an axis whose voxels are ``spacing`` times larger)."""
    spacing = list(spacing) if spacing is not None else [1.0] * dims
    return [max(1, int(round(size / float(s)))) | 1 for s in spacing]


class LocalBackground(nn.Module):
    """Subtracts a smooth estimate of the local background from each channel (no weights).

    The estimate is a grey opening (a minimum, then a maximum filter) over ``window`` pixels per axis,
    which removes every bright object narrower than the window, smoothed by a box filter of half the
    window: what is left is the uneven illumination, stray light and haze under the objects. All filters
    are separable and run along one axis at a time; outside the input they see nothing (max pooling's
    padding), so the result at a pixel depends only on pixels within `reach` of it, and tiles with that
    much more context give exactly the whole image's result.

    Parameters
    ----------
    dims : {2, 3}
    window : sequence of int
        Odd window size per spatial axis (1: that axis is not filtered).
    """

    def __init__(self, dims: int, window: Sequence[int]):
        super().__init__()
        window = [int(w) for w in window]
        if len(window) != dims or any(w < 1 or w % 2 == 0 for w in window):
            raise ValueError(f"window must be {dims} odd sizes of at least 1 px, got {window}")
        self.dims = dims
        self.window: List[int] = window
        self.box: List[int] = [(w // 2) | 1 for w in window]  # odd, about half the window

    def reach(self) -> int:
        """Pixels of context the result at a pixel depends on (along the widest axis)."""
        return max(2 * (w // 2) + b // 2 for w, b in zip(self.window, self.box))

    def _max_along(self, x: torch.Tensor, sizes: List[int]) -> torch.Tensor:
        for axis in range(self.dims):
            k = sizes[axis]
            if k > 1:
                kernel = [1] * self.dims
                kernel[axis] = k
                pad = [0] * self.dims
                pad[axis] = k // 2
                x = F.max_pool2d(x, kernel, 1, pad) if self.dims == 2 else F.max_pool3d(x, kernel, 1, pad)
        return x

    def _mean_along(self, x: torch.Tensor, sizes: List[int]) -> torch.Tensor:
        # 2D average pooling along one axis at a time, 3D inputs folded into 2D views: avg_pool3d refuses
        # inputs thinner than the window (a stack of 8 planes and a 31-plane box), avg_pool2d does not
        for axis in range(self.dims):
            k = sizes[axis]
            if k == 1:
                continue
            first = axis == 0 if self.dims == 2 else axis < 2
            kernel, pad = ([k, 1], [k // 2, 0]) if first else ([1, k], [0, k // 2])
            if self.dims == 2:
                x = F.avg_pool2d(x, kernel, 1, pad, count_include_pad=False)
            else:
                n, c, d, h, w = x.size(0), x.size(1), x.size(2), x.size(3), x.size(4)
                view = x.reshape(n, c, d, h * w) if axis == 0 else x.reshape(n, c * d, h, w)
                x = F.avg_pool2d(view, kernel, 1, pad, count_include_pad=False).reshape(n, c, d, h, w)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eroded = -self._max_along(-x, self.window)
        opened = self._max_along(eroded, self.window)
        return x - self._mean_along(opened, self.box)


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
    xy_pool_levels : int
        3D only: the first this many poolings (and the matching up-convolutions) are 1x2x2, in Y and X
        only, for stacks whose planes lie further apart than their pixels (nnU-Net's anisotropic
        pooling): features then reach a roughly isotropic pitch before Z is pooled. 0 (the default)
        pools every axis at every level.
    background : sequence of int, optional
        Window per spatial axis (odd px) of a `LocalBackground` subtracted from the input before the
        first convolution, for images whose background varies across the field (uneven illumination,
        haze). None (the default): the input goes in as it is.

    Notes
    -----
    BatchNorm is used (in eval mode at inference) because its statistics do not depend on the extent of
    the input: tiled inference then matches whole-image inference exactly. Input sizes must be multiples
    of ``2**depth`` (a multiple of what Z needs with ``xy_pool_levels``); `napari_unet.predict` pads for you.
    """

    def __init__(self, dims: int = 2, in_channels: int = 1, num_classes: int = 2,
                 depth: int = DEFAULT_DEPTH, base_channels: int = DEFAULT_BASE_CHANNELS, xy_pool_levels: int = 0,
                 background: Optional[Sequence[int]] = None):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth!r}")
        if not 0 <= xy_pool_levels <= (depth if dims == 3 else 0):
            raise ValueError(f"xy_pool_levels must be from 0 to depth ({depth}) in 3D and 0 in 2D, got {xy_pool_levels!r}")
        self.dims, self.depth, self.xy_pool_levels = dims, depth, xy_pool_levels
        # no weights: the state dict is the same with or without it
        self.background = LocalBackground(dims, background) if background is not None else nn.Identity()
        Conv = _conv(dims)
        Pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        UpConv = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths[:-1]:
            self.down.append(_DoubleConv(dims, c, w))
            c = w
        kernels = [(1, 2, 2) if level < xy_pool_levels else 2 for level in range(depth)]
        self.pools = nn.ModuleList(Pool(k) for k in kernels)  # no weights: old files' keys are unchanged
        self.bottleneck = _DoubleConv(dims, widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(UpConv(widths[level + 1], widths[level], kernels[level], stride=kernels[level]))
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
        return self.logits(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, *spatial) normalized input -> (N, K, *spatial) class logits (TorchScript-able)."""
        x = self.background(x)
        skips = []
        for block, pool in zip(self.down, self.pools):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for upconv, block in zip(self.up, self.up_blocks):
            x = torch.cat([skips.pop(), upconv(x)], dim=1)
            x = block(x)
        return self.head(x)


class UNetProbabilities(UNet):
    """The UNet followed by a softmax over its classes: (N, C, *spatial) -> (N, K, *spatial) probabilities.

    What a bioimage.io package runs, so that every consumer (deepImageJ, ilastik, bioimageio.core) gets
    the class probabilities `napari_unet.predict` returns without a postprocessing step of its own. Same
    parameters and weights as `UNet`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)
