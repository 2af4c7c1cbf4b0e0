import subprocess
import sys

import numpy as np
import pytest
import tifffile

import napari_unet as nu
from napari_unet.cli import main

from .test_predict import random_model


@pytest.fixture
def files(tmp_path, blobs):
    image, strokes, truth = blobs
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "strokes.tif", strokes)
    np.save(tmp_path / "img.npy", image)
    nu.save_model(random_model(), tmp_path / "model.pt")
    return tmp_path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def previous_result(path, value=1):
    """An earlier napari-unet output at ``path`` (which a new run may replace); returns its bytes."""
    from napari_unet.io import LABELS_ATTRS
    from napari_unet.outputs import write_image

    write_image(path, np.full((4, 4), value, np.uint8), attrs=LABELS_ATTRS)
    return path.read_bytes()


def test_train_predict_info_roundtrip(files, capsys):
    d = files
    code, _, err = run(capsys, "train", "-i", d / "img.tif", "-l", d / "strokes.tif", "-o", d / "new.pt",
                       "--epochs", 2, "--depth", 2, "--base-channels", 8, "--seed", 0)
    assert code == 0, err
    code, out, _ = run(capsys, "info", d / "new.pt")
    assert code == 0 and "2D UNet, depth 2" in out and "semantic" in out
    for ext in (".tif", ".zarr", ".npy"):
        code, _, err = run(capsys, "predict", d / "new.pt", d / "img.tif", "-o", d / f"labels{ext}",
                           "--probabilities", d / f"prob{ext}", "--tile", 64)
        assert code == 0, err
        labels = np.asarray(nu.io.read_image(d / f"labels{ext}"))
        np.testing.assert_array_equal(labels, nu.segment(nu.load_model(d / "new.pt"), np.asarray(
            tifffile.imread(d / "img.tif")), tile=64))
        assert nu.io.read_image(d / f"prob{ext}").shape == (2,) + labels.shape


@pytest.mark.parametrize("args,match", [
    (["predict", "{d}/model.pt", "{d}/missing.tif", "-o", "{d}/out.tif"], "does not exist"),
    (["predict", "{d}/img.tif", "{d}/img.tif", "-o", "{d}/out.tif"], "not a napari-unet model"),
    (["predict", "{d}/model.pt", "{d}/img.tif", "-o", "{d}/out.png"], "unknown output format"),
    (["predict", "{d}/model.pt", "{d}/img.tif", "-o", "{d}/out.tif", "--tile", "0"], "tile size 0"),
    (["predict", "{d}/model.pt", "{d}/img.tif", "-o", "{d}/out.tif", "--device", "quantum"], "unknown device"),
    (["predict", "{d}/model.pt", "{d}/img.tif", "-o", "{d}/nodir/out.tif"], "does not exist"),
    (["train", "-i", "{d}/img.tif", "-l", "{d}/img.tif", "-o", "{d}/m2.pt", "--time-budget", "-1"], "time budget"),
    (["train", "-i", "{d}/img.tif", "-l", "{d}/zeros.npy", "-o", "{d}/m2.pt", "--epochs", "1"], "no annotation"),
    (["train", "-i", "{d}/img.tif", "-l", "{d}/small.npy", "-o", "{d}/m2.pt", "--epochs", "1"], "must match"),
    (["train", "-i", "{d}/img.tif", "-l", "{d}/float.npy", "-o", "{d}/m2.pt", "--epochs", "1"], "whole numbers"),
    (["train", "-i", "{d}/img.tif", "-o", "{d}/m2.pt"], "required"),
    (["bogus"], "invalid choice"),
])
def test_bad_input_exit_2_one_line_and_no_output(files, capsys, args, match):
    d = files
    np.save(d / "zeros.npy", np.zeros((96, 128), np.uint8))
    np.save(d / "small.npy", np.ones((10, 10), np.uint8))
    np.save(d / "float.npy", np.full((96, 128), 0.5, np.float32))
    precious = previous_result(d / "out.tif")
    before = sorted(p.name for p in d.iterdir())
    code, out, err = run(capsys, *[a.format(d=d) for a in args])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in d.iterdir()) == before
    assert (d / "out.tif").read_bytes() == precious


