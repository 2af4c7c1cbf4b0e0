"""OME-Zarr label images: written into the input image by `predict`, read back by ome-zarr's own reader."""
import hashlib
import json

import numpy as np
import pytest
import tifffile
import zarr

import napari_unet as nu
from napari_unet import omezarr, omezarr_labels
from napari_unet.cli import main
from napari_unet.predict import plan_prediction
from napari_unet.provenance import PROVENANCE_KEY, label_classes, provenance, weights_sha256

from .test_predict import random_model

ome_writer = pytest.importorskip("ome_zarr.writer")
from ome_zarr.format import FormatV04, FormatV05  # noqa: E402
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Reader  # noqa: E402

FORMATS = {"0.4": FormatV04, "0.5": FormatV05}
SCALE = {"z": 2.0, "y": 0.5, "x": 0.25}
UNITS = {"z": "micrometer", "y": "micrometer", "x": "micrometer"}


def make_image(path, fmt="0.4", channels=None, foreign_label=True, plane=(64, 96)):
    """An OME-Zarr image written by ome-zarr itself (3 levels), optionally with a label of its own."""
    rng = np.random.default_rng(1)
    shape = (2, *plane) if channels is None else (channels, *plane)
    data = (100 + 400 * rng.random(shape)).astype(np.uint16)
    f = FORMATS[fmt]()
    group = zarr.open_group(str(path), mode="w", zarr_format=f.zarr_format)
    axes = "zyx" if channels is None else "cyx"
    scale = {a: SCALE.get(a, 1.0) for a in axes}
    units = {a: UNITS[a] for a in axes if a in UNITS}
    ome_writer.write_image(data, group, scale_factors=[2, 4], axes=axes, fmt=f, scale=scale, axes_units=units)
    if foreign_label:
        ome_writer.write_labels((data > 300).astype(np.uint8), group, name="theirs", fmt=f, scale_factors=[2, 4],
                                axes=axes)
    return data


