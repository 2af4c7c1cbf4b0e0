"""Nothing lost, nothing run, no silent garbage (issue 11, first part): each case as a user meets it."""
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import tifffile
import torch

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.data import semantic_targets
from napari_unet.train import resolve_settings

from .test_predict import random_model


@pytest.fixture
def files(tmp_path, blobs):
    image, strokes, _ = blobs
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", strokes)
    nu.save_model(random_model(), tmp_path / "good.pt")
    return tmp_path


def run(capsys, *args):
    code = main([str(a) for a in args])
    _, err = capsys.readouterr()
    return code, err


def test_train_never_writes_its_model_over_an_input(files, capsys):
    before = (files / "labels.tif").read_bytes()
    code, err = run(capsys, "train", "-i", files / "img.tif", "-l", files / "labels.tif", "-o", files / "labels.tif")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert (files / "labels.tif").read_bytes() == before
    # the same file under another name: a hard link and a symbolic link
    os.link(files / "labels.tif", files / "hard.pt")
    os.symlink(files / "img.tif", files / "soft.pt")
    for alias in ("hard.pt", "soft.pt"):
        code, err = run(capsys, "train", "-i", files / "img.tif", "-l", files / "labels.tif", "-o", files / alias)
        assert code == 2 and "is the input" in err
    assert (files / "labels.tif").read_bytes() == before


def test_a_model_goes_only_to_a_model_path(files, capsys):
    code, err = run(capsys, "train", "-i", files / "img.tif", "-l", files / "labels.tif", "-o", files / "out.tif")
    assert code == 2 and "model files end in .pt" in err and not (files / "out.tif").exists()
    (files / "notes.pt").write_text("my notes")
    code, err = run(capsys, "train", "-i", files / "img.tif", "-l", files / "labels.tif", "-o", files / "notes.pt")
    assert code == 2 and "is not a napari-unet model" in err
    assert (files / "notes.pt").read_text() == "my notes"
    with pytest.raises(ValueError, match="is never replaced"):  # the API refuses the same
        nu.save_model(random_model(), files / "notes.pt")
    assert (files / "notes.pt").read_text() == "my notes"


def test_a_run_that_did_no_step_never_replaces_a_model(files, capsys):
    before = (files / "good.pt").read_bytes()
    code, err = run(capsys, "train", "-i", files / "img.tif", "-l", files / "labels.tif", "-o", files / "good.pt",
                    "--time-budget", "0.001", "--depth", "2", "--base-channels", "4")
    assert code == 1 and "nothing was saved" in err and "after 0 steps" in err
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert (files / "good.pt").read_bytes() == before


def test_predict_never_writes_over_its_input_under_another_name(files, capsys):
    os.symlink(files / "img.tif", files / "alias.tif")
    before = (files / "img.tif").read_bytes()
    for out in ("alias.tif", "img.tif"):
        code, err = run(capsys, "predict", files / "good.pt", files / "img.tif", "-o", files / out)
        assert code == 2 and "is the input" in err
    code, err = run(capsys, "predict", files / "good.pt", files / "img.tif", "-o", files / "a.tif",
                    "--probabilities", files / "a.tif")
    assert code == 2 and "same file" in err
    assert (files / "img.tif").read_bytes() == before and not (files / "a.tif").exists()


def test_an_rgb_image_is_never_segmented_per_colour(files, capsys, blobs):
    image, _, _ = blobs
    tifffile.imwrite(files / "rgb.tif", np.stack([image] * 3, axis=-1), photometric="rgb")
    code, err = run(capsys, "predict", files / "good.pt", files / "rgb.tif", "-o", files / "out.tif")
    assert code == 2 and "looks like RGB" in err and "--channel-axis -1" in err
    assert not (files / "out.tif").exists()
    with pytest.raises(ValueError, match="looks like RGB"):
        nu.segment(random_model(), np.stack([image] * 4, axis=-1))


