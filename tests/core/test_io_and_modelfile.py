import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import napari_unet as nu
from napari_unet.io import INCOMPLETE_ATTR, read_image
from napari_unet.outputs import OutputFile, write_image
from napari_unet.memory import allocate

from .test_predict import random_model


@pytest.mark.parametrize("ext", [".tif", ".npy", ".zarr"])
def test_write_then_read_roundtrip(tmp_path, ext):
    data = np.random.default_rng(0).integers(0, 1000, (3, 20, 30)).astype(np.uint16)
    path = tmp_path / f"img{ext}"
    write_image(path, data)
    np.testing.assert_array_equal(np.asarray(read_image(path)), data)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary leftovers


def test_big_tiff_is_opened_lazily(tmp_path, monkeypatch):
    import napari_unet.io as io

    monkeypatch.setattr(io, "EAGER_TIFF_BYTES", 1000)
    data = np.arange(4 * 64 * 64, dtype=np.uint16).reshape(4, 64, 64)
    tifffile.imwrite(tmp_path / "a.tif", data, photometric="minisblack")
    tifffile.imwrite(tmp_path / "b.tif", data, compression="zlib", tile=(32, 32), photometric="minisblack")
    a, b = read_image(tmp_path / "a.tif"), read_image(tmp_path / "b.tif")
    assert isinstance(a, np.memmap)
    assert not isinstance(b, np.ndarray)  # a zarr view over the compressed tiles
    np.testing.assert_array_equal(np.asarray(b[2]), data[2])


def test_interrupted_output_leaves_existing_file_byte_for_byte(tmp_path):
    path = tmp_path / "out.tif"
    write_image(path, np.ones((5, 5), np.uint8))  # an earlier napari-unet output
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with OutputFile(path, (5, 5), np.uint8) as out:
            out.array[:2] = 7
            raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_unfinished_zarr_is_marked_incomplete_and_refused(tmp_path):
    out = OutputFile(tmp_path / "o.zarr", (4, 4), np.uint8)
    import zarr

    assert zarr.open(str(out.tmp), mode="r").attrs[INCOMPLETE_ATTR] is True
    with pytest.raises(ValueError, match="interrupted"):
        read_image(out.tmp.with_name(out.tmp.name))  # even under its temporary name
    out.commit()
    assert read_image(tmp_path / "o.zarr").shape == (4, 4)


@pytest.mark.parametrize("content,match", [
    (b"not a tiff at all", "cannot read"),
    (b"II*\x00\x08\x00\x00\x00\xff\xff", "cannot read"),
])
def test_corrupt_tiff_gets_a_clear_error(tmp_path, content, match):
    p = tmp_path / "bad.tif"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_image(p)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown image format"):
        read_image(tmp_path / "x.png")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "x.tif")


def test_allocation_too_big_for_memory_is_refused_with_advice():
    with pytest.raises(MemoryError, match="zarr"):
        allocate((10**6, 10**6), np.float32)


def test_model_roundtrip_predicts_identically(tmp_path):
    model = random_model()
    path = nu.save_model(model, tmp_path / "m.pt")
    loaded = nu.load_model(path)
    assert loaded.config == model.config
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    np.testing.assert_array_equal(nu.predict(model, image), nu.predict(loaded, image))


def _marker_payload(marker):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return Payload()


def test_malicious_model_file_never_runs_code(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"format": "napari-unet-model", "x": _marker_payload(marker)}, tmp_path / "evil.pt")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(_marker_payload(marker), f)
    for name in ("evil.pt", "evil.pkl"):
        with pytest.raises(ValueError, match="never loaded"):
            nu.load_model(tmp_path / name)
    assert not marker.exists()


