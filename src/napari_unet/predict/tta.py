"""Test-time augmentation: the network's probabilities averaged over the symmetries of the square.

A nucleus turned by 90 degrees or mirrored is still a nucleus, but a trained network answers slightly
differently for each view; averaging the views' probabilities (each turned back) smooths out those
differences, at the price of one forward pass per view. Only the last two (Y, X) axes are turned: in
3D, Z (the microscope's axis) is left as it is.
"""
from __future__ import annotations

import torch

__all__ = ["TTA_VIEWS", "averaged_views"]

#: The views `averaged_views` averages: (quarter turns in the YX plane, mirrored along X first).
#: All 8 symmetries of the square (docs/quality.md: 8 views against the 4 flips, measured).
TTA_VIEWS = tuple((k, flip) for flip in (False, True) for k in range(4))


def _view(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def _unview(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    y = torch.rot90(y, -k, dims=(-2, -1)) if k else y
    return torch.flip(y, dims=(-1,)) if flip else y


def averaged_views(probabilities, x: torch.Tensor, views=TTA_VIEWS) -> torch.Tensor:
    """Mean over ``views`` of ``probabilities`` applied to each view of ``x`` and turned back.

    Parameters
    ----------
    probabilities : callable
        ``(N, C, ..., Y, X)`` -> ``(N, K, ..., Y, X)`` float probabilities; shapes swap Y and X for odd
        quarter turns, so it must take any aligned shape (a UNet does).
    x : torch.Tensor
        The batch.
    views : sequence of (int, bool)
        Quarter turns and mirroring (default `TTA_VIEWS`).
    """
    total = None
    for k, flip in views:
        y = _unview(probabilities(_view(x, k, flip)), k, flip)
        total = y if total is None else total.add_(y)
    return total.div_(len(views))
