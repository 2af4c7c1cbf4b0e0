"""Forward passes on a device, with out-of-memory recovery and asynchronous copies back to the host."""
from __future__ import annotations

import threading

import torch

from ..device import autocast, free_memory, is_out_of_memory
from ..tiling import plan_tiles
from .network import network_memory_format
from .tta import averaged_views

__all__ = ["DeviceRunner", "HostResult", "smaller_tile"]


def smaller_tile(tile, halo: int, align: int):
    """Halve the useful part (tile minus halo) of every axis that can shrink; None at the minimum.

    The halo is kept, so with the exact halo a mosaic of the smaller tiles gives the big tile's values.
    """
    minimum = 2 * halo + align
    out = tuple(min(t, max(minimum, ((t - 2 * halo) // 2 + 2 * halo) // align * align)) for t in tile)
    return None if out == tuple(tile) else out


class HostResult:
    """A batch's result on its way to the host; `numpy` waits for the copy to finish."""

    def __init__(self, tensor: torch.Tensor, done=None):
        self.tensor, self.done = tensor, done

    def numpy(self):
        if self.done is not None:
            self.done.synchronize()
        return self.tensor.numpy()


class DeviceRunner:
    """Forward passes with out-of-memory recovery: smaller batches first, then smaller tiles.

    Recovery is remembered (the next batches are split up front) so a run pays for one failed
    allocation, not one per batch; concurrent workers share it. A tile that no longer fits is computed
    as a mosaic of `smaller_tile` tiles with the same halo (`plan_tiles` on the tile itself), which with
    the exact halo gives the same values as the big tile.

    Parameters
    ----------
    net : torch.nn.Module
        A prepared network (`napari_unet.predict.network.inference_network`).
    device : torch.device
    output : {"probabilities", "classes"}
        Softmax probabilities ``(N, K, *tile)``, or the argmax only ``(N, *tile)`` (K times less to copy).
    halo, align, dims : int
    warn : callable
        Receives a message when recovery changes how the work is done.
    tta : bool
        Average the probabilities over the 8 quarter turns and mirror images of each tile
        (`napari_unet.predict.tta`): 8 forward passes per tile.
    precision : {"fp32", "bf16", "fp16"}, optional
        The forward passes' arithmetic; default the device's automatic choice (`compute_precision`).
    """

    def __init__(self, net, device, *, output: str = "probabilities", halo: int, align: int, dims: int,
                 warn=print, tta: bool = False, precision: str | None = None):
        if output not in ("probabilities", "classes"):
            raise ValueError(f"output must be 'probabilities' or 'classes', got {output!r}")
        self.net, self.dev, self.output = net, device, output
        self.halo, self.align, self.dims = halo, align, dims
        self.fmt = network_memory_format(net) if net is not None else None
        self.warn = warn
        self.tta = bool(tta)
        self.precision = precision  # None: the device's automatic choice (`compute_precision`)
        self.max_batch: int | None = None
        self.sub_tile: tuple | None = None
        self.lock = threading.Lock()
        if device.type == "cuda":
            self.out_stream = torch.cuda.Stream(device)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.fmt is not None:
            x = x.contiguous(memory_format=self.fmt)
        with autocast(self.dev, precision=self.precision):
            return self.net(x)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        if self.tta:
            scores = averaged_views(lambda v: torch.softmax(self._logits(v).float(), dim=1), x)
        else:
            scores = self._logits(x)  # the argmax of the logits is the argmax of the probabilities
        if self.output == "classes":
            return scores.argmax(1).to(torch.uint8 if scores.shape[1] <= 256 else torch.int32)
        return scores if self.tta else torch.softmax(scores.float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network on a batch ``(N, C, *tile)`` on the device."""
        n, tile = x.shape[0], tuple(x.shape[2:])
        m, sub = self.max_batch, self.sub_tile  # read once: another worker may lower them meanwhile
        if m is not None and n > m:
            return torch.cat([self.forward(x[i:i + m]) for i in range(0, n, m)])
        if sub is not None and any(t > s for t, s in zip(tile, sub)):
            return self._mosaic(x)
        try:
            return self._call(x)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
        # outside the except block, so the failed attempt's tensors (held by the traceback) are freed
        free_memory(self.dev)
        message = self._shrink(n, tile)
        if message is not None:
            self.warn(message)
        return self.forward(x)

    def _shrink(self, n: int, tile: tuple):
        """Lower the batch (first) or the tile after an out-of-memory error; the warning to give, if any."""
        with self.lock:
            if (self.max_batch is not None and n > self.max_batch) or (
                    self.sub_tile is not None and any(t > s for t, s in zip(tile, self.sub_tile))):
                return None  # another worker has shrunk them meanwhile: just retry
            if n > 1:
                half = max(1, n // 2)
                self.max_batch = half if self.max_batch is None else min(self.max_batch, half)
                return (f"out of memory on {self.dev} with {n} tiles at once: retrying {half} at a time "
                        "(use a smaller batch size to avoid this)")
            smaller = smaller_tile(tile, self.halo, self.align)
            if smaller is None:
                raise MemoryError(f"out of memory on {self.dev} even for a single tile of {tile}: use a smaller "
                                  "tile (tile=) or another device (device='cpu')") from None
            self.sub_tile = smaller if self.sub_tile is None else tuple(
                min(a, b) for a, b in zip(smaller, self.sub_tile))
            return (f"out of memory on {self.dev} with one tile of {'x'.join(map(str, tile))}: continuing "
                    f"with tiles of {'x'.join(map(str, self.sub_tile))} (slower; pass a smaller tile to "
                    "avoid this)")

    def _mosaic(self, x: torch.Tensor) -> torch.Tensor:
        tile = tuple(int(s) for s in x.shape[2:])
        sub = tuple(min(s, t) for s, t in zip(self.sub_tile, tile))  # only ever shrinks
        result = None
        for t in plan_tiles(tile, sub, self.halo, self.align):
            part = self.forward(x[(slice(None), slice(None)) + t.input])
            if result is None:
                result = torch.empty(part.shape[:-self.dims] + tile, dtype=part.dtype, device=part.device)
            result[(Ellipsis,) + t.output] = part[(Ellipsis,) + t.crop]
        return result

    def to_host(self, x: torch.Tensor, ready=None) -> HostResult:
        """`forward` on a batch already on the device (``ready``: the event its copy in records), then start
        the copy back; on CUDA it runs on a side stream while the next batch computes."""
        if ready is not None:
            stream = torch.cuda.current_stream(self.dev)
            stream.wait_event(ready)
            x.record_stream(stream)
        y = self.forward(x)
        if self.dev.type != "cuda":
            return HostResult(y.cpu() if y.device.type != "cpu" else y)
        y = y.contiguous()  # channels_last -> plain layout on the GPU: the copy is one memcpy
        host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
        self.out_stream.wait_stream(torch.cuda.current_stream(self.dev))
        with torch.cuda.stream(self.out_stream):
            host.copy_(y, non_blocking=True)
            y.record_stream(self.out_stream)
            done = torch.cuda.Event()
            done.record(self.out_stream)
        return HostResult(host, done)
