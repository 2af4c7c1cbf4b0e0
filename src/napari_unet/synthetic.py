"""Synthetic fluorescence nucleus images with ground truth and painted annotations.

Nothing can be downloaded at run time, so the tests, the demo and the napari sample
data use this generator.  It stands in for widefield DAPI/Hoechst images of cell
nuclei and models the things that make such images hard for a classical global
threshold:

* ellipsoidal nuclei of random size, eccentricity and orientation with slightly
  irregular outlines, grouped in colonies, some of them touching in small clusters;
* strongly varying per-nucleus brightness (dim and bright nuclei side by side);
* chromatin texture, darker nucleoli and a few bright chromocenters in each nucleus;
* optical blur (Gaussian PSF, elongated along Z in 3D);
* smooth uneven illumination (multiplicative) and an additive background gradient;
* Poisson shot noise, Gaussian read noise and a camera offset.

All functions are deterministic given ``seed``, never modify their inputs and put
the spatial axes last: ``(Y, X)`` in 2D and ``(Z, Y, X)`` in 3D.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from . import synthetic_realism as _real
from .synthetic3d import volume_optics
from .synthetic_layout import place_nuclei
from .synthetic_realism import REALISM, Realism, annotator_labels
from .synthetic_strokes import make_strokes

__all__ = ["make_nuclei", "make_strokes", "make_sample", "Realism", "REALISM", "annotator_labels"]

# --------------------------------------------------------------------------- constants
#: Default fraction of the image area (2D) or volume (3D) covered by nuclei.
DEFAULT_DENSITY_2D = 0.14
DEFAULT_DENSITY_3D = 0.12

_PSF_SIGMA = 1.8  # lateral PSF sigma (px)
_PSF_Z_FACTOR = 2.5  # axial PSF sigma = factor * lateral sigma
_PEAK_PHOTONS = 700.0  # photons at the centre of the brightest nucleus, full illumination
_AUTOFLUO = 0.08  # sample background (relative to the peak), scaled by illumination
_STRAY = 0.2  # maximum additive background gradient (relative to the peak)
_ILLUM_RANGE = 2.0  # max / min of the multiplicative illumination field
_BRIGHTNESS = (0.255, 1.0)  # per-nucleus brightness range (log-uniform)
_CAMERA_OFFSET = 100.0  # ADU
_READ_NOISE = 3.0  # ADU (gain 1 ADU / photo-electron)
_NUCLEOLUS = (0.3, 0.6)  # relative intensity loss inside nucleoli
_BORDER_DIP = 0.7  # intensity factor on pixels where two nuclei touch


# --------------------------------------------------------------------------- helpers
def _check_shape(shape) -> tuple[int, ...]:
    """Shape as a tuple of ints; raises ValueError unless it is a valid 2D or 3D shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be 2D (Y, X) or 3D (Z, Y, X), got {shape}")
    if min(shape) < 1:
        raise ValueError(f"all dimensions must be >= 1, got {shape}")
    return shape


