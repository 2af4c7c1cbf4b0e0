"""The one-call forms: `iter_predict` (plan and run), `predict` and `segment` (drained)."""
from __future__ import annotations

from contextlib import closing

from ..progress import drain
from .plan import plan_prediction
from .run import run_prediction

__all__ = ["iter_predict", "predict", "segment"]


def iter_predict(model, image, *, labels: bool = True, probabilities: bool = False, labels_out=None,
                 probabilities_out=None, **plan_options):
    """Plan and run a prediction tile by tile, yielding `PredictEvent` progress reports.

    Same as ``run_prediction(plan_prediction(model, image, labels=labels, probabilities=probabilities,
    **plan_options), labels_out=labels_out, probabilities_out=probabilities_out)``: reading, computing
    and writing overlap in threads, memory stays bounded by a few batches of tiles whatever the size of
    the image when the outputs are on disk, and closing the generator early stops and joins every thread.

    Parameters
    ----------
    model : Model or path
    image : array-like
        Spatial axes last; see `plan_prediction`.
    labels, probabilities : bool
        What to compute (both: from the same forward passes).
    labels_out, probabilities_out : array-like, optional
        Where to write them (see `run_prediction`).
    **plan_options
        ``tile``, ``batch_size``, ``device``, ``channel_axis``, ``halo``, ``min_size``, ``workers``:
        see `plan_prediction`.

    Yields
    ------
    PredictEvent
        The last one has ``kind == "done"`` and the outputs. When a ``"tiles"`` event is yielded, its
        ``region`` has been written.
    """
    plan = plan_prediction(model, image, labels=labels, probabilities=probabilities, **plan_options)
    return run_prediction(plan, labels_out=labels_out, probabilities_out=probabilities_out)


def predict(model, image, *, out=None, progress=None, **plan_options):
    """Class probabilities, float32 shaped ``(K, *spatial)``.

    Parameters
    ----------
    model : Model or path
    image : array-like
    out : array-like, optional
        Where to write them (zarr array, memmap...), piece by piece.
    progress : tqdm-like, optional
    **plan_options
        See `plan_prediction`.

    Examples
    --------
    >>> prob = predict(model, image, tile=512)  # doctest: +SKIP
    """
    events = iter_predict(model, image, labels=False, probabilities=True, probabilities_out=out, **plan_options)
    with closing(events):
        return drain(events, progress).probabilities


def segment(model, image, *, out=None, progress=None, probabilities_out=None, stitch_planes=None,
            stitch_trim: bool = True, **plan_options):
    """Integer labels shaped like the image's spatial axes.

    Semantic models write each pixel's class id with the background (id 1) as 0; instance models write
    object ids (unique across a stack), touching objects separated.

    Parameters
    ----------
    model : Model or path
    image : array-like
    out : array-like, optional
        Where to write the labels (zarr array, memmap...), piece by piece.
    progress : tqdm-like, optional
    probabilities_out : array-like, optional
        Also write the class probabilities ``(K, *spatial)`` float32 here, from the same forward passes
        (the network runs once for both).
    stitch_planes : float or True, optional
        A 2D instance model on a z-stack ``(..., Z, Y, X)``: link each plane's objects to the overlapping
        objects of the previous plane (at least this fraction of the smaller one inside the other; True:
        `napari_unet.stitch.DEFAULT_STITCH_THRESHOLD`), so each object gets one 3D id. Streams plane by
        plane (works with ``out=`` on disk). Never on by default: a time series is not a z-stack.
        Refused for 3D models (already 3D) and semantic models (nothing to link).
    stitch_trim : bool
        With ``stitch_planes``: once linked, each object loses its end sections smaller than
        `napari_unet.stitch.TRIM_RATIO` of its largest (a 2D model's blurred caps), and objects seen in
        one plane only are dropped when the stack's objects span several planes (mostly false detections;
        `napari_unet.stitch.trimmed_sections`). False keeps every linked object as the planes gave it
        (thin objects that are real, flat cells); refused without ``stitch_planes``.
    **plan_options
        See `plan_prediction`.

    Examples
    --------
    >>> nuclei3d = segment(model2d, zstack, stitch_planes=True)  # doctest: +SKIP
    >>> untrimmed = segment(model2d, zstack, stitch_planes=True, stitch_trim=False)  # doctest: +SKIP
    """
    events = iter_predict(model, image, labels=True, probabilities=probabilities_out is not None, labels_out=out,
                          probabilities_out=probabilities_out, stitch_planes=stitch_planes,
                          stitch_trim=stitch_trim, **plan_options)
    with closing(events):
        return drain(events, progress).labels
