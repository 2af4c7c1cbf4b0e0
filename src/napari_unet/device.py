"""Choosing the torch device and the mixed-precision settings that go with it."""
from __future__ import annotations

import contextlib
import os
import threading

import torch

__all__ = ["resolve_device", "autocast", "amp_dtype", "compute_precision", "cpu_computes_bf16", "memory_format",
           "is_out_of_memory", "free_memory", "thread_policy"]

_VALID = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(device="auto") -> torch.device:
    """Turn ``"auto"`` (cuda, then mps, then cpu) or a device name into a `torch.device`.

    Raises
    ------
    ValueError
        For an unknown name, or a device this machine does not have.
    """
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise TypeError(f"device must be a string ({_VALID}), got {type(device).__name__}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {device!r}: use {_VALID}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {device!r}: use {_VALID}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here: use device 'cpu' "
                         "or install a CUDA build of torch")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} was asked for but MPS is not available here: use device 'cpu'")
    return dev


def amp_dtype(device: torch.device):
    """The autocast dtype of a GPU: bf16 where supported, fp16 on older ones; None (fp32) on CPU and MPS
    (where `compute_precision` decides)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (Intel AMX or AVX-512 BF16: Xeon Sapphire Rapids and later,
    AMD Zen 4 and later). There a bf16 training step takes about 0.4x the fp32 time; elsewhere bf16 is
    emulated and slower (benchmarks/train_throughput.py)."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(bool(probe()) for probe in probes if callable(probe))


def compute_precision(device: torch.device, mixed_precision: bool | None = None) -> str:
    """The arithmetic of training steps and forward passes on ``device``: ``"bf16"``, ``"fp16"`` (mixed,
    under autocast) or ``"fp32"``.

    ``mixed_precision`` None (automatic): mixed on GPUs (bf16 where supported), bf16 on CPUs that
    compute it natively (`cpu_computes_bf16`), fp32 elsewhere. True: mixed even on a CPU without bf16
    units (slower there). False: fp32 everywhere (exactly reproducible across machines, slower).
    Training keeps fp32 weights and loss; prediction's probabilities move by up to ~0.1 under bf16, its
    labels by a few pixels in ten thousand (benchmarks/prediction_precision.py).

    Raises
    ------
    ValueError
        ``mixed_precision`` not a bool or None, or True on MPS (no mixed precision there).
    """
    if mixed_precision is not None and not isinstance(mixed_precision, bool):
        raise ValueError(f"mixed_precision must be True, False or None (automatic), got {mixed_precision!r}")
    if mixed_precision is False:
        return "fp32"
    if device.type == "cuda":
        return "bf16" if amp_dtype(device) == torch.bfloat16 else "fp16"
    if device.type == "cpu":
        return "bf16" if mixed_precision or cpu_computes_bf16() else "fp32"
    if mixed_precision:
        raise ValueError(f"mixed precision is not available on {device.type}: leave mixed_precision out")
    return "fp32"


def autocast(device: torch.device, enabled: bool = True, precision: str | None = None):
    """Mixed precision under ``precision`` (default: `compute_precision`'s automatic choice); a no-op for fp32."""
    precision = compute_precision(device) if precision is None else precision
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def memory_format(dims: int, device: torch.device):
    """channels_last where it is faster, else None: CPU (oneDNN; prediction 1.6x in 2D and 1.2-1.3x in
    3D, a training step 0.8x the time in 2D and 3D) and CUDA (tensor-core convolutions under autocast want
    NHWC); MPS keeps the default layout."""
    if device.type not in ("cpu", "cuda"):
        return None
    return torch.channels_last if dims == 2 else torch.channels_last_3d


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a GPU (or host) out-of-memory error from torch."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    text = str(exc).lower()
    return (oom is not None and isinstance(exc, oom)) or isinstance(exc, MemoryError) \
        or "out of memory" in text or "can't allocate memory" in text


def free_memory(device: torch.device) -> None:
    """Give cached GPU memory back after an out-of-memory error, so a smaller retry can succeed."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


_shared_lock = threading.Lock()
_shared_users = 0
_shared_saved: int | None = None


@contextlib.contextmanager
def thread_policy(*, threads: int | None = None, spare_cores: int = 0, device: torch.device | None = None):
    """The one place that sets torch's CPU threads and cuDNN autotuning for a piece of work.

    Everything is restored on exit.

    Parameters
    ----------
    threads : int, optional
        torch threads for the calling thread (with torch's OpenMP backend the setting is per thread:
        the concurrent single-threaded forward passes of prediction each set their own).
    spare_cores : int
        Leave this many cores free, process-wide, while the work runs (the viewer's GUI thread needs
        one: on 2 cores with one busy elsewhere, OpenMP workers spin-waiting on a descheduled peer made
        a 256x256 forward pass 590 ms instead of 21 ms, a training step 3x slower). Concurrent runs
        share the setting; it is restored when the last one ends.
    device : torch.device, optional
        On CUDA, cuDNN autotuning is switched on: one tile (or patch) shape per run, so it pays at once.
    """
    global _shared_users, _shared_saved
    cudnn_before = torch.backends.cudnn.benchmark
    if device is not None and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    own_before = torch.get_num_threads() if threads is not None else None
    if own_before is not None and threads != own_before:
        torch.set_num_threads(max(1, int(threads)))
    if spare_cores:
        with _shared_lock:
            if _shared_users == 0:
                _shared_saved = torch.get_num_threads()
                wanted = max(1, min(_shared_saved, (os.cpu_count() or 2) - spare_cores))
                if wanted != _shared_saved:
                    torch.set_num_threads(wanted)
            _shared_users += 1
    try:
        yield
    finally:
        if spare_cores:
            with _shared_lock:
                _shared_users -= 1
                if _shared_users == 0 and _shared_saved is not None and torch.get_num_threads() != _shared_saved:
                    torch.set_num_threads(_shared_saved)
        if own_before is not None and torch.get_num_threads() != own_before:
            torch.set_num_threads(own_before)
        torch.backends.cudnn.benchmark = cudnn_before
