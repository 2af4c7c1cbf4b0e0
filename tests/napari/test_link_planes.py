"""Segment with UNet's "Link objects across planes": a 2D instance model's objects become 3D objects."""
import numpy as np
from qtpy.QtCore import Qt

from napari_unet._napari._store import STORE

from ..core.test_stitch import thresholding_model, trimmed_stack
from .conftest import click_checkbox, messages, random_model, wait_until

LEFT = Qt.MouseButton.LeftButton


def _segment(qtbot, segment):
    qtbot.mouseClick(segment.segment_button.native, LEFT)
    wait_until(qtbot, lambda: not segment.running, timeout=60)


def test_link_objects_across_planes_gives_3d_objects(plugin_viewer, qtbot, notifications):
    viewer, _, segment = plugin_viewer
    plane = np.asarray(viewer.layers["nuclei"].data)[:192, :192]
    viewer.add_image(np.stack([plane] * 4), name="zstack")  # the same plane 4 times: objects in every plane
    segment.image.value = viewer.layers["zstack"]
    STORE.set(random_model(mode="semantic"), "semantic")
    assert not segment.link_planes.visible  # semantic: nothing to link
    STORE.set(random_model(mode="instance"), "instance")
    assert segment.link_planes.visible and not segment.link_planes.value  # offered, never on by default
    assert not segment.trim_links.visible  # what linking does: shown with it only

    _segment(qtbot, segment)
    seg = np.asarray(viewer.layers["zstack segmentation"].data)
    ids = [set(np.unique(seg[z])) - {0} for z in range(4)]
    assert ids[0] and all(ids[0].isdisjoint(ids[z]) for z in range(1, 4))  # one id per object per plane

    click_checkbox(qtbot, segment.link_planes)
    assert segment.link_planes.value
    assert segment.trim_links.visible and segment.trim_links.value  # trimmed by default
    _segment(qtbot, segment)
    assert not messages(notifications, "error"), messages(notifications, "error")
    linked = np.asarray(viewer.layers["zstack segmentation"].data)
    assert all(set(np.unique(linked[z])) - {0} == set(np.unique(linked[0])) - {0} for z in range(4))
    assert len(set(np.unique(linked)) - {0}) == len(ids[0])  # each object one 3D id through the 4 planes

    # a stack whose objects are known: a nucleus' small cap and an object seen in one plane only are
    # dropped by default, and kept once "Trim linked objects' ends" is unticked
    image, dropped = trimmed_stack()
    segment.image.value = viewer.add_image(image, name="trim")
    STORE.set(thresholding_model(), "instance")
    _segment(qtbot, segment)
    trimmed = np.asarray(viewer.layers["trim segmentation"].data)
    assert trimmed.any() and not trimmed[dropped].any()
    click_checkbox(qtbot, segment.trim_links)
    assert not segment.trim_links.value
    _segment(qtbot, segment)
    assert not messages(notifications, "error"), messages(notifications, "error")
    kept = np.asarray(viewer.layers["trim segmentation"].data)
    assert (kept[dropped] > 0).all() and ((kept > 0) == (image > 0.5)).all()
    click_checkbox(qtbot, segment.link_planes)  # no linking: nothing to trim, the option goes away
    assert not segment.trim_links.visible

    segment.image.value = viewer.layers["nuclei"]  # a single plane: nothing to link
    assert not segment.link_planes.visible and not segment.trim_links.visible
