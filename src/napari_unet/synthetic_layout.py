"""Where the synthetic nuclei go: ellipsoid geometry and the packing of nuclei into colonies.

`napari_unet.synthetic.make_nuclei` calls `place_nuclei` first; it draws from the caller's generator in a fixed
order, so any change here changes every stand-in image.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["place_nuclei"]

_GAP = 2.0  # minimum distance (px) between nuclei that are not meant to touch
_NEAR = 0.65  # fraction of the isolated nuclei placed close to another one (colonies)
_MAX_FAILURES = 400  # consecutive rejected candidates after which the layout stops


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


# --------------------------------------------------------------------------- layout
def place_nuclei(shape, density, radius, touching, rng, pair=0.75):
    """Place nuclei (the first draws of ``rng``); returns ``labels`` (int32), ``dmap`` (normalised distance) and nuclei."""
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
