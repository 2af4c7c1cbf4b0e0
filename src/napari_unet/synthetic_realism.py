"""What real nucleus images have and the plain synthetic stand-in lacks: the ``realism`` of `make_nuclei`.

The plain stand-in (`napari_unet.synthetic.make_nuclei` with ``realism="standard"``) is easier than real
widefield images: held-out real nuclei score lower with the same protocol.  The pieces here add, each
switchable on its own:

* **dim nuclei**: a fraction of the nuclei barely brighter than the background;
* **clumps**: more nuclei touching, in larger clusters instead of pairs;
* **defocus**: a fraction of the nuclei out of focus (blurred more than the rest, one blur per nucleus);
* **debris**: small bright specks and fragments that are not nuclei (never labelled);
* **annotator outlines** (`annotator_labels`): the masks a person draws, whose outlines do not sit
  exactly on the true edge (each object grown or shrunk by about a pixel, wobbly, smoothed).  Train on
  them, score on the true labels.

``REALISM["hard"]`` turns them all on; ``Realism(...)`` sets each one.  Every piece draws from its own
random stream (derived from the image's seed), so switching one on or off changes only what it adds:
the nuclei stay where they were (except ``clumps``, which changes the layout itself).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["Realism", "REALISM", "resolve_realism", "annotator_labels"]

_DIM_BRIGHTNESS = (0.04, 0.11)  # brightness of a dim nucleus (the brightest nucleus is 1, background ~0.08)
_DEBRIS_BRIGHTNESS = (0.3, 1.6)  # relative to the brightest nucleus: debris is often brighter


@dataclass(frozen=True)
class Realism:
    """Which of the hard parts of real images `make_nuclei` simulates (all off by default).

    Parameters
    ----------
    dim : float
        Fraction of the nuclei made dim: brightness 0.04-0.11 of the brightest nucleus, about the
        background's level (unchanged nuclei span 0.26-1).
    clumps : float
        0 to 1: how much of the layout is touching clusters.  The fraction of touching nuclei becomes
        ``touching + clumps * (1 - touching)`` and a new touching nucleus joins an existing cluster
        instead of forming a pair with probability ``0.25 + 0.75 * clumps`` (0.25 without clumps).
    defocus : float
        Fraction of the nuclei out of focus: each one's emission is blurred by an extra Gaussian of
        ``defocus_sigma`` px (its own, drawn uniformly) before the optical blur all nuclei get.
    defocus_sigma : (float, float)
        Range of that extra blur, in pixels.
    debris : float
        Pieces of unlabelled debris per 10,000 pixels of a plane (in 3D: per plane's area, spread
        through the volume): small specks and irregular fragments, 1-6 px, often brighter than nuclei.
    """

    dim: float = 0.0
    clumps: float = 0.0
    defocus: float = 0.0
    defocus_sigma: tuple[float, float] = (1.5, 4.0)
    debris: float = 0.0

    def __post_init__(self):
        for name in ("dim", "clumps", "defocus"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"Realism.{name} must be in [0, 1], got {v}")
        lo, hi = self.defocus_sigma
        if not 0 < lo <= hi:
            raise ValueError(f"Realism.defocus_sigma must be (min, max) with 0 < min <= max, got {self.defocus_sigma}")
        if self.debris < 0:
            raise ValueError(f"Realism.debris must be >= 0, got {self.debris}")

    @property
    def is_standard(self) -> bool:
        """True when nothing is switched on (the plain stand-in, bit for bit)."""
        return self == Realism(defocus_sigma=self.defocus_sigma)


#: The presets `make_nuclei(realism=...)` accepts by name. ``"hard"`` is calibrated so that
#: benchmarks/quality.py scores on it about what it scores on real held-out nuclei (see docs/quality.md).
REALISM = {
    "standard": Realism(),
    "hard": Realism(dim=0.08, clumps=0.2, defocus=0.2, debris=1.0),
}


def resolve_realism(realism) -> Realism:
    """A `Realism` from a preset name (``"standard"``, ``"hard"``) or a `Realism` itself."""
    if isinstance(realism, Realism):
        return realism
    if isinstance(realism, str) and realism in REALISM:
        return REALISM[realism]
    raise ValueError(f"realism must be one of {sorted(REALISM)} or a Realism(...), got {realism!r}")


def streams(seed, n: int = 4) -> list[np.random.Generator]:
    """Independent generators for the realism pieces (dim, defocus, debris, spare), from the image's seed."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


# --------------------------------------------------------------------------- layout
def clump_layout(realism: Realism, touching: float) -> tuple[float, float]:
    """``(touching fraction, probability that a touching nucleus forms a new pair)`` for the layout."""
    c = realism.clumps
    return touching + c * (1.0 - touching), 0.75 * (1.0 - c)


