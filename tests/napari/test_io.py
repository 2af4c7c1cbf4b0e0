"""Reader and writer through napari: roundtrips, lazy opening of big files, OME-Zarr pyramids."""
import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from napari.layers import Image, Labels

from napari_unet._napari import _reader
from napari_unet._napari._reader import get_reader, read_layers


@pytest.mark.parametrize("ext", [".tif", ".zarr"])
def test_labels_roundtrip_through_napari(make_napari_viewer, tmp_path, ext):
    viewer = make_napari_viewer()
    data = np.zeros((3, 40, 50), np.int32)
    data[0, 5:10, 5:10] = 1
    data[2, 20:30, 10:40] = 70000  # needs more than 16 bits
    layer = viewer.add_labels(data, name="seg")
    path = tmp_path / f"seg{ext}"
    layer.save(str(path), plugin="napari-unet")
    assert path.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]  # nothing left half-written
    viewer.layers.remove(layer)
    opened = viewer.open(str(path), plugin="napari-unet")
    assert len(opened) == 1
    back = opened[0]
    assert isinstance(back, Labels)  # the writer tags the file so it comes back as labels, not an image
    np.testing.assert_array_equal(np.asarray(back.data), data)
    assert back.name == "seg"


def test_multiscale_labels_are_saved_at_full_resolution(make_napari_viewer, tmp_path):
    base = np.zeros((64, 96), np.uint16)
    base[10:30, 20:50] = 3
    viewer = make_napari_viewer()
    layer = viewer.add_labels([base, base[::2, ::2], base[::4, ::4]], name="pyramid labels")
    assert layer.multiscale
    path = tmp_path / "pyramid.tif"
    layer.save(str(path), plugin="napari-unet")
    back, = viewer.open(str(path), plugin="napari-unet")
    assert isinstance(back, Labels)
    np.testing.assert_array_equal(np.asarray(back.data), base)


def test_cli_segmentation_opens_as_labels_and_images_stay_images(make_napari_viewer, tmp_path):
    import napari_unet as nu
    from napari_unet.cli import main

    from tests.core.test_predict import random_model

    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    tifffile.imwrite(tmp_path / "img.tif", image)
    nu.save_model(random_model(), tmp_path / "m.pt")
    assert main(["predict", str(tmp_path / "m.pt"), str(tmp_path / "img.tif"), "-o", str(tmp_path / "seg.tif"),
                 "--probabilities", str(tmp_path / "prob.tif")]) == 0
    viewer = make_napari_viewer()
    seg, = viewer.open(str(tmp_path / "seg.tif"), plugin="napari-unet")
    img, = viewer.open(str(tmp_path / "img.tif"), plugin="napari-unet")
    prob, = viewer.open(str(tmp_path / "prob.tif"), plugin="napari-unet")
    assert isinstance(seg, Labels) and isinstance(img, Image) and isinstance(prob, Image)
    np.testing.assert_array_equal(np.asarray(seg.data), nu.segment(random_model(), image))


def test_writer_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    from napari_unet._napari._writer import write_labels

    path = tmp_path / "out.tif"
    write_labels(str(path), np.ones((4, 4), np.uint8), {})  # saved earlier with this writer

    class Exploding:
        shape, dtype, ndim = (3, 8, 8), np.dtype(np.uint8), 3

        def __getitem__(self, index):
            if index[0] == 2:
                raise OSError("disk went away")
            return np.zeros((8, 8), np.uint8)

    with pytest.raises(OSError):
        write_labels(str(path), Exploding(), {})
    np.testing.assert_array_equal(tifffile.imread(path), np.ones((4, 4), np.uint8))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]
    with pytest.raises(ValueError, match="integers"):
        write_labels(str(tmp_path / "f.tif"), np.zeros((4, 4), np.float32), {})

    # planes bigger than a block are copied in blocks of rows, and come out whole
    monkeypatch.setattr("napari_unet.outputs.BLOCK_PIXELS", 100)
    labels = np.random.default_rng(0).integers(0, 9, (2, 37, 30)).astype(np.uint16)
    for name in ("rows.zarr", "rows.tif"):
        write_labels(str(tmp_path / name), labels, {})
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "rows.zarr"), mode="r")[:], labels)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "rows.tif"), labels)


def test_big_tiff_opens_lazily(tmp_path, monkeypatch):
    stack = np.random.default_rng(0).integers(0, 4000, (6, 64, 80)).astype(np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack)
    (data, meta, kind), = read_layers(str(path))
    assert isinstance(data, np.ndarray) and kind == "image"  # small: read into memory
    import napari_unet.io as nio

    monkeypatch.setattr(nio, "EAGER_TIFF_BYTES", 1000)  # treat it as big
    (data, meta, kind), = read_layers(str(path))
    assert isinstance(data, da.Array) and data.chunksize == (1, 64, 80)  # whole (small) planes
    np.testing.assert_array_equal(data[3].compute(), stack[3])
    compressed = tmp_path / "compressed.tif"
    tifffile.imwrite(compressed, stack, compression="zlib")
    (data, _, _), = read_layers(str(compressed))
    assert isinstance(data, da.Array)
    np.testing.assert_array_equal(np.asarray(data), stack)


def test_tiff_pyramid_and_ome_zarr_open_as_multiscale(make_napari_viewer, tmp_path):
    base = np.random.default_rng(1).integers(0, 255, (128, 96)).astype(np.uint8)
    levels = [base, base[::2, ::2], base[::4, ::4]]
    pyramid = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(pyramid) as tw:
        tw.write(levels[0], subifds=2)
        for level in levels[1:]:
            tw.write(level, subfiletype=1)
    group_path = tmp_path / "image.zarr"
    group = zarr.open_group(str(group_path), mode="w")
    for i, level in enumerate(levels):
        group.create_array(str(i), data=level, chunks=(32, 32))
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "y"}, {"name": "x"}],
                                   "datasets": [{"path": str(i)} for i in range(3)]}]
    viewer = make_napari_viewer()
    for path in (pyramid, group_path):
        layer, = viewer.open(str(path), plugin="napari-unet")
        assert isinstance(layer, Image) and layer.multiscale
        assert [tuple(d.shape) for d in layer.data] == [(128, 96), (64, 48), (32, 24)]
        assert isinstance(layer.data[0], da.Array)
        np.testing.assert_array_equal(np.asarray(layer.data[1]), levels[1])


def test_reader_refuses_interrupted_outputs_and_other_files(tmp_path):
    from napari_unet.io import INCOMPLETE_ATTR

    arr = zarr.open_array(str(tmp_path / "partial.zarr"), mode="w", shape=(8, 8), dtype=np.uint8)
    arr.attrs[INCOMPLETE_ATTR] = True
    with pytest.raises(ValueError, match="interrupted"):
        read_layers(str(tmp_path / "partial.zarr"))
    assert get_reader(str(tmp_path / "image.png")) is None
    assert get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None
    assert get_reader(str(tmp_path / "a.TIFF")) is _reader.read_layers


@pytest.mark.parametrize("fmt", [2, 3])
def test_reader_refuses_zarr_that_decodes_python_objects_in_any_level(tmp_path, fmt):
    """An OME-Zarr pyramid one of whose levels says "pickle" never reaches zarr's decoders."""
    from tests.core.test_safety import _pickled_zarr

    store = _pickled_zarr(tmp_path / "evil.zarr", fmt)
    g = zarr.open_group(str(store), mode="a", zarr_format=fmt)
    g.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}, {"path": "1"}],
                               "axes": [{"name": "y"}, {"name": "x"}]}]
    with pytest.raises(ValueError, match="never read"):
        read_layers(str(store))