def _smooth_field(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    """Smooth random field in [0, 1] with correlation length ~``scale`` pixels."""
    coarse = tuple(max(2, int(math.ceil(s / scale)) + 2) for s in shape)
    field = ndi.gaussian_filter(rng.standard_normal(coarse), 0.8, mode="reflect")
    zoom = [(s + 2 * scale) / c for s, c in zip(shape, coarse)]
    big = ndi.zoom(field, zoom, order=3, mode="reflect")
    off = [int(round(scale)) for _ in shape]
    big = big[tuple(slice(o, o + s) for o, s in zip(off, shape))]
    if big.shape != tuple(shape):  # rounding safety
        pad = [(0, max(0, s - b)) for s, b in zip(shape, big.shape)]
        big = np.pad(big, pad, mode="edge")[tuple(slice(0, s) for s in shape)]
    lo, hi = big.min(), big.max()
    return (big - lo) / (hi - lo) if hi > lo else np.zeros(shape)


def _ramp(rng: np.random.Generator, shape) -> np.ndarray:
    """Linear ramp in [0, 1] along a random in-plane direction."""
    ndim = len(shape)
    ang = rng.uniform(0, 2 * np.pi)
    direction = np.zeros(ndim)
    direction[-2:] = [math.sin(ang), math.cos(ang)]
    grids = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij", sparse=True)
    r = sum(g * d for g, d in zip(grids, direction))
    r = np.broadcast_to(r, shape).astype(float)
    lo, hi = r.min(), r.max()
    return (r - lo) / (hi - lo) if hi > lo else np.zeros(shape)


def _touching_pixels(labels: np.ndarray) -> np.ndarray:
    """Pixels adjacent (face connectivity) to a pixel of a *different* nucleus."""
    out = np.zeros(labels.shape, dtype=bool)
    for ax in range(labels.ndim):
        a = [slice(None)] * labels.ndim
        b = [slice(None)] * labels.ndim
        a[ax] = slice(0, -1)
        b[ax] = slice(1, None)
        la, lb = labels[tuple(a)], labels[tuple(b)]
        m = (la != lb) & (la > 0) & (lb > 0)
        out[tuple(a)] |= m
        out[tuple(b)] |= m
    return out


def _relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Renumber the labels 1..N in order of their ids, keeping 0 as background."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


# --------------------------------------------------------------------------- nuclei image
def make_nuclei(
    shape=(512, 512),
    *,
    density: float | None = None,
    radius: tuple[float, float] = (6, 14),
    seed: int | None = None,
    touching: float = 0.3,
    dtype=np.uint16,
    realism: str | Realism = "standard",
    spacing=None,
    attenuation: float = 0.0,
    depth_blur: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a widefield fluorescence image of stained nuclei with ground truth.

    Parameters
    ----------
    shape : tuple of int, default (512, 512)
        ``(Y, X)`` for a 2D image or ``(Z, Y, X)`` for a 3D stack (isotropic voxels unless ``spacing``;
        the optical blur is elongated along Z).
    density : float, optional
        Fraction of the image area (2D) or volume (3D) covered by nuclei.  Defaults
        to 0.14 in 2D (about 120 nuclei in 512 x 512 with the default ``radius``)
        and 0.12 in 3D.  Nuclei are loosely grouped in colonies, as in cell culture.
    radius : (float, float), default (6, 14)
        Range of the equivalent radius of the nuclei in pixels.  Individual nuclei
        are ellipses (ellipsoids) with random eccentricity and orientation.
    seed : int, optional
        Seed of the random generator; the same seed gives the same output.
    touching : float, default 0.3
        Approximate fraction of the nuclei that touch at least one other nucleus
        (mostly pairs, some small clusters).  Touching nuclei share a border with no
        gap; the other nuclei are at least 2 px apart.
    dtype : numpy dtype, default np.uint16
        Data type of ``image``.  Integer types hold camera ADU (offset 100, gain 1);
        types with a small range (e.g. uint8) are rescaled to fit.  Float types hold
        the same ADU values without rounding.
    realism : {"standard", "hard"} or Realism, default "standard"
        What of real images' difficulty to add: ``"standard"`` is the plain stand-in (the same output
        as always for a given seed); ``"hard"`` adds dim nuclei, clumps, out-of-focus nuclei and
        unlabelled debris (`napari_unet.synthetic_realism.REALISM` says how much); a
        `Realism` sets each one.  Train on `annotator_labels` of the result to also have imprecise
        outlines.
    spacing : (int, int, int), optional
        3D only: voxel size along (Z, Y, X) in units of the finest axis, e.g. ``(3, 1, 1)`` for a stack
        whose planes are 3 px apart. Nuclei (``radius`` in those units), emission and blur are made on
        the fine grid and every ``spacing``-th sample is kept. Default: isotropic voxels.
    attenuation : float, default 0
        3D only: fraction of the light lost at the deepest plane (exponential in depth; the camera
        noise is added after, so deep planes are dimmer *and* noisier).
    depth_blur : float, default 0
        3D only: relative growth of the PSF from the top plane to the deepest one (0.5: 50 % wider).
        With all three left out, the output is the plain isotropic stand-in (`napari_unet.synthetic3d`).

    Returns
    -------
    image : ndarray of ``dtype``, shape ``shape``
        The simulated camera image.
    labels : ndarray of int32, shape ``shape``
        Instance labels of the true object extent (before blur): 0 is background,
        nuclei are numbered 1..N consecutively.

    Notes
    -----
    The image is formed as ``offset + read_noise + Poisson(illum * (signal + autofluo)
    + stray)`` where ``signal`` is the blurred nucleus emission (per-nucleus brightness
    over a ~4x range, thickness profile, chromatin texture, darker nucleoli, bright
    chromocenters and a slight intensity dip where two nuclei touch), ``illum`` a smooth illumination field varying
    ~2x across the field of view and ``stray`` a smooth additive background gradient.
    """
    shape = _check_shape(shape)
    if density is None:
        density = DEFAULT_DENSITY_2D if len(shape) == 2 else DEFAULT_DENSITY_3D
    if not 0 <= density < 1:
        raise ValueError(f"density must be in [0, 1), got {density}")
    if not 0 <= touching <= 1:
        raise ValueError(f"touching must be in [0, 1], got {touching}")
    dtype = np.dtype(dtype)
    real = _real.resolve_realism(realism)
    optics = volume_optics(shape, spacing, attenuation, depth_blur)
    shape = shape if optics is None else optics.physical_shape(shape)  # the fine grid the nuclei live on
    rng = np.random.default_rng(seed)
    # the realism pieces draw from their own streams: ``rng``'s sequence is the plain stand-in's
    dim_rng, defocus_rng, debris_rng, _ = _real.streams(seed)

    # The stages below draw from ``rng`` in this fixed order; reordering them would
    # change every image generated so far.
    touching, pair = _real.clump_layout(real, float(touching))
    labels, dmap, nuclei = place_nuclei(shape, float(density), radius, touching, rng, pair)
    labels = _relabel_consecutive(labels)
    signal = _optical_blur(_signal(labels, dmap, nuclei, shape, real, rng, dim_rng, defocus_rng, debris_rng), optics)
    expected = _expected_photons(signal, rng, optics)
    if optics is not None:  # keep every spacing-th sample; nuclei between the planes kept may vanish
        expected, labels = optics.sampled(expected), _relabel_consecutive(optics.sampled(labels))
    return _camera(expected, dtype, rng), labels


def _signal(labels, dmap, nuclei, shape, real, rng, dim_rng, defocus_rng, debris_rng) -> np.ndarray:
    """The emitted light before the optics: nuclei (brightness, texture, nucleoli, chromocenters), with
    the realism pieces (dim nuclei, defocus, debris) drawn from their own streams."""
    bright = _real.dim_some(_brightness(int(labels.max()), rng), real.dim, dim_rng)
    signal = _emission(labels, dmap, bright, rng)
    signal *= 1.0 - ndi.gaussian_filter(_nucleoli(nuclei, shape, rng), 0.8)
    signal += _chromocenters(nuclei, labels, bright, rng)
    signal = _real.defocus_some(signal, labels, real, defocus_rng)
    if real.debris > 0:
        signal += _real.debris(shape, real.debris, debris_rng)
    return signal


def _brightness(n: int, rng) -> np.ndarray:
    """Log-uniform brightness per label, index 0 (background) being 0."""
    lo, hi = _BRIGHTNESS
    return np.concatenate([[0.0], np.exp(rng.uniform(math.log(lo), math.log(hi), n))])


def _emission(labels, dmap, bright, rng) -> np.ndarray:
    """Unblurred nucleus emission: brightness x thickness profile x chromatin texture."""
    inside = labels > 0
    profile = _thickness_profile(dmap, inside)
    tex = _chromatin_texture(labels.shape, rng)
    signal = bright[labels].astype(np.float32) * profile * tex
    _dim_seams(signal, labels, inside)
    signal[~inside] = 0.0
    return signal


def _thickness_profile(dmap, inside) -> np.ndarray:
    """Relative emission from the normalised distance to the nucleus centre."""
    d = np.where(inside, np.minimum(dmap, 1.0), 1.0).astype(np.float32)
    if d.ndim == 2:  # projected thickness of a sphere
        return 0.5 + 0.5 * np.sqrt(np.clip(1.0 - d * d, 0.0, 1.0))
    return 0.7 + 0.3 * (1.0 - d * d)  # density slightly higher in the centre


def _chromatin_texture(shape, rng) -> np.ndarray:
    """Multiplicative texture around 1: fine plus coarse smoothed noise."""
    tex_fine = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.2)
    tex_coarse = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3.0)
    tex = 1.0 + 0.2 * tex_fine / (tex_fine.std() + 1e-8) + 0.12 * tex_coarse / (tex_coarse.std() + 1e-8)
    return np.clip(tex, 0.3, None)


def _dim_seams(signal, labels, inside) -> None:
    """Darken, in place, the border where two nuclei touch (envelopes, less chromatin)."""
    seam = _touching_pixels(labels)
    near_seam = ndi.binary_dilation(seam) & inside & ~seam
    signal[seam] *= _BORDER_DIP
    signal[near_seam] *= 0.5 * (1.0 + _BORDER_DIP)


def _nucleoli(nuclei, shape, rng) -> np.ndarray:
    """Relative intensity loss map of 0-3 DAPI-poor round nucleoli per nucleus."""
    ndim = len(shape)
    dark = np.zeros(shape, dtype=np.float32)
    for nuc in nuclei:
        for _ in range(int(rng.integers(0, 4))):
            v = rng.standard_normal(ndim)
            v *= rng.uniform(0, 0.55) / np.linalg.norm(v)
            c = nuc.center + nuc.rot @ (v * nuc.axes)
            rn = rng.uniform(0.14, 0.24) * float(np.exp(np.log(nuc.axes).mean()))
            amp = rng.uniform(_NUCLEOLUS[0], _NUCLEOLUS[1])
            _max_disk(dark, c, rn, amp)
    return dark


def _max_disk(out, c, rn, amp) -> None:
    """Raise ``out`` to at least ``amp`` inside the disk (ball) of radius ``rn`` at ``c``."""
    lo_ = np.maximum(np.floor(c - rn - 1).astype(int), 0)
    hi_ = np.minimum(np.ceil(c + rn + 2).astype(int), out.shape)
    if np.any(hi_ <= lo_):
        return  # entirely outside the image
    g = np.meshgrid(*[np.arange(a, b) - cc for a, b, cc in zip(lo_, hi_, c)], indexing="ij", sparse=True)
    disk = sum(x * x for x in g) <= rn * rn
    box = tuple(slice(a, b) for a, b in zip(lo_, hi_))
    out[box] = np.maximum(out[box], amp * disk)


def _chromocenters(nuclei, labels, bright, rng) -> np.ndarray:
    """Emission of 0-4 small bright spots per nucleus, scaled by its brightness."""
    shape = labels.shape
    ndim = labels.ndim
    spots = np.zeros(shape, dtype=np.float32)
    for nuc in nuclei:
        for _ in range(int(rng.integers(0, 5))):
            v = rng.standard_normal(ndim)
            v *= rng.uniform(0, 0.7) / np.linalg.norm(v)
            p = np.round(nuc.center + nuc.rot @ (v * nuc.axes)).astype(int)
            amp = rng.uniform(0.3, 0.8)
            if np.all(p >= 0) and np.all(p < shape):
                lab = labels[tuple(p)]
                if lab > 0:  # only where the spot fell inside some nucleus
                    spots[tuple(p)] += amp * bright[lab]
    spot_sigma = 1.0
    # the factor keeps each spot's peak at about ``amp * brightness`` after the smoothing
    return ndi.gaussian_filter(spots, spot_sigma) * (2 * np.pi * spot_sigma**2) ** (ndim / 2)


def _optical_blur(signal, optics=None) -> np.ndarray:
    """Gaussian PSF, elongated along Z in 3D (and growing with depth when ``optics`` says so)."""
    ndim = signal.ndim
    sigma = (_PSF_SIGMA,) * ndim if ndim == 2 else (_PSF_SIGMA * _PSF_Z_FACTOR, _PSF_SIGMA, _PSF_SIGMA)
    if optics is not None:
        return optics.blur(signal, sigma)
    return ndi.gaussian_filter(signal, sigma, mode="reflect")


# --------------------------------------------------------------------------- illumination and camera
def _expected_photons(signal, rng, optics=None) -> np.ndarray:
    """Mean photon count: uneven illumination of signal + autofluorescence, plus stray light."""
    plane = signal.shape[-2:]
    f = 0.6 * _smooth_field(rng, plane, max(plane) / 2.5) + 0.4 * _ramp(rng, plane)
    f = (f - f.min()) / max(f.max() - f.min(), 1e-8)
    illum = (1.0 / _ILLUM_RANGE) * _ILLUM_RANGE**f  # min .. max spans _ILLUM_RANGE
    s = 0.5 * _smooth_field(rng, plane, max(plane) / 2.0) + 0.5 * _ramp(rng, plane)
    stray = _STRAY * s
    if signal.ndim == 3:  # the same field on every Z plane, dimmer with depth when ``optics`` says so
        illum = illum[None]
        stray = stray[None]
        if optics is not None and optics.attenuation > 0:
            illum = illum * optics.depth_profile(signal.shape[0])[:, None, None]
    return _PEAK_PHOTONS * (illum * (signal + _AUTOFLUO) + stray)


def _camera(expected, dtype: np.dtype, rng) -> np.ndarray:
    """Shot noise, offset and read noise, then conversion to ``dtype``."""
    photons = rng.poisson(np.maximum(expected, 0.0)).astype(np.float32)
    adu = photons + _CAMERA_OFFSET + rng.normal(0.0, _READ_NOISE, expected.shape).astype(np.float32)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        if info.max < 4096:  # small range: rescale so that typical images fit
            top = _CAMERA_OFFSET + 1.6 * _PEAK_PHOTONS
            adu = (adu - _CAMERA_OFFSET) * ((info.max - 10.0) / (top - _CAMERA_OFFSET)) + 10.0
        return np.clip(np.rint(adu), info.min, info.max).astype(dtype)
    if dtype.kind == "f":
        return adu.astype(dtype)
    raise TypeError(f"dtype must be an integer or float type, got {dtype}")


# --------------------------------------------------------------------------- sample
def make_sample(shape=(512, 512), seed: int | None = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, sparse strokes and ground-truth labels for demos and sample data.

    Parameters
    ----------
    shape : tuple of int, default (512, 512)
        ``(Y, X)`` or ``(Z, Y, X)``.
    seed : int, optional, default 0
        Seed; the same seed gives the same sample.

    Returns
    -------
    image : ndarray of uint16
        Simulated nucleus image (see :func:`make_nuclei`).
    strokes : ndarray of uint8
        Sparse annotation, 0 = not annotated, 1 = background, 2 = nucleus
        (see :func:`make_strokes`).
    labels : ndarray of int32
        Ground-truth instance labels.
    """
    ss = np.random.SeedSequence(seed)
    s_img, s_strokes = ss.spawn(2)
    image, labels = make_nuclei(shape, seed=int(s_img.generate_state(1)[0]))
    strokes = make_strokes(labels, seed=int(s_strokes.generate_state(1)[0]))
    return image, strokes, labels
