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
from .synthetic_realism import REALISM, Realism, annotator_labels
from .synthetic_strokes import make_strokes

__all__ = ["make_nuclei", "make_strokes", "make_sample", "Realism", "REALISM", "annotator_labels"]

# --------------------------------------------------------------------------- constants
#: Default fraction of the image area (2D) or volume (3D) covered by nuclei.
DEFAULT_DENSITY_2D = 0.14
DEFAULT_DENSITY_3D = 0.12

_GAP = 2.0  # minimum distance (px) between nuclei that are not meant to touch
_NEAR = 0.65  # fraction of the isolated nuclei placed close to another one (colonies)
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
_MAX_FAILURES = 400  # consecutive rejected candidates after which the layout stops


# --------------------------------------------------------------------------- helpers
def _check_shape(shape) -> tuple[int, ...]:
    """Shape as a tuple of ints; raises ValueError unless it is a valid 2D or 3D shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be 2D (Y, X) or 3D (Z, Y, X), got {shape}")
    if min(shape) < 1:
        raise ValueError(f"all dimensions must be >= 1, got {shape}")
    return shape


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """Uniformly random rotation matrix (columns are the ellipsoid's axes)."""
    if ndim == 2:
        a = rng.uniform(0.0, np.pi)
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s], [s, c]])
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class _Nucleus:
    """Geometry of one ellipsoidal nucleus (pixel coordinates)."""

    __slots__ = ("center", "rot", "axes", "harm", "half_extent")

    def __init__(self, center, rot, axes, harm):
        self.center = np.asarray(center, dtype=float)
        self.rot = rot
        self.axes = np.asarray(axes, dtype=float)
        self.harm = harm  # list of (order, amplitude, phase) outline perturbations
        # half extent of the (slightly perturbed) ellipsoid along each image axis
        bump = 1.0 + sum(abs(a) for _, a, _ in harm)
        self.half_extent = np.sqrt(((rot * self.axes[None, :]) ** 2).sum(axis=1)) * bump

    def radius_towards(self, u: np.ndarray) -> float:
        """Distance from the centre to the (unperturbed) outline along unit vector ``u``."""
        v = self.rot.T @ u
        return float(1.0 / np.sqrt(((v / self.axes) ** 2).sum()))

    def render(self, shape, grow: float = 0.0):
        """Normalised radial distance ``d`` (``d <= 1`` inside) in the bounding box.

        Returns ``(slices, d)`` or ``None`` if the nucleus lies outside the image.
        ``grow`` enlarges every semi-axis by that many pixels (used for gap tests).
        """
        lo = np.floor(self.center - self.half_extent - grow - 1).astype(int)
        hi = np.ceil(self.center + self.half_extent + grow + 2).astype(int)
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, shape)
        if np.any(hi <= lo):
            return None
        grids = np.meshgrid(
            *[np.arange(a, b, dtype=float) - c for a, b, c in zip(lo, hi, self.center)],
            indexing="ij",
            sparse=True,
        )
        # coordinates in the ellipsoid frame: p' = R^T p
        local = [sum(self.rot[k, i] * grids[k] for k in range(len(shape))) for i in range(len(shape))]
        axes = self.axes + grow
        d2 = sum((p / a) ** 2 for p, a in zip(local, axes))
        d = np.sqrt(d2)
        if self.harm:
            theta = np.arctan2(local[1], local[0])
            pert = 1.0
            for order, amp, phase in self.harm:
                pert = pert + amp * np.cos(order * theta + phase)
            d = d / pert
        return tuple(slice(a, b) for a, b in zip(lo, hi)), d


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
    labels, dmap, nuclei = _layout(shape, float(density), radius, touching, rng, pair)
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


