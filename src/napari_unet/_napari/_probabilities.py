"""The class-probability Image layers of the Segment widget ("Also show probabilities")."""
from __future__ import annotations

import numpy as np
from napari.layers import Image

from ._layers import remove_output_store, spatial_geometry

__all__ = ["ProbabilityLayers", "PROBABILITY_KEY"]

#: Layer metadata marking a probability layer: (``unique_id`` of its image, class name).
PROBABILITY_KEY = "napari_unet_probability"


class ProbabilityLayers:
    """Shows each non-background class probability of a run as an Image layer over its image.

    Keeps the last run's probability output of each image (by name) so that its temporary on-disk
    store is deleted once no layer shows it any more.
    """

    def __init__(self):
        self._stores = {}  # image name -> probability output of its last run

    def show(self, viewer, image, model, prob_out, channel_axis) -> list:
        """Image layers backed by ``prob_out`` ((K, *spatial)), reused when they exist; returns them."""
        if not isinstance(prob_out, np.ndarray):
            import dask.array as da

            source = da.from_array(prob_out, chunks=prob_out.chunks)
        else:
            source = prob_out
        layers = []
        for c, cname in enumerate(model.config.class_names):
            if cname == "background":
                continue
            lname = f"{image.name} probability ({cname})"
            # known by its metadata, never by its name: a user's layer of that name is never overwritten
            mark = (image.unique_id, cname)
            found = next((lay for lay in viewer.layers
                          if isinstance(lay, Image) and lay.metadata.get(PROBABILITY_KEY) == mark), None)
            if found is not None:
                found.data = source[c]
                layers.append(found)
            else:
                layers.append(viewer.add_image(source[c], name=lname, colormap="magma", contrast_limits=(0, 1),
                                               blending="additive", opacity=0.7, metadata={PROBABILITY_KEY: mark},
                                               **spatial_geometry(image, channel_axis)))
        # the previous run's on-disk probabilities are no longer shown by any of these layers
        previous = self._stores.pop(image.name, None)
        self._stores[image.name] = prob_out
        if previous is not None:
            remove_output_store(previous)
        return layers

    def renamed(self, old: str, new: str) -> None:
        """An image was renamed: its probabilities follow it."""
        if old in self._stores:
            self._stores[new] = self._stores.pop(old)