def test_model_that_does_not_fit_the_image(files, capsys):
    d = files
    nu.save_model(random_model(in_channels=3), d / "rgb.pt")
    code, _, err = run(capsys, "predict", d / "rgb.pt", d / "img.tif", "-o", d / "o.tif")
    assert code == 2 and "3 channels" in err


def test_console_script_runs_without_a_display(files):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(files)}
    result = subprocess.run([sys.executable, "-m", "napari_unet.cli", "info", str(files / "model.pt")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "napari-unet model" in result.stdout


def test_more_bad_inputs_leave_existing_output_untouched(files, capsys):
    d = files
    (d / "corrupt.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    np.save(d / "nan.npy", np.full((64, 64), np.nan, np.float32))
    np.save(d / "nan_labels.npy", np.full((64, 64), np.nan, np.float32))  # -i and -l may not name one file
    data = (d / "model.pt").read_bytes()
    (d / "trunc.pt").write_bytes(data[: len(data) // 3])
    nu.save_model(random_model(dims=3), d / "model3d.pt")
    precious = previous_result(d / "out.tif")
    cases = [
        (["predict", d / "model.pt", d / "corrupt.tif", "-o", d / "out.tif"], "cannot read"),
        (["predict", d / "model.pt", d / "nan.npy", "-o", d / "out.tif"], "no finite values"),
        (["predict", d / "trunc.pt", d / "img.tif", "-o", d / "out.tif"], "not a napari-unet model"),
        (["predict", d / "model3d.pt", d / "img.tif", "-o", d / "out.tif"], "3D model"),
        (["train", "-i", d / "nan.npy", "-l", d / "nan_labels.npy", "-o", d / "m.pt"], "whole numbers"),
        (["train", "-i", d / "img.tif", "-l", d / "strokes.tif", "-o", d / "out.tif"], "model files end in .pt"),
        (["train", "-i", d / "corrupt.tif", "-l", d / "strokes.tif", "-o", d / "m.pt"], "cannot read"),
    ]
    for args, match in cases:
        code, _, err = run(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and match in err, (args, err)
        assert (d / "out.tif").read_bytes() == precious
    assert not list(d.glob(".*partial*"))


def test_malicious_model_never_runs_code_from_the_command_line(files, capsys):
    import os
    import pickle

    marker = files / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(files / "evil.pt", "wb") as f:
        pickle.dump({"format": "napari-unet-model", "config": Payload()}, f)
    for cmd in (["info", files / "evil.pt"], ["predict", files / "evil.pt", files / "img.tif", "-o", files / "o.tif"],
                ["train", "-i", files / "img.tif", "-l", files / "strokes.tif", "-o", files / "m.pt",
                 "--init", files / "evil.pt"]):
        code, _, err = run(capsys, *cmd)
        assert code == 2 and "never loaded" in err
    assert not marker.exists()


def test_interrupted_predict_never_leaves_new_probabilities_beside_old_labels(files, capsys, monkeypatch):
    from napari_unet.outputs import OutputFile

    d = files
    old_labels, old_prob = previous_result(d / "labels.tif"), previous_result(d / "prob.tif", 2)
    finish = OutputFile.finish

    def interrupted_on_labels(self):  # Ctrl-C while the (slow, big) labels TIFF is being written
        if self.path.name == "labels.tif":
            raise KeyboardInterrupt
        finish(self)

    monkeypatch.setattr(OutputFile, "finish", interrupted_on_labels)
    code, _, err = run(capsys, "predict", d / "model.pt", d / "img.tif", "-o", d / "labels.tif",
                       "--probabilities", d / "prob.tif", "--tile", 64)
    assert code == 130 and "no output was written" in err
    assert (d / "labels.tif").read_bytes() == old_labels
    assert (d / "prob.tif").read_bytes() == old_prob
    assert not list(d.glob(".*partial*"))


def test_python_dash_m_is_the_command(files):
    """``python -m napari_unet`` (what torchrun launches) runs the same command line."""
    r = subprocess.run([sys.executable, "-m", "napari_unet", "info", str(files / "model.pt")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("napari-unet model: 2D UNet"), r.stderr
    r = subprocess.run([sys.executable, "-m", "napari_unet", "info", str(files / "img.tif")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