def tree_digest(root, skip=None):
    """SHA-256 of every file under ``root`` (paths and bytes), leaving out the folder ``skip``."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and (skip is None or skip not in p.parents):
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def run(capsys, *args):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture(params=["0.4", "0.5"])
def store(tmp_path, request):
    nu.save_model(random_model(classes=(1, 2, 3)), tmp_path / "model.pt")
    image = tmp_path / "img.ome.zarr"
    data = make_image(image, request.param)
    return tmp_path, image, data, request.param


def read_with_ome_zarr(path):
    return {node.metadata.get("name"): node for node in Reader(parse_url(str(path)))()}


def test_predict_writes_a_label_image_that_ome_zarr_reads(store, capsys):
    d, image, data, fmt = store
    arrays_before = tree_digest(image, skip=image / "labels")
    theirs_before = tree_digest(image / "labels" / "theirs")
    code, err = run(capsys, "predict", d / "model.pt", image, "-o", image / "labels" / "cells")
    assert code == 0, err
    assert tree_digest(image, skip=image / "labels") == arrays_before  # the image's own files untouched
    assert tree_digest(image / "labels" / "theirs") == theirs_before

    nodes = read_with_ome_zarr(image)  # the image and both of its labels, by ome-zarr's reader
    assert {"theirs", "cells"} <= set(nodes)
    cells = nodes["cells"]
    assert [tuple(a.shape) for a in cells.data] == [tuple(a.shape) for a in nodes["image"].data]
    expected = nu.segment(nu.load_model(d / "model.pt"), data)
    np.testing.assert_array_equal(np.asarray(cells.data[0]), expected)
    assert cells.metadata["properties"] == {0: {"class": "background"}, 2: {"class": "class 2"},
                                            3: {"class": "class 3"}}
    assert set(cells.metadata["color"]) == {0, 2, 3}
    # geometry: the image's transformations and units, level by level
    assert cells.metadata["coordinateTransformations"] == nodes["image"].metadata["coordinateTransformations"]
    assert [a.get("unit") for a in cells.metadata["axes"]] == ["micrometer"] * 3
    assert json.loads((image / "labels" / (".zattrs" if fmt == "0.4" else "zarr.json")).read_text())
    listed = omezarr.read_ome_image(image).labels
    assert listed == ("theirs", "cells")


def test_lower_levels_are_nearest_samples_of_the_labels(store, capsys):
    d, image, data, fmt = store
    assert run(capsys, "predict", d / "model.pt", image, "-o", image / "labels" / "cells")[0] == 0
    group = zarr.open_group(str(image / "labels" / "cells"), mode="r")
    paths = omezarr.read_ome_image(image).paths
    full = group[paths[0]][:]
    np.testing.assert_array_equal(group[paths[1]][:], full[:, 1::2, 1::2])  # pixel centres of 2x2 blocks
    np.testing.assert_array_equal(group[paths[2]][:], full[:, 3::4, 3::4])
    assert group[paths[0]].dtype == np.uint8


def test_odd_sized_levels_match_the_image_and_sample_pixel_centres(tmp_path):
    image = tmp_path / "odd.ome.zarr"
    make_image(image, "0.5", foreign_label=False, plane=(65, 97))
    labels = np.random.default_rng(0).integers(0, 5, (2, 65, 97)).astype(np.uint8)
    omezarr_labels.write_label_image(image, "random", labels)
    ome = omezarr.read_ome_image(image)
    group = zarr.open_group(str(image / "labels" / "random"), mode="r")
    assert [group[p].shape for p in ome.paths] == list(ome.shapes)  # ome-zarr's own rounding of odd sizes
    centres = [np.minimum(((np.arange(n) + 0.5) * m / n).astype(int), m - 1) for m, n in zip(labels.shape, ome.shapes[1])]
    np.testing.assert_array_equal(group[ome.paths[1]][:], labels[np.ix_(*centres)])


def test_provenance_is_in_the_label_image_and_in_tiff_and_zarr_outputs(store, capsys):
    d, image, data, fmt = store
    model = nu.load_model(d / "model.pt")
    assert run(capsys, "predict", d / "model.pt", image, "-o", image / "labels" / "cells")[0] == 0
    attrs = dict(zarr.open_group(str(image / "labels" / "cells"), mode="r").attrs)
    record = attrs[PROVENANCE_KEY]
    assert record["software"] == "napari-unet" and record["version"] == nu.__version__
    assert record["model"]["weights_sha256"] == weights_sha256(model)
    assert record["model"]["file_sha256"] == hashlib.sha256((d / "model.pt").read_bytes()).hexdigest()
    assert record["settings"]["device"] == "cpu" and record["settings"]["halo"] == model.halo
    if fmt == "0.4":  # once is enough for the plain outputs
        assert run(capsys, "predict", d / "model.pt", image, "-o", d / "out.tif", "--probabilities", d / "p.zarr")[0] == 0
        with tifffile.TiffFile(d / "out.tif") as tif:
            assert tif.shaped_metadata[0][PROVENANCE_KEY]["model"]["weights_sha256"] == weights_sha256(model)
        assert PROVENANCE_KEY in zarr.open(str(d / "p.zarr"), mode="r").attrs


def test_instance_labels_and_probabilities_in_one_run(tmp_path, capsys):
    nu.save_model(random_model(mode="instance"), tmp_path / "inst.pt")
    image = tmp_path / "img.ome.zarr"
    make_image(image, "0.5")
    code, err = run(capsys, "predict", tmp_path / "inst.pt", image, "-o", image / "labels" / "objects",
                    "--probabilities", tmp_path / "prob.zarr")
    assert code == 0, err
    node = read_with_ome_zarr(image)["objects"]
    assert "properties" not in node.metadata  # one id per object: no class table
    assert (tmp_path / "prob.zarr").is_dir()  # both outputs appear together


def test_the_labels_group_is_created_whole_when_missing(tmp_path, capsys):
    nu.save_model(random_model(), tmp_path / "model.pt")
    image = tmp_path / "img.ome.zarr"
    make_image(image, "0.5", foreign_label=False)
    assert not (image / "labels").exists()
    assert run(capsys, "predict", tmp_path / "model.pt", image, "-o", image / "labels" / "cells")[0] == 0
    assert omezarr.read_ome_image(image).labels == ("cells",)
    assert "cells" in read_with_ome_zarr(image)
    assert not [p for p in image.iterdir() if p.name.startswith(".")]


def test_channel_axis_of_the_image_is_not_an_axis_of_its_labels(tmp_path, capsys):
    nu.save_model(random_model(in_channels=2), tmp_path / "model.pt")
    image = tmp_path / "img.ome.zarr"
    make_image(image, "0.4", channels=2, foreign_label=False)
    code, err = run(capsys, "predict", tmp_path / "model.pt", image, "-o", image / "labels" / "cells")
    assert code == 0, err  # the channel axis declared in the metadata is used
    cells = read_with_ome_zarr(image)["cells"]
    assert [a["name"] for a in cells.metadata["axes"]] == ["y", "x"] and cells.data[0].shape == (64, 96)
    scales = [t[0]["scale"] for t in cells.metadata["coordinateTransformations"]]
    assert scales == [[0.5, 0.25], [1.0, 0.5], [2.0, 1.0]]


def test_own_label_is_replaced_a_foreign_one_never(store, capsys):
    d, image, data, fmt = store
    out = image / "labels" / "cells"
    assert run(capsys, "predict", d / "model.pt", image, "-o", out)[0] == 0
    nu.save_model(random_model(classes=(1, 2, 3), seed=5), d / "other.pt")
    assert run(capsys, "predict", d / "other.pt", image, "-o", out)[0] == 0  # ours: replaced
    assert omezarr.read_ome_image(image).labels == ("theirs", "cells")  # named once
    record = zarr.open_group(str(out), mode="r").attrs[PROVENANCE_KEY]
    assert record["model"]["file"] == "other.pt"
    before = tree_digest(image)
    code, err = run(capsys, "predict", d / "model.pt", image, "-o", image / "labels" / "theirs")
    assert code == 2 and "did not write" in err and len(err.strip().splitlines()) == 1
    assert tree_digest(image) == before


@pytest.mark.parametrize("existing_labels", [True, False])
def test_interrupted_write_leaves_the_store_as_it_was(tmp_path, capsys, monkeypatch, existing_labels):
    nu.save_model(random_model(), tmp_path / "model.pt")
    image = tmp_path / "img.ome.zarr"
    make_image(image, "0.4", foreign_label=existing_labels)
    before = tree_digest(image)

    def interrupted(source, dest):  # Ctrl-C while the pyramid is computed
        raise KeyboardInterrupt

    monkeypatch.setattr(omezarr_labels, "_downsample_nearest", interrupted)
    code, err = run(capsys, "predict", tmp_path / "model.pt", image, "-o", image / "labels" / "cells")
    assert code == 130
    assert tree_digest(image) == before
    assert not [p for p in image.rglob(".*partial*")]


@pytest.mark.parametrize("output, message", [
    ("other.ome.zarr/labels/cells", "the image they segment"),
    ("img.ome.zarr/labels/two words", "not a label name"),
    ("plain.zarr/labels/cells", "not an OME-Zarr image"),
])
def test_refused_label_outputs_change_nothing(store, capsys, output, message):
    d, image, data, fmt = store
    make_image(d / "other.ome.zarr", fmt, foreign_label=False)
    zarr.open_group(str(d / "plain.zarr"), mode="w")
    before = tree_digest(d)
    code, err = run(capsys, "predict", d / "model.pt", image, "-o", d / output)
    assert code == 2 and message in err, err
    assert tree_digest(d) == before


def test_write_label_image_from_an_array_and_shape_checks(tmp_path):
    image = tmp_path / "img.ome.zarr"
    make_image(image, "0.5")
    labels = np.zeros((2, 64, 96), np.uint16)
    labels[:, 10:20, 30:50] = 7
    written = omezarr_labels.write_label_image(image, "painted", labels, classes={7: "nucleus"})
    assert written == image / "labels" / "painted"
    node = read_with_ome_zarr(image)["painted"]
    np.testing.assert_array_equal(np.asarray(node.data[0]), labels)
    assert node.metadata["properties"] == {7: {"class": "nucleus"}}
    with pytest.raises(ValueError, match="does not match the image"):
        omezarr_labels.write_label_image(image, "wrong", labels[:, :32])
    assert omezarr.read_ome_image(image).labels == ("theirs", "painted")


def test_provenance_record_is_json_and_classes_follow_the_label_conventions():
    model = random_model(classes=(1, 2, 5))
    assert label_classes(model) == {0: "background", 2: "class 2", 5: "class 5"}
    assert label_classes(random_model(mode="instance")) == {}
    record = provenance(model, channel_axis=np.int64(0))
    assert json.loads(json.dumps(record)) == record and record["settings"] == {"channel_axis": 0}
    assert weights_sha256(model) == weights_sha256(random_model(classes=(1, 2, 5)))
    assert weights_sha256(model) != weights_sha256(random_model(classes=(1, 2, 5), seed=1))


def test_provenance_records_the_settings_that_change_the_objects():
    stack = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    semantic = provenance(random_model(), plan=plan_prediction(random_model(), stack[0]))["settings"]
    assert semantic["tta"] is False and "stitch_planes" not in semantic  # no objects: no object rules
    model = random_model(mode="instance")
    linked = provenance(model, plan=plan_prediction(model, stack, stitch_planes=0.6, stitch_trim=False))["settings"]
    assert linked["stitch_planes"] == 0.6 and linked["stitch_trim"] is False and "min_fraction" in linked
    plain = provenance(model, plan=plan_prediction(model, stack, min_fraction=0))["settings"]
    assert plain["stitch_planes"] is None and "stitch_trim" not in plain and plain["min_fraction"] == 0
    assert json.loads(json.dumps(linked)) == linked


def test_probabilities_into_the_labels_group_are_refused_before_any_work(store, capsys):
    d, image, _, _ = store
    before = tree_digest(image)
    code, err = run(capsys, "predict", d / "model.pt", image, "-o", image / "labels" / "cells",
                    "--probabilities", image / "labels" / "p")
    assert code == 2
    assert "labels group, which holds label images only" in err
    assert tree_digest(image) == before  # neither the labels nor anything else was written