def test_instance_masks_are_not_trained_as_74_classes(blobs, capsys, tmp_path):
    image, _, _ = blobs
    masks = np.zeros(image.shape, np.uint16)
    for k in range(74):  # 74 small objects, one id each
        y, x = divmod(k, 10)
        masks[2 + 9 * y:7 + 9 * y, 2 + 12 * x:8 + 12 * x] = k + 1
    with pytest.raises(ValueError, match="74 different ids.*mode='instance'.*max_classes=74"):
        resolve_settings([image], [masks], mode="semantic")
    settings, _ = resolve_settings([image], [masks], mode="semantic", max_classes=74)  # on purpose
    assert settings.config.num_classes == 74
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "masks.tif", masks)
    code, err = run(capsys, "train", "-i", tmp_path / "img.tif", "-l", tmp_path / "masks.tif", "-o",
                    tmp_path / "m.pt")
    assert code == 2 and "--mode instance" in err and "--max-classes 74" in err


def test_a_huge_sentinel_id_allocates_no_table_its_size():
    labels = np.zeros((64, 64), np.uint32)
    labels[:8] = 2**32 - 1
    labels[8:16] = 1
    labels[16:24] = 2
    tracemalloc.start()
    target = semantic_targets(labels, (1, 2, 2**32 - 1))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 * labels.size * 8  # a 2**32-entry table would be 32 GiB
    assert (target[:8] == 2).all() and (target[8:16] == 0).all() and (target[16:24] == 1).all()
    assert (target[24:] == -1).all()


def test_a_small_file_declaring_a_huge_network_is_refused_before_it_is_built(tmp_path):
    nu.save_model(random_model(), tmp_path / "small.pt")
    payload = torch.load(tmp_path / "small.pt", weights_only=True)
    config = json.loads(payload["config"])
    config.update(depth=7, base_channels=512)  # ~3.5 G parameters if it were built
    payload["config"] = json.dumps(config)
    torch.save(payload, tmp_path / "huge.pt")
    # VmHWM is the peak of this process's own memory. ru_maxrss is not: Linux carries the parent's
    # peak over exec, so after a long test session it reported pytest's gigabytes, not the child's.
    code = ("import re, sys, napari_unet as nu\n"
            "try:\n    nu.load_model(sys.argv[1])\nexcept ValueError as e:\n    print(e)\n"
            "print(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "huge.pt")], capture_output=True, text=True,
                       timeout=300)
    message, peak_kib = r.stdout.strip().splitlines()
    assert "do not match the configuration" in message
    assert int(peak_kib) < 2 * 2**20  # well under the 14 GB the network would take


