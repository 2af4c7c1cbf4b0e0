"""Reading tiles and normalizing them, on the host or on the device.

On a GPU the host would otherwise be the bottleneck: normalizing to float32 in numpy costs more than
the forward pass, and float32 moves twice the bytes of uint16 over PCIe. So when the model's
normalization is the stock affine map of `napari_unet.model.Model.preprocess`, raw tiles travel to the
GPU in their own dtype and are normalized there; otherwise (CPU, MPS, a model that overrides
``preprocess``) ``model.preprocess`` runs on the host.
"""
from __future__ import annotations

import numpy as np
import torch

from ..outputs import release_pages
from ..model import Model
from ..tiling import read_padded

__all__ = ["TileSource", "device_normalization"]

_TORCH_DTYPES = {"u1": "uint8", "i1": "int8", "i2": "int16", "u2": "uint16", "i4": "int32", "u4": "uint32",
                 "i8": "int64", "f2": "float16", "f4": "float32", "f8": "float64"}


def device_normalization(model: Model, dtype):
    """``(low, high)`` per channel when ``model.preprocess`` is the stock affine map
    ``(x - low) / (high - low)`` and ``dtype`` can travel to a torch device as it is; else None."""
    if type(model).preprocess is not Model.preprocess:  # a subclass normalizes its own way: run it on the host
        return None
    name = _TORCH_DTYPES.get(np.dtype(dtype).str[1:])
    if name is None or getattr(torch, name, None) is None:
        return None
    return model.config.norm_low, model.config.norm_high


class _DeviceAffine:
    """`Model.preprocess`'s affine map on the device: float32, minus low, times 1 / (high - low)."""

    def __init__(self, low, high, dims: int, device: torch.device):
        low = torch.tensor(low, dtype=torch.float32)
        high = torch.tensor(high, dtype=torch.float32)
        view = (1, -1) + (1,) * dims
        self.scale = (1.0 / torch.clamp(high - low, min=1e-6)).reshape(view).to(device)
        self.low = low.reshape(view).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).sub_(self.low).mul_(self.scale)
        return torch.nan_to_num_(x, nan=0.0, posinf=0.0, neginf=0.0)  # missing values count as 0


class TileSource:
    """Reads batches of tiles of a plan, normalized, on the plan's device.

    Parameters
    ----------
    plan : napari_unet.predict.PredictionPlan
    device : torch.device
        With an index on CUDA (the copy stream needs one).

    `read` returns ``(x, ready)``: ``x`` the batch ``(N, C, *tile)`` float32 (on the device on CUDA, where
    its copy is queued on a side stream while the previous batch computes; ``ready`` is the CUDA event
    that copy records), else on the host with ``ready`` None. Non-finite values count as 0 after
    normalization. The pages of a memory-mapped input are dropped once its item's last tile is read.
    """

    def __init__(self, plan, device: torch.device):
        self.plan, self.dev = plan, device
        self.pinned = device.type == "cuda"
        model = plan.model
        affine = device_normalization(model, plan.image.dtype) if self.pinned else None
        self.raw_dtype = getattr(torch, _TORCH_DTYPES[np.dtype(plan.image.dtype).str[1:]]) if affine else None
        self.normalize = _DeviceAffine(*affine, model.dims, device) if affine else None
        source = plan.image.array if getattr(plan.image, "axis", 0) is None else None
        self.mapped = source if isinstance(source, np.memmap) else None
        if self.pinned:
            self.copy_stream = torch.cuda.Stream(device)

    def read(self, batch):
        """Read the tiles ``batch`` (a list of ``(item, tile)`` index pairs into the plan)."""
        plan, model = self.plan, self.plan.model
        tile_shape = tuple(s.stop - s.start for s in plan.tiles[batch[0][1]].input)
        shape = (len(batch), model.in_channels) + tile_shape
        host = torch.empty(shape, dtype=self.raw_dtype or torch.float32, pin_memory=self.pinned)
        x = host.numpy()
        last_tile = len(plan.tiles) - 1
        for j, (i, t) in enumerate(batch):
            block = read_padded(plan.image, plan.tiles[t].input, plan.item_shape, index=plan.items[i])
            x[j] = block if self.normalize is not None else model.preprocess(block)
            if self.mapped is not None and t == last_tile:
                release_pages(self.mapped[plan.items[i]])
        if self.normalize is None and not np.isfinite(x).all():  # missing values count as 0
            np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if not self.pinned:
            return host, None
        with torch.cuda.stream(self.copy_stream):  # to the GPU now, while the previous batch computes
            x = host.to(self.dev, non_blocking=True)
            if self.normalize is not None:
                x = self.normalize(x)
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        return x, ready
