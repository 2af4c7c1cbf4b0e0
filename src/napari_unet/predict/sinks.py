"""Where predictions go: one sink per output kind, and a tee that feeds several from the same passes.

A sink receives the cropped prediction of each tile (`Sink.write`) and hears when all tiles of an
item (a plane or volume) have been written (`Sink.item_done`). It says what the forward pass must give
it (``wants``): class probabilities, or only the most probable class (semantic labels: K times less
to copy back from a GPU). Memory-mapped outputs have their pages dropped once an item is done, so the
resident memory stays bounded whatever the size of the stack.
"""
from __future__ import annotations

import numpy as np

from ..conventions import written_labels
from ..outputs import release_pages
from ..postprocess import instance_labels, item_spacing
from ..stitch import PlaneStitcher, zero_ids

__all__ = ["Sink", "ProbabilitiesSink", "SemanticLabelsSink", "InstanceLabelsSink", "Tee"]


def _release(array, index: tuple, lead: tuple = ()) -> None:
    """Drop the pages of ``array[lead + index]`` when ``array`` is memory-mapped (never reads otherwise)."""
    if isinstance(array, np.memmap):
        release_pages(array[tuple(lead) + tuple(index)])


class Sink:
    """What every sink does.

    Attributes
    ----------
    wants : {"probabilities", "classes"}
        What `write` needs: ``(K, *region)`` float32 probabilities, or ``(*region)`` class indices.
    """

    wants = "probabilities"

    def write(self, index: tuple, region: tuple, values: np.ndarray) -> None:
        """Write one tile's prediction: ``index`` is the item's leading index, ``region`` the tile's
        output slices in the item. ``values`` are what `wants` says, or probabilities (a tee)."""
        raise NotImplementedError

    def item_done(self, index: tuple):
        """All tiles of item ``index`` are written. Returns the region of the output written only now
        (a whole-item sink), or None."""
        return None

    def finish(self) -> list:
        """Every item is done: a last pass over the output if the sink needs one. Returns the regions
        rewritten."""
        return []


class ProbabilitiesSink(Sink):
    """Class probabilities ``(K, *spatial)`` into ``out``."""

    def __init__(self, out):
        self.out = out

    def write(self, index, region, values):
        self.out[(slice(None),) + index + region] = values

    def item_done(self, index):
        for k in range(self.out.shape[0]) if isinstance(self.out, np.memmap) else ():
            _release(self.out, index, (k,))
        return None


class SemanticLabelsSink(Sink):
    """The most probable class per pixel, written as `napari_unet.conventions.written_labels` says."""

    wants = "classes"

    def __init__(self, out, class_ids):
        self.out = out
        self.lut = written_labels(class_ids)  # class index -> written label

    def write(self, index, region, values):
        classes = values if values.ndim == len(region) else values.argmax(0)
        self.out[index + region] = self.lut[classes]

    def item_done(self, index):
        _release(self.out, index)
        return None


class InstanceLabelsSink(Sink):
    """Instance ids: an item's probabilities are buffered until its last tile, since objects are
    separated over the whole item (`napari_unet.postprocess.instance_labels`); ids are offset so that
    they are unique across the items of a stack, in item order (items must finish in order). With
    ``stitch_planes`` (an overlap), each plane's objects are linked to the previous plane's instead
    (`napari_unet.stitch.PlaneStitcher`: only the previous plane is kept), and trimmed at the end
    unless ``stitch_trim`` is False."""

    def __init__(self, out, item_shape: tuple, num_classes: int, min_size: int | None = None,
                 stitch_planes: float | None = None, spacing=None, min_fraction: float | None = None,
                 stitch_trim: bool = True):
        self.out, self.item_shape, self.num_classes, self.min_size = out, tuple(item_shape), num_classes, min_size
        self.min_fraction = min_fraction
        self.spacing = item_spacing(spacing, self.item_shape)
        self.buffers: dict = {}
        self.next_id = 1
        self.stitcher = PlaneStitcher(stitch_planes) if stitch_planes else None
        self.trim = bool(stitch_trim)

    def write(self, index, region, values):
        buf = self.buffers.get(index)
        if buf is None:
            buf = self.buffers[index] = np.empty((self.num_classes,) + self.item_shape, np.float32)
        buf[(slice(None),) + region] = values

    def item_done(self, index):
        labels = instance_labels(self.buffers.pop(index), min_size=self.min_size, spacing=self.spacing,
                                 min_fraction=self.min_fraction)
        if self.stitcher is not None:
            labels = self.stitcher.add(labels, index)
        else:
            n = int(labels.max())
            labels[labels > 0] += self.next_id - 1
            self.next_id += n
        self.out[index] = labels
        _release(self.out, index)
        return index + tuple(slice(0, s) for s in self.item_shape)

    def finish(self):
        """With stitching, zero the sections the linked chains drop (`napari_unet.stitch.trimmed_sections`):
        a second pass over those planes only, one plane at a time."""
        regions = []
        for index, ids in self.stitcher.dropped() if self.stitcher is not None and self.trim else ():
            zero_ids(self.out, index, ids)
            _release(self.out, index)
            regions.append(index + tuple(slice(0, s) for s in self.item_shape))
        return regions


class Tee(Sink):
    """Several sinks fed by the same forward passes (labels and probabilities in one run)."""

    def __init__(self, *sinks: Sink):
        self.sinks = sinks
        self.wants = "classes" if all(s.wants == "classes" for s in sinks) else "probabilities"

    def write(self, index, region, values):
        for sink in self.sinks:
            sink.write(index, region, values)

    def item_done(self, index):
        regions = [sink.item_done(index) for sink in self.sinks]
        return next((r for r in regions if r is not None), None)

    def finish(self):
        return [r for sink in self.sinks for r in sink.finish()]
