"""Sample data: a synthetic nuclei image with example strokes, ready to train on."""
from __future__ import annotations

__all__ = ["make_sample_data", "SAMPLE_SHAPE"]

#: Small enough to generate in a second and train on at once, big enough to hold a few dozen nuclei.
SAMPLE_SHAPE = (384, 384)


def make_sample_data():
    """The ``nuclei`` sample: an Image layer and a Labels layer of painted strokes.

    Returns
    -------
    list of LayerData tuples
        ``"nuclei"`` (uint16 image) and ``"nuclei annotations"`` (0 = not annotated, 1 = background,
        2 = nucleus), from `napari_unet.synthetic.make_sample`.
    """
    from napari_unet.synthetic import make_sample

    image, strokes, _ = make_sample(SAMPLE_SHAPE, seed=0)
    return [
        (image, {"name": "nuclei", "colormap": "gray"}, "image"),
        (strokes, {"name": "nuclei annotations", "opacity": 0.6,
                   "metadata": {"napari_unet": {"help": "1 = background strokes, 2 = painted nuclei"}}},
         "labels"),
    ]
