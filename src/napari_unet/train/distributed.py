"""Data-parallel training under ``torchrun``: one process per CPU group or GPU, gradients averaged.

``torchrun --standalone --nproc_per_node N -m napari_unet train ...`` starts N copies of the command;
each one reads the data, joins the process group (`data_parallel`: gloo on CPU, NCCL on GPUs, from
torchrun's environment) and trains the same network wrapped in `DistributedDataParallel`. What differs
between ranks, and why:

- patches: each rank samples its own (a generator seeded by ``(seed, rank)``); the validation split is
  drawn from the seed shared by all ranks, so no rank trains on the blocks rank 0 validates on;
- validation, logging, best weights and the model file: rank 0 only;
- stopping: every step the ranks agree (`Ranks.agree`: one all-reduce of the progress and a stop flag),
  so a time budget or a Ctrl-C seen by any rank stops all of them after the same step and no rank is
  left waiting in a collective.

BatchNorm stays per rank (no SyncBatchNorm): each rank normalizes over its own batch, exactly what one
process does with the same batch size, so the defaults tuned for one process hold; SyncBatchNorm would
add two collectives per convolution block and step, and needs CUDA (torch refuses it on CPU tensors).
DDP keeps the running statistics equal by broadcasting rank 0's at each forward pass.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Ranks", "launched_by_torchrun", "data_parallel"]


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` above 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run (the process group is initialized).

    Attributes
    ----------
    rank, world_size, local_rank : int
    device : torch.device
        This rank's device (``cuda:<local_rank>`` on GPUs).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: validates, logs and writes the model."""
        return self.rank == 0

    def common_seed(self, seed: int | None) -> int:
        """The seed of the run, equal on all ranks (rank 0 draws one when none is given)."""
        value = torch.tensor([-1 if seed is None else int(seed)], dtype=torch.int64, device=self._comm)
        if seed is None and self.is_main:
            value[0] = int(np.random.SeedSequence().entropy % 2**62)
        torch.distributed.broadcast(value, src=0)
        return int(value.item())

    def rank_rng(self, seed: int) -> np.random.Generator:
        """This rank's patch sampler generator: different streams on different ranks."""
        return np.random.default_rng([int(seed), self.rank])

    def wrap(self, network: torch.nn.Module) -> torch.nn.Module:
        """The network as DistributedDataParallel (rank 0's weights broadcast to all on creation)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(network, device_ids=ids)

    def agree(self, fraction: float, stop: bool) -> tuple[float, bool]:
        """The furthest progress and whether any rank was asked to stop (one all-reduce, every step)."""
        value = torch.tensor([float(fraction), 1.0 if stop else 0.0], dtype=torch.float64, device=self._comm)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return float(value[0]), bool(value[1] > 0)

    @property
    def _comm(self) -> torch.device:
        # NCCL moves only CUDA tensors; gloo only CPU ones
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def _rank_device(device) -> torch.device:
    """The device of this rank: ``cuda:<LOCAL_RANK>`` when CUDA is asked for (or "auto" finds it)."""
    from ..device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"rank with LOCAL_RANK {local} has no GPU of its own ({torch.cuda.device_count()} "
                             "visible): start at most one process per GPU (--nproc_per_node)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    elif dev.type == "mps":
        raise ValueError("data-parallel training runs on CPUs (gloo) or CUDA GPUs (NCCL), not on mps: "
                         "use device='cpu' or a single process")
    return dev


@contextlib.contextmanager
def data_parallel(device="auto", timeout_s: float = 1800):
    """Join torchrun's process group for the run; yields `Ranks`, or None outside torchrun.

    Parameters
    ----------
    device : str
        As for training; on CUDA each rank takes GPU ``LOCAL_RANK``.
    timeout_s : float
        How long a collective may wait for the other ranks before failing (e.g. a rank that died).
    """
    if not launched_by_torchrun():
        yield None
        return
    import torch.distributed as dist

    dev = _rank_device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=dev if dev.type == "cuda" else None)
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dev)
    finally:
        dist.destroy_process_group()