# --------------------------------------------------------------------------- emission
def dim_some(bright: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Brightness per label (index 0 = background) with ``fraction`` of the nuclei made dim."""
    n = len(bright) - 1
    k = int(round(fraction * n))
    if k == 0:
        return bright
    out = bright.copy()
    ids = 1 + rng.choice(n, size=k, replace=False)
    lo, hi = _DIM_BRIGHTNESS
    out[ids] = np.exp(rng.uniform(math.log(lo), math.log(hi), k))
    return out


def defocus_some(signal: np.ndarray, labels: np.ndarray, realism: Realism, rng) -> np.ndarray:
    """Blur the emission of a fraction of the nuclei, each by its own extra Gaussian (photons conserved)."""
    n = int(labels.max())
    k = int(round(realism.defocus * n))
    if k == 0:
        return signal
    out = signal.copy()
    boxes = ndi.find_objects(labels)
    ids = 1 + rng.choice(n, size=k, replace=False)
    sigmas = rng.uniform(*realism.defocus_sigma, k)
    for lab, sigma in zip(ids, sigmas):
        box = boxes[lab - 1]
        if box is None:
            continue
        pad = int(math.ceil(3 * sigma))
        sl = tuple(slice(max(0, s.start - pad), min(dim, s.stop + pad)) for s, dim in zip(box, labels.shape))
        part = np.where(labels[sl] == lab, signal[sl], 0.0).astype(np.float32)
        out[sl] += ndi.gaussian_filter(part, sigma, mode="constant") - part
    return np.maximum(out, 0.0, out=out)


def debris(shape, per_10k: float, rng) -> np.ndarray:
    """Emission of unlabelled debris: specks (one blob) and fragments (2-5 blobs along a short walk)."""
    out = np.zeros(shape, dtype=np.float32)
    plane = float(np.prod(shape[-2:]))
    n = int(rng.poisson(per_10k * plane / 1e4)) if per_10k > 0 else 0
    ndim = len(shape)
    for _ in range(n):
        pos = rng.uniform(0, 1, ndim) * np.asarray(shape)
        amp = rng.uniform(*_DEBRIS_BRIGHTNESS)
        for _ in range(1 if rng.random() < 0.5 else int(rng.integers(2, 6))):
            axes = rng.uniform(0.6, 2.2, ndim)
            _add_ellipsoid(out, pos, axes, amp * rng.uniform(0.6, 1.0))
            pos = pos + rng.normal(0, 1.8, ndim)
    return out


def _add_ellipsoid(out, center, axes, amp) -> None:
    """Add ``amp`` inside the axis-aligned ellipse (ellipsoid) at ``center``; parts outside are cut."""
    lo = np.maximum(np.floor(center - axes - 1).astype(int), 0)
    hi = np.minimum(np.ceil(center + axes + 2).astype(int), out.shape)
    if np.any(hi <= lo):
        return
    g = np.meshgrid(*[(np.arange(a, b) - c) / r for a, b, c, r in zip(lo, hi, center, axes)], indexing="ij",
                    sparse=True)
    inside = sum(x * x for x in g) <= 1.0
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] += amp * inside


# --------------------------------------------------------------------------- annotations
def annotator_labels(labels, *, offset: float = 1.0, wobble: float = 0.6, smooth: float = 1.0,
                     seed: int | None = None) -> np.ndarray:
    """The instance masks a person would draw: outlines near, not on, the true edges.

    Each object's outline is moved by its own offset, drawn uniformly in ``[-offset, offset]`` px
    (grown or shrunk), plus a smooth wobble along the outline (standard deviation ``wobble`` px),
    and its corners are rounded (the signed distance to the edge smoothed by ``smooth`` px). Only
    edges facing the background move: where two objects touch the shared border stays (a person
    draws it once), and an object never takes pixels of another.  Train on these, score on the
    true labels.

    Parameters
    ----------
    labels : ndarray of int, 2D or 3D
        True instance labels (0 = background). Not modified.
    offset, wobble, smooth : float
        Pixels; all 0 returns a copy of ``labels``.
    seed : int, optional
        The same seed gives the same annotation.

    Returns
    -------
    ndarray of int32
        Same ids as ``labels`` (an object never disappears: it keeps at least its centre pixel).
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3) or labels.dtype.kind not in "ui":
        raise ValueError(f"labels must be a 2D or 3D integer array, got {labels.dtype} {labels.shape}")
    if min(offset, wobble, smooth) < 0:
        raise ValueError("offset, wobble and smooth must be >= 0 (pixels)")
    rng = np.random.default_rng(seed)
    out = labels.astype(np.int32, copy=True)
    pad = int(math.ceil(offset + 3 * wobble + 2 * smooth)) + 2
    for lab, box in enumerate(ndi.find_objects(out), start=1):
        if box is None:
            continue
        sl = tuple(slice(max(0, s.start - pad), min(dim, s.stop + pad)) for s, dim in zip(box, out.shape))
        _redraw(out[sl], labels[sl], lab, rng.uniform(-offset, offset), wobble, smooth, rng)
    return out


def _redraw(out_box, true_box, lab, shift, wobble, smooth, rng) -> None:
    """Move object ``lab``'s free edges in ``out_box`` (a view) by ``shift`` px plus wobble, in place."""
    mine = true_box == lab
    # signed distance to the edge, positive inside, the edge itself at 0 (half a pixel from pixel centres)
    sd = np.where(mine, ndi.distance_transform_edt(mine) - 0.5, 0.5 - ndi.distance_transform_edt(~mine))
    if smooth > 0:
        sd = ndi.gaussian_filter(sd, smooth)
    level = sd + shift
    if wobble > 0:
        w = ndi.gaussian_filter(rng.standard_normal(sd.shape), 4.0)
        level += w * (wobble / max(float(w.std()), 1e-8))
    drawn = level > 0
    others = (true_box > 0) & ~mine
    fixed = ndi.binary_dilation(others, iterations=2) if others.any() else np.zeros_like(mine)
    out_box[drawn & (out_box == 0) & (true_box == 0)] = lab  # grow into background only
    out_box[mine & ~drawn & ~fixed & (out_box == lab)] = 0  # shrink, except along shared borders
    if not (out_box == lab).any():  # never lose an object: keep its deepest pixel
        out_box[np.unravel_index(np.argmax(np.where(mine, sd, -np.inf)), sd.shape)] = lab
