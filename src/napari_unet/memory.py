"""Memory guards: allocations and loads that refuse, with advice, what the machine cannot hold."""
from __future__ import annotations

import os

import numpy as np

__all__ = ["available_memory", "allocate", "load_in_memory"]


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable on Linux; a guess elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def allocate(shape, dtype, fraction: float = 0.8) -> np.ndarray:
    """``np.zeros`` that refuses, with advice, to take more than ``fraction`` of the available memory."""
    nbytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    avail = available_memory()
    if nbytes > fraction * avail:
        raise MemoryError(
            f"the result ({nbytes / 2**30:.1f} GiB, shape {tuple(shape)}) does not fit in the available memory "
            f"({avail / 2**30:.1f} GiB): write it to disk instead (out= a zarr array, or an output path ending "
            ".zarr on the command line)")
    return np.zeros(shape, dtype)


def load_in_memory(array, what: str = "array", fraction: float = 0.5) -> np.ndarray:
    """``np.asarray`` that refuses, with advice, an array larger than ``fraction`` of the available memory."""
    nbytes = int(np.prod(np.shape(array), dtype=np.float64)) * np.dtype(array.dtype).itemsize
    avail = available_memory()
    if nbytes > fraction * avail:
        raise MemoryError(f"the {what} ({nbytes / 2**30:.1f} GiB) does not fit in the available memory "
                          f"({avail / 2**30:.1f} GiB): crop it to the annotated region, or store it as zarr")
    return np.asarray(array)
