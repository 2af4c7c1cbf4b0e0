"""The 3D optics of the synthetic stand-in: anisotropic sampling, depth attenuation, deeper blur.

Most real z-stacks are sampled more coarsely along Z than in the plane (confocal and light-sheet steps
of 2-5x the pixel size), get dimmer with depth (scattering and absorption of the excitation and the
emitted light) and blurrier (spherical aberration). `napari_unet.synthetic.make_nuclei` builds such
a stack by laying out and blurring the nuclei on a fine *physical* grid (isotropic, in xy pixels) and
keeping every ``spacing``-th sample of it, before the camera adds its noise to each voxel kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["VolumeOptics", "volume_optics"]


@dataclass(frozen=True)
class VolumeOptics:
    """How a stack is sampled and how light fades and blurs with depth (Z index 0 is the top).

    Attributes
    ----------
    step : tuple of int
        Samples of the physical grid between two voxels, per axis (``spacing``).
    attenuation : float
        Fraction of the light lost at the deepest plane, exponential in depth.
    depth_blur : float
        Relative growth of the PSF from the top to the deepest plane (0.5: 50 % wider at the bottom).
    """

    step: tuple
    attenuation: float = 0.0
    depth_blur: float = 0.0

    def physical_shape(self, shape) -> tuple:
        """The fine grid whose every ``step``-th sample is a voxel of ``shape``."""
        return tuple(int(s) * k for s, k in zip(shape, self.step))

    def sampled(self, arr: np.ndarray) -> np.ndarray:
        """Every ``step``-th sample of a physical-grid array (the first one kept on every axis)."""
        return np.ascontiguousarray(arr[tuple(slice(None, None, k) for k in self.step)])

    def depth_profile(self, nz: int) -> np.ndarray:
        """Light reaching and leaving each plane, from 1 at the top to ``1 - attenuation`` at the bottom."""
        depth = np.arange(nz, dtype=np.float64) / max(nz - 1, 1)
        return (1.0 - self.attenuation) ** depth

    def blur(self, signal: np.ndarray, sigma) -> np.ndarray:
        """Gaussian blur of ``sigma`` at the top growing to ``(1 + depth_blur) * sigma`` at the bottom.

        Two blurs, mixed plane by plane in proportion to depth: cheap, and smooth along Z.
        """
        top = ndi.gaussian_filter(signal, sigma, mode="reflect")
        if self.depth_blur <= 0:
            return top
        bottom = ndi.gaussian_filter(signal, [s * (1.0 + self.depth_blur) for s in sigma], mode="reflect")
        w = (np.arange(signal.shape[0], dtype=np.float32) / max(signal.shape[0] - 1, 1))[:, None, None]
        return top * (1.0 - w) + bottom * w


def volume_optics(shape, spacing, attenuation: float, depth_blur: float) -> VolumeOptics | None:
    """Check the 3D optics keywords of `make_nuclei`; None when they ask for nothing (the plain stand-in).

    Raises
    ------
    ValueError
        Saying which keyword to fix.
    """
    if spacing is None and attenuation == 0 and depth_blur == 0:
        return None
    if len(shape) != 3:
        raise ValueError("spacing, attenuation and depth_blur are for 3D stacks (Z, Y, X); leave them out in 2D")
    step = (1, 1, 1) if spacing is None else _steps(spacing)
    if not (isinstance(attenuation, (int, float)) and 0 <= attenuation < 1):
        raise ValueError(f"attenuation must be a fraction of light lost at the deepest plane, in [0, 1), "
                         f"got {attenuation!r}")
    if not (isinstance(depth_blur, (int, float)) and 0 <= depth_blur <= 10):
        raise ValueError(f"depth_blur must be a relative PSF growth from 0 to 10, got {depth_blur!r}")
    return VolumeOptics(step, float(attenuation), float(depth_blur))


def _steps(spacing) -> tuple:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or any(v < 1 or v != int(v) or v > 16 for v in values):
        raise ValueError(f"spacing must be 3 whole numbers from 1 to 16 (Z, Y, X voxel size in units of the "
                         f"finest axis, e.g. (3, 1, 1)), got {spacing!r}")
    return tuple(int(v) for v in values)