# --------------------------------------------------------------------------- layout
def _layout(shape, density, radius, touching, rng, pair=0.75):
    """Place nuclei; returns ``labels`` (int32), ``dmap`` (normalised distance) and nuclei."""
    ndim = len(shape)
    rmin, rmax = float(radius[0]), float(radius[1])
    if not (0 < rmin <= rmax):
        raise ValueError(f"radius must be (min, max) with 0 < min <= max, got {radius}")
    target = density * float(np.prod(shape))
    # a candidate mostly outside the image is rejected (less than 30 % of the smallest nucleus)
    min_area = 0.3 * (math.pi * rmin**2 if ndim == 2 else 4.0 / 3.0 * math.pi * rmin**3)
    pack = _Packing(shape)
    failures = 0
    while pack.covered < target and failures < _MAX_FAILURES:
        nuc, parent = _propose(pack, shape, rmin, rmax, touching, rng, pair)
        if _try_place(pack, nuc, parent, shape, min_area):
            failures = 0
        else:
            failures += 1
    return pack.labels, pack.dmap, pack.nuclei


class _Packing:
    """The nuclei placed so far and the label and distance maps they cover."""

    __slots__ = ("labels", "dmap", "nuclei", "areas", "full_areas", "neighbours", "n_touching", "covered")

    def __init__(self, shape):
        self.labels = np.zeros(shape, dtype=np.int32)
        self.dmap = np.full(shape, np.inf, dtype=np.float32)  # normalised distance of the owner
        self.nuclei: list[_Nucleus] = []
        self.areas: list[int] = []  # pixels each nucleus owns now (touching ones share)
        self.full_areas: list[int] = []  # pixels of each nucleus on its own
        self.neighbours: list[set] = []  # indices of the nuclei each one touches
        self.n_touching = 0  # number of nuclei that touch another one
        self.covered = 0  # pixels covered by all nuclei


