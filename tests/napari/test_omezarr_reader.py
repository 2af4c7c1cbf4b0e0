"""OME-Zarr in the viewer: images open with their labels, segmentations carry their classes and provenance
and are saved back into the image, and what napari-unet writes opens in napari-ome-zarr."""
import dask.array as da
import numpy as np
import pytest
import zarr
from napari.layers import Image, Labels
from qtpy.QtCore import Qt

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.omezarr import read_ome_image
from napari_unet.provenance import PROVENANCE_KEY, weights_sha256

from tests.core.test_predict import random_model

from .conftest import wait_until

pytest.importorskip("ome_zarr")
from tests.core.test_omezarr import make_image, read_with_ome_zarr, tree_digest  # noqa: E402


@pytest.mark.parametrize("fmt", ["0.4", "0.5"])
def test_cli_label_image_opens_in_napari_ome_zarr_and_in_ours(make_napari_viewer, tmp_path, fmt):
    pytest.importorskip("napari_ome_zarr")
    image = tmp_path / "img.ome.zarr"
    make_image(image, fmt)
    nu.save_model(random_model(classes=(1, 2, 3)), tmp_path / "m.pt")
    assert main(["predict", str(tmp_path / "m.pt"), str(image), "-o", str(image / "labels" / "cells")]) == 0
    level0 = read_ome_image(image).paths[0]
    expected = zarr.open_group(str(image / "labels" / "cells"), mode="r")[level0][:]
    viewer = make_napari_viewer()
    theirs = viewer.open(str(image), plugin="napari-ome-zarr")
    labels = [layer for layer in theirs if isinstance(layer, Labels) and layer.name.endswith("cells")]
    assert len(labels) == 1
    np.testing.assert_array_equal(np.asarray(labels[0].data[0]), expected)
    assert labels[0].multiscale and len(labels[0].data) == 3

    ours = viewer.open(str(image), plugin="napari-unet")
    kinds = [(type(layer).__name__, layer.name) for layer in ours]
    assert kinds == [("Image", "img"), ("Labels", "theirs"), ("Labels", "cells")]
    img, cells = ours[0], ours[2]
    assert img.multiscale and isinstance(img.data[0], da.Array)  # lazy, every level
    np.testing.assert_allclose(img.scale, [2.0, 0.5, 0.25])
    assert [str(u) for u in img.units] == ["micrometer"] * 3 and tuple(img.axis_labels) == ("z", "y", "x")
    np.testing.assert_allclose(cells.scale, img.scale)
    np.testing.assert_array_equal(np.asarray(cells.data[0]), expected)
    assert list(cells.features["class"]) == ["background", "class 2", "class 3"]
    assert cells.metadata[PROVENANCE_KEY]["model"]["weights_sha256"] == weights_sha256(nu.load_model(tmp_path / "m.pt"))
    assert cells.metadata["ome_zarr"] == {"image": str(image), "label": "cells"}


def test_segmentation_of_an_ome_zarr_image_is_saved_back_into_it(make_napari_viewer, qtbot, tmp_path, notifications):
    from napari_unet._napari._store import STORE

    image = tmp_path / "img.ome.zarr"
    make_image(image, "0.5")
    viewer = make_napari_viewer()
    img, theirs = viewer.open(str(image), plugin="napari-unet")
    assert isinstance(img, Image) and isinstance(theirs, Labels)
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment with UNet")
    model = random_model(classes=(1, 2, 3))
    STORE.set(model, "test")
    segment.image.value = img
    qtbot.mouseClick(segment.segment_button.native, Qt.MouseButton.LeftButton)
    wait_until(qtbot, lambda: not segment.running, timeout=60)
    seg = viewer.layers["img segmentation"]
    assert dict(zip(seg.features["index"], seg.features["class"])) == {0: "background", 2: "class 2", 3: "class 3"}
    record = seg.metadata[PROVENANCE_KEY]
    assert record["model"]["weights_sha256"] == weights_sha256(model) and record["settings"]["device"] == "cpu"
    assert seg.metadata["ome_zarr"]["image"] == str(image)
    np.testing.assert_allclose(seg.scale, img.scale)
    assert seg.units == img.units and tuple(seg.axis_labels) == ("z", "y", "x")

    before = tree_digest(image, skip=image / "labels")
    seg.save(str(image), plugin="napari-unet")  # saving to the image writes a label image into it
    assert tree_digest(image, skip=image / "labels") == before
    node = read_with_ome_zarr(image)["img_segmentation"]
    np.testing.assert_array_equal(np.asarray(node.data[0]), np.asarray(seg.data))
    assert node.metadata["properties"][2] == {"class": "class 2"}
    assert zarr.open_group(str(image / "labels" / "img_segmentation"), mode="r").attrs[PROVENANCE_KEY] == record
    seg.save(str(tmp_path / "seg.tif"), plugin="napari-unet")  # a plain file keeps the provenance too
    back, = viewer.open(str(tmp_path / "seg.tif"), plugin="napari-unet")
    assert isinstance(back, Labels) and back.metadata[PROVENANCE_KEY] == record

    before = tree_digest(image)
    with pytest.warns(UserWarning, match="not a valid writer"):  # napari turns the writer's refusal into this
        theirs.save(str(image), plugin="napari-unet")  # it came from labels/theirs: never replaced
    assert tree_digest(image) == before
    assert any("did not write" in m for s, m in notifications if "error" in s)  # the reason is shown


def test_a_clicked_object_starts_a_layer_with_provenance_and_source(make_napari_viewer, qtbot, tmp_path):
    import torch

    from napari_unet._napari._store import STORE

    image = tmp_path / "img.ome.zarr"
    make_image(image, "0.4", foreign_label=False)
    viewer = make_napari_viewer()
    img, = viewer.open(str(image), plugin="napari-unet")
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment with UNet")
    model = random_model(classes=(1, 2, 3))
    with torch.no_grad():  # class 2 everywhere: the click always finds an object
        model.network.head.bias.copy_(torch.tensor([-20.0, 20.0, -20.0]))
    STORE.set(model, "test")
    segment.image.value = img
    segment.segment_at(img.data_to_world((1, 32, 48)))
    wait_until(qtbot, lambda: "img segmentation" in viewer.layers, timeout=30)
    seg = viewer.layers["img segmentation"]
    assert "class" not in seg.features  # a clicked object's id is its own, not its class id
    assert seg.metadata[PROVENANCE_KEY]["model"]["weights_sha256"] == weights_sha256(model)
    assert seg.metadata["ome_zarr"] == {"image": str(image), "label": "img_segmentation"}