def test_damaged_and_foreign_model_files(tmp_path):
    good = nu.save_model(random_model(), tmp_path / "m.pt")
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("hello")
    for name, match in [("trunc.pt", "not a napari-unet model"), ("foreign.pt", "plain PyTorch checkpoint"),
                        ("text.pt", "not a PyTorch archive")]:
        with pytest.raises(ValueError, match=match):
            nu.load_model(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        nu.load_model(tmp_path / "missing.pt")


def test_saving_over_an_existing_model_is_atomic(tmp_path, monkeypatch):
    path = nu.save_model(random_model(seed=1), tmp_path / "m.pt")
    before = path.read_bytes()

    def broken_save(payload, target, **kwargs):
        target.write(b"half a model")  # a crash after writing part of the file (save_model passes a file)
        raise error

    monkeypatch.setattr(torch, "save", broken_save)
    for error in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            nu.save_model(random_model(seed=2), path)
        assert path.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_a_failed_commit_leaves_no_temporary_files(tmp_path, monkeypatch, error):
    # TIFF pages are written at commit, the slow part where a full disk or Ctrl-C really happens
    path = tmp_path / "out.tif"
    write_image(path, np.ones((5, 5), np.uint8))  # an earlier napari-unet output
    before = path.read_bytes()

    class BrokenWriter(tifffile.TiffWriter):
        def write(self, *args, **kwargs):
            raise error

    monkeypatch.setattr(tifffile, "TiffWriter", BrokenWriter)
    with pytest.raises(type(error)):
        with OutputFile(path, (3, 5, 5), np.uint8) as out:
            out.array[:] = 7
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


@pytest.mark.parametrize("ext", [".tif", ".zarr"])
def test_attrs_that_cannot_be_stored_are_refused_before_any_file_exists(tmp_path, ext):
    with pytest.raises(TypeError, match="JSON-able"):
        OutputFile(tmp_path / f"out{ext}", (4, 4), np.uint8, attrs={"classes": {1, 2}})
    assert list(tmp_path.iterdir()) == []


def test_commit_together_moves_nothing_until_every_file_is_finished(tmp_path, monkeypatch):
    from napari_unet.outputs import commit_together

    labels_path, prob_path = tmp_path / "labels.tif", tmp_path / "prob.tif"
    write_image(labels_path, np.full((4, 4), 1, np.uint16))  # earlier napari-unet outputs
    write_image(prob_path, np.full((2, 4, 4), 0.5, np.float32))
    old_labels, old_prob = labels_path.read_bytes(), prob_path.read_bytes()
    finish = OutputFile.finish

    def disk_full_on_probabilities(self):
        if self.path == prob_path:
            raise OSError("No space left on device")
        finish(self)

    monkeypatch.setattr(OutputFile, "finish", disk_full_on_probabilities)
    with pytest.raises(OSError):
        with OutputFile(labels_path, (4, 4), np.uint16) as labels, OutputFile(prob_path, (2, 4, 4), np.float32) as prob:
            commit_together(labels, prob)
    assert labels_path.read_bytes() == old_labels and prob_path.read_bytes() == old_prob
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "prob.tif"]

    monkeypatch.setattr(OutputFile, "finish", finish)
    with OutputFile(labels_path, (4, 4), np.uint16) as labels, OutputFile(prob_path, (2, 4, 4), np.float32) as prob:
        labels.array[:] = 3
        commit_together(labels, prob)
    assert read_image(labels_path).max() == 3 and read_image(prob_path).shape == (2, 4, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "prob.tif"]


def test_atomic_path_never_replaces_a_folder_with_a_file(tmp_path):
    from napari_unet.outputs import atomic_path

    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="is a folder"):
        with atomic_path(folder) as tmp:
            tmp.write_text("new")
    assert (folder / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def _unwritable_folder(monkeypatch, tmp_path):
    """Make the model's temporary file land in a folder that cannot be written (as a read-only or
    vanished folder does for a user; root may write anywhere, so the folder is simply missing)."""
    import napari_unet.publish as publish

    monkeypatch.setattr(publish, "temporary_name", lambda path, tag="partial": tmp_path / "gone" / Path(path).name)


def test_saving_a_model_where_it_cannot_be_written_is_an_oserror_saying_where(tmp_path, monkeypatch):
    _unwritable_folder(monkeypatch, tmp_path)
    target = tmp_path / "model.pt"
    with pytest.raises(OSError, match="cannot write .*model.pt"):
        nu.save_model(random_model(), target)
    assert not target.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_saving_a_model_into_a_read_only_folder_is_an_oserror(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OSError, match="cannot write"):
            nu.save_model(random_model(), folder / "model.pt")
    finally:
        folder.chmod(0o700)