def _new_geometry(center, rmin, rmax, rng) -> _Nucleus:
    """Random size, elongation, orientation and outline wobble of a nucleus at ``center``."""
    ndim = len(center)
    r = rng.uniform(rmin, rmax)
    rot = _random_rotation(rng, ndim)
    ratio = rng.uniform(0.55, 1.0)  # minor / major axis
    if ndim == 2:
        axes = [r / math.sqrt(ratio), r * math.sqrt(ratio)]
        harm = [(k, rng.normal(0, 0.035), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]
    else:
        ratio2 = rng.uniform(0.7, 1.0)
        axes = [r / math.sqrt(ratio), r * math.sqrt(ratio), r * math.sqrt(ratio2)]
        harm = [(k, rng.normal(0, 0.03), rng.uniform(0, 2 * np.pi)) for k in (2, 3)]
    return _Nucleus(center, rot, axes, harm)


def _propose(pack: _Packing, shape, rmin, rmax, touching, rng, pair=0.75):
    """Next candidate ``(nucleus, parent)``: touching a parent, near another nucleus, or anywhere.

    ``parent`` is the index of the nucleus it is meant to touch, -1 for none.
    """
    ndim = len(shape)
    n = len(pack.nuclei)
    # attach while the number of touching nuclei lags behind the requested fraction
    if n > 0 and touching > 0 and pack.n_touching < touching * (n + 1.5):
        return _propose_touching(pack, rmin, rmax, rng, pair)
    if n > 0 and rng.random() < _NEAR:
        return _propose_near(pack.nuclei, rmin, rmax, rng), -1
    return _new_geometry(rng.uniform(0, 1, ndim) * np.asarray(shape), rmin, rmax, rng), -1


def _propose_touching(pack: _Packing, rmin, rmax, rng, pair=0.75):
    """Candidate slightly overlapping a chosen parent, so that the two share a border."""
    parent = _pick_parent(pack.neighbours, rng, pair)
    p = pack.nuclei[parent]
    ndim = len(p.center)
    u = rng.standard_normal(ndim)
    if ndim == 3:
        u[0] *= 0.5  # prefer lateral contacts (more visible)
    u /= np.linalg.norm(u)
    nuc = _new_geometry(np.zeros(ndim), rmin, rmax, rng)
    # centres 6-16 % closer than the sum of the radii: the overlap becomes the shared border
    dist = (p.radius_towards(u) + nuc.radius_towards(-u)) * (1.0 - rng.uniform(0.06, 0.16))
    nuc.center = p.center + dist * u
    return nuc, parent


def _pick_parent(neighbours: list[set], rng, pair=0.75) -> int:
    """Index of the nucleus to touch: an isolated one (a pair) with probability ``pair``, else any (clusters)."""
    isolated = [i for i in range(len(neighbours)) if not neighbours[i]]
    if isolated and rng.random() < pair:
        return int(isolated[rng.integers(len(isolated))])
    return int(rng.integers(len(neighbours)))


def _propose_near(nuclei: list[_Nucleus], rmin, rmax, rng) -> _Nucleus:
    """Candidate close to (but not touching) a random nucleus: cells grow in colonies."""
    q = nuclei[int(rng.integers(len(nuclei)))]
    ndim = len(q.center)
    u = rng.standard_normal(ndim)
    u /= np.linalg.norm(u)
    nuc = _new_geometry(np.zeros(ndim), rmin, rmax, rng)
    dist = q.radius_towards(u) + nuc.radius_towards(-u) + _GAP + 0.5 + rng.uniform(0.0, 5.0)
    nuc.center = q.center + dist * u
    return nuc


def _try_place(pack: _Packing, nuc: _Nucleus, parent: int, shape, min_area: float) -> bool:
    """Add the candidate to ``pack`` if it is acceptable; returns whether it was added."""
    r = nuc.render(shape)
    if r is None:
        return False
    sl, d = r
    inside = d <= 1.0
    area_full = int(inside.sum())
    if area_full < min_area:
        return False  # mostly outside the image
    if _violates_gap(pack.labels, nuc, parent, shape):
        return False
    lab_box = pack.labels[sl]
    d_box = pack.dmap[sl]
    # overlapping pixels go to the nucleus whose centre is (relatively) closer
    take = inside & ((lab_box == 0) | (d < d_box))
    if parent >= 0:
        remaining = _parent_area_left(pack, parent, inside, take, lab_box, area_full)
        if remaining is None:
            return False
        pack.areas[parent] = remaining
    _commit(pack, nuc, parent, lab_box, d_box, take, d, area_full)
    return True


def _violates_gap(labels: np.ndarray, nuc: _Nucleus, parent: int, shape) -> bool:
    """Whether the candidate comes closer than ``_GAP`` to any nucleus except its parent."""
    gsl, gd = nuc.render(shape, grow=_GAP)
    hit = labels[gsl][gd <= 1.0]
    others = np.unique(hit[hit > 0])
    return bool(np.any(others != parent + 1))


def _parent_area_left(pack: _Packing, parent, inside, take, lab_box, area_full):
    """Area the parent keeps after sharing with the candidate, or None if the contact is bad.

    The two must really touch and each keep at least 72 % of its own area, so that
    neither is swallowed by the other.
    """
    pid = parent + 1
    stolen = int((take & (lab_box == pid)).sum())
    remaining = pack.areas[parent] - stolen
    contact = stolen > 0 or bool(np.any(inside & (lab_box == pid)))
    if not contact or remaining < 0.72 * pack.full_areas[parent] or take.sum() < 0.72 * area_full:
        return None
    return remaining


def _commit(pack: _Packing, nuc: _Nucleus, parent, lab_box, d_box, take, d, area_full) -> None:
    """Write the accepted nucleus into the maps and the bookkeeping of ``pack``."""
    new_id = len(pack.nuclei) + 1
    lab_box[take] = new_id
    d_box[take] = d[take]
    pack.nuclei.append(nuc)
    pack.areas.append(int(take.sum()))
    pack.full_areas.append(area_full)
    pack.neighbours.append(set())
    if parent >= 0:
        if not pack.neighbours[parent]:
            pack.n_touching += 1  # the parent becomes a touching nucleus too
        pack.n_touching += 1
        pack.neighbours[parent].add(new_id - 1)
        pack.neighbours[-1].add(parent)
    pack.covered = int(sum(pack.areas))


# --------------------------------------------------------------------------- emission
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