def _pickled_zarr(root, fmt):
    """A zarr store whose one array says it decodes with pickle: a multiscale level, written by hand."""
    import zarr

    good = zarr.open_array(str(root / "0"), mode="w", shape=(64, 64), dtype="u2", zarr_format=fmt)
    good[:] = 7
    bad = root / "1"
    bad.mkdir()
    if fmt == 2:
        meta = {"chunks": [32, 32], "compressor": None, "dtype": "|O", "fill_value": 0, "order": "C",
                "filters": [{"id": "pickle", "protocol": 5}], "shape": [32, 32], "zarr_format": 2}
        (bad / ".zarray").write_text(json.dumps(meta))
    else:
        meta = {"zarr_format": 3, "node_type": "array", "shape": [32, 32], "data_type": "uint16",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [32, 32]}},
                "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
                "codecs": [{"name": "sharding_indexed", "configuration": {
                    "chunk_shape": [16, 16], "codecs": [{"name": "pickle"}], "index_codecs": []}}]}
        (bad / "zarr.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_stores_that_decode_python_objects_are_refused(tmp_path, capsys, fmt):
    from napari_unet.io import read_image

    store = _pickled_zarr(tmp_path / "evil.zarr", fmt)
    with pytest.raises(ValueError, match="pickle codec.*never read"):
        read_image(store)
    nu.save_model(random_model(), tmp_path / "m.pt")
    code, err = run(capsys, "predict", tmp_path / "m.pt", store, "-o", tmp_path / "out2.tif")
    assert code == 2 and "never read" in err and not (tmp_path / "out2.tif").exists()


def test_a_whole_image_pass_that_cannot_fit_is_refused(files, capsys, monkeypatch):
    import napari_unet.memory

    monkeypatch.setattr(napari_unet.memory, "available_memory", lambda: 2**20)  # 1 MiB free
    image = np.zeros((512, 512), np.float32)
    with pytest.raises(MemoryError, match="use tiles \\(tile='auto'\\)"):
        nu.segment(random_model(), image, tile=None)
    code, err = run(capsys, "predict", files / "good.pt", files / "img.tif", "-o", files / "out.tif",
                    "--tile", "none")
    assert code == 1 and "use tiles (--tile auto)" in err and not (files / "out.tif").exists()


def test_an_output_the_disk_cannot_hold_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import shutil as sh

    from napari_unet.outputs import OutputFile

    monkeypatch.setattr(sh, "disk_usage", lambda path: sh._ntuple_diskusage(10**12, 10**12 - 10**6, 10**6))
    for ext in (".tif", ".npy"):
        with pytest.raises(OSError, match="needs about .* GiB but only 0.0 GiB are free"):
            OutputFile(tmp_path / f"big{ext}", (64, 4096, 4096), np.uint16)
    assert list(tmp_path.iterdir()) == []  # no scratch file, no partial output
    with OutputFile(tmp_path / "small.tif", (4, 4), np.uint8) as out:  # what fits is written as before
        out.array[:] = 1
        out.commit()
    assert (tmp_path / "small.tif").exists()


def test_the_codec_check_never_lists_an_arrays_chunks(tmp_path, monkeypatch):
    """Opening a big zarr must not walk its (possibly millions of) chunk files first."""
    import zarr
    from pathlib import Path

    from napari_unet.io import read_image

    z = zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=(64, 64, 64), chunks=(1, 8, 8), dtype="u2",
                        zarr_format=2)
    z[:] = 1
    listed = []
    scandir, listdir = os.scandir, os.listdir

    def spy_scandir(path="."):
        listed.append(Path(path).name)
        return scandir(path)

    def spy_listdir(path="."):
        listed.append(Path(path).name)
        return listdir(path)

    monkeypatch.setattr(os, "scandir", spy_scandir)
    monkeypatch.setattr(os, "listdir", spy_listdir)
    assert read_image(tmp_path / "big.zarr").shape == (64, 64, 64)
    assert "big.zarr" not in listed  # an array's folder is read for its metadata only


def test_a_channel_stack_is_never_segmented_as_planes(files, capsys, blobs):
    image, _, _ = blobs
    channels = np.stack([image, image // 2, image // 3])
    tifffile.imwrite(files / "cyx.tif", channels, imagej=True, metadata={"axes": "CYX"})
    code, err = run(capsys, "predict", files / "good.pt", files / "cyx.tif", "-o", files / "out.tif")
    assert code == 2 and "1 channel(s) but the image has 3" in err and "declares axis 0 as its channels" in err
    assert not (files / "out.tif").exists()
    nu.save_model(random_model(in_channels=3), files / "rgb3.pt")  # a three-channel model takes it as it is
    code, err = run(capsys, "predict", files / "rgb3.pt", files / "cyx.tif", "-o", files / "out.tif")
    assert code == 0, err
    assert tifffile.imread(files / "out.tif").shape == image.shape
    tifffile.imwrite(files / "zyx.tif", channels)  # no axes declared: three planes of a stack
    code, err = run(capsys, "predict", files / "good.pt", files / "zyx.tif", "-o", files / "planes.tif")
    assert code == 0 and tifffile.imread(files / "planes.tif").shape == channels.shape
