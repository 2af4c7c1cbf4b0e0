"""bioimage.io packages (issue 13): export -> bioimageio.core's own test -> same prediction -> import."""
import hashlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import yaml

import napari_unet as nu
from napari_unet.bioimageio import export_package, read_rdf
from napari_unet.cli import main
from napari_unet.synthetic import make_nuclei

from .test_predict import random_model


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A two-channel, three-class model with a stored normalization, and its package."""
    model = random_model(in_channels=2, classes=(1, 2, 3), seed=3)
    model = nu.Model(model.network, nu.ModelConfig(**{**model.config.to_dict(), "norm_low": [100.0, 50.0],
                                                      "norm_high": [900.0, 2000.0], "trained_steps": 7}),
                     history=[{"step": 7, "val_loss": 0.5}])
    path = export_package(model, tmp_path_factory.mktemp("pkg") / "model.zip", authors=["Ada Lovelace"])
    return model, path


def two_channel_image(shape=(100, 76), seed=1):
    a, _ = make_nuclei(shape, seed=seed)
    return np.stack([a, a[::-1] // 2])


def test_package_passes_bioimageio_cores_model_test(exported):
    """The check the zoo runs: format, both weight formats reproduce the test outputs, every valid size."""
    import bioimageio.core

    summary = bioimageio.core.test_model(exported[1])
    failed = [(d.name, [e.msg[:200] for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    tested = " ".join(d.name for d in summary.details)
    assert "pytorch_state_dict" in tested and "torchscript" in tested


def test_bioimageio_core_predicts_what_napari_unet_predicts(exported):
    import bioimageio.core as bc
    from bioimageio.core.digest_spec import create_sample_for_model

    model, path = exported
    image = two_channel_image()
    ours = nu.predict(model, image, channel_axis=0, mixed_precision=False)  # bioimageio.core runs fp32
    raw = image[None].astype(np.float32)
    # the whole image in one pass: bioimageio.core's pipeline equals ours everywhere
    descr = bc.load_model_description(path)
    pipeline = bc.create_prediction_pipeline(descr)
    whole = pipeline.predict_sample_without_blocking(create_sample_for_model(descr, inputs=raw),
                                                     skip_input_padding=True, skip_output_cropping=True)
    np.testing.assert_allclose(whole.members["probabilities"].data.values[0], ours, atol=1e-4, rtol=0)
    # `bioimageio predict` pads the image by the halo (mirrored): same result but in the outer band
    theirs = bc.predict(model=path, inputs=raw).members["probabilities"].data.values[0]
    h = 24  # depth 2
    np.testing.assert_allclose(theirs[:, h:-h, h:-h], ours[:, h:-h, h:-h], atol=1e-4, rtol=0)


def test_package_loads_as_the_model_it_was_exported_from(exported):
    model, path = exported
    loaded = nu.load_model(path)
    assert loaded.config == model.config and loaded.history == model.history
    image = two_channel_image((64, 80), seed=4)
    np.testing.assert_array_equal(nu.predict(loaded, image, channel_axis=0), nu.predict(model, image, channel_axis=0))
    rdf = read_rdf(path)
    assert rdf["format_version"].startswith("0.5") and rdf["authors"] == [{"name": "Ada Lovelace"}]
    pre = rdf["inputs"][0]["preprocessing"]
    scaling = next(p["kwargs"] for p in pre if p["id"] == "scale_linear")
    np.testing.assert_allclose(scaling["gain"], [1 / 800, 1 / 1950])
    sizes = [a["size"] for a in rdf["inputs"][0]["axes"] if a["type"] == "space"]
    assert sizes == [{"min": 52, "step": 4}] * 2  # 2 * halo 24 + 2**depth
    assert {a.get("halo") for a in rdf["outputs"][0]["axes"] if a["type"] == "space"} == {24}
    with zipfile.ZipFile(path) as zf:
        assert {"README.md", "cover.png", "unet.py", "test_input.npy", "test_output.npy"} <= set(zf.namelist())


def _rewrite(path, out, replace):
    """Copy a package, replacing some members (name -> bytes)."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, replace.get(name, src.read(name)))


def test_loading_runs_nothing_from_the_package_and_needs_no_bioimageio(exported, tmp_path):
    """The package's architecture file is never imported: napari-unet rebuilds its own UNet."""
    _, path = exported
    marker = tmp_path / "ran"
    tampered = tmp_path / "tampered.zip"
    _rewrite(path, tampered, {"unet.py": f"open({str(marker)!r}, 'w').write('x')\n".encode()})
    code = ("import sys; sys.modules['bioimageio'] = None\n"  # as if the extra were not installed
            "import napari_unet as nu\n"
            f"m = nu.load_model({str(tampered)!r})\n"
            "print(m.config.in_channels, m.num_classes)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "3"] and not marker.exists()


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_unsafe_or_foreign_packages_are_refused(exported, tmp_path, capsys):
    _, path = exported
    marker = tmp_path / "pwned"
    rdf = read_rdf(path)
    evil_weights = pickle.dumps({"w": Evil(marker)})
    rdf["weights"]["pytorch_state_dict"]["sha256"] = hashlib.sha256(evil_weights).hexdigest()
    evil = tmp_path / "evil.zip"
    _rewrite(path, evil, {"weights.pt": evil_weights, "rdf.yaml": yaml.safe_dump(rdf).encode()})
    with pytest.raises(ValueError, match="damaged napari-unet package"):
        nu.load_model(evil)
    assert not marker.exists()

    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump({"type": "model", "name": "StarDist nuclei", "format_version": "0.5.4",
                                                "weights": {"torchscript": {"source": "w.pt"}}}))
    not_a_package = tmp_path / "data.zip"
    with zipfile.ZipFile(not_a_package, "w") as zf:
        zf.writestr("notes.txt", "hello")
    np.save(tmp_path / "img.npy", np.zeros((64, 64), np.uint16))
    for bad, why in [(foreign, "not made by napari-unet"), (not_a_package, "no rdf.yaml")]:
        code, _, err = run(capsys, "predict", bad, tmp_path / "img.npy", "-o", tmp_path / "out.npy")
        assert code == 2 and why in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run(capsys, "info", foreign)
    assert code == 2 and "bioimageio.core" in err and "deepImageJ" in err
    assert not (tmp_path / "out.npy").exists()


def test_cli_export_options_and_predict_from_the_package(tmp_path, capsys):
    model = random_model(seed=5)
    nu.save_model(model, tmp_path / "m.pt")
    image, _ = make_nuclei((96, 122), seed=6)
    np.save(tmp_path / "img.npy", image)
    code, _, err = run(capsys, "export", tmp_path / "m.pt", "-o", tmp_path / "m.zip", "--name", "My nuclei model",
                       "--description", "Nuclei in my images.", "--author", "A One", "--author", "B Two",
                       "--license", "MIT", "--cite", "My paper", "10.1234/abcd", "--test-image", tmp_path / "img.npy")
    assert code == 0, err
    rdf = read_rdf(tmp_path / "m.zip")
    assert rdf["name"] == "My nuclei model" and rdf["description"] == "Nuclei in my images."
    assert [a["name"] for a in rdf["authors"]] == ["A One", "B Two"] and rdf["license"] == "MIT"
    assert rdf["cite"] == [{"text": "My paper", "doi": "10.1234/abcd"}]
    with zipfile.ZipFile(tmp_path / "m.zip") as zf:
        zf.extract("test_input.npy", tmp_path)
    test_input = np.load(tmp_path / "test_input.npy")
    assert test_input.shape == (1, 1, 96, 120)  # the centre of the test image, cropped to a valid size
    np.testing.assert_array_equal(test_input[0, 0], image[:, 1:121])
    for src, out in [("m.pt", "a.npy"), ("m.zip", "b.npy")]:
        code, _, err = run(capsys, "predict", tmp_path / src, tmp_path / "img.npy", "-o", tmp_path / out)
        assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    # exporting again over napari-unet's own package replaces it
    code, _, err = run(capsys, "export", tmp_path / "m.pt", "-o", tmp_path / "m.zip")
    assert code == 0, err
    assert read_rdf(tmp_path / "m.zip")["name"] != "My nuclei model"


def test_export_refuses_bad_inputs_and_never_replaces_user_files(tmp_path, capsys, monkeypatch):
    nu.save_model(random_model(), tmp_path / "m.pt")
    (tmp_path / "notes.txt").write_text("not a model")
    precious = tmp_path / "data.zip"
    with zipfile.ZipFile(precious, "w") as zf:
        zf.writestr("cells.csv", "1,2,3")
    before = precious.read_bytes()
    cases = [(("notes.txt", "-o", "x.zip"), "not a napari-unet model"),
             (("m.pt", "-o", "x.pt"), "end in .zip"),
             (("m.pt", "-o", "data.zip"), "never replaced"),
             (("m.pt", "-o", "m.pt"), "is the input"),
             (("m.pt", "-o", "missing/x.zip"), "does not exist"),
             (("m.pt", "-o", "x.zip", "--license", "NOPE"), "SPDX"),
             (("m.pt", "-o", "x.zip", "--cite", "A paper", "somewhere"), "DOI"),
             (("m.pt", "-o", "x.zip", "--name", "a/b"), "name")]
    for args, why in cases:
        code, _, err = run(capsys, "export", *[tmp_path / a if i in (0, 2) else a for i, a in enumerate(args)])
        assert code == 2 and why in err and len(err.strip().splitlines()) == 1, (args, err)
    assert precious.read_bytes() == before and not (tmp_path / "x.zip").exists()

    # a failure while writing leaves neither the package nor a temporary file
    import bioimageio.spec

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bioimageio.spec, "save_bioimageio_package", broken)
    code, _, err = run(capsys, "export", tmp_path / "m.pt", "-o", tmp_path / "x.zip")
    assert code == 1 and "disk full" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zip", "m.pt", "notes.txt"]


def test_export_without_the_extra_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    nu.save_model(random_model(), tmp_path / "m.pt")
    for name in ("bioimageio", "bioimageio.spec", "bioimageio.spec.model"):
        monkeypatch.setitem(sys.modules, name, None)
    code, _, err = run(capsys, "export", tmp_path / "m.pt", "-o", tmp_path / "m.zip")
    assert code == 1 and 'pip install "napari-unet[bioimageio]"' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.zip").exists()


def test_onnx_without_onnx_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    nu.save_model(random_model(), tmp_path / "m.pt")
    monkeypatch.setitem(sys.modules, "onnx", None)
    code, _, err = run(capsys, "export", tmp_path / "m.pt", "-o", tmp_path / "m.zip", "--onnx")
    assert code == 1 and "pip install onnx onnxruntime" in err and not (tmp_path / "m.zip").exists()


def test_3d_instance_model_exports_and_loads(tmp_path):
    model = random_model(dims=3, mode="instance", seed=2)
    path = export_package(model, tmp_path / "m3.zip")
    rdf = read_rdf(path)
    assert [a["id"] for a in rdf["inputs"][0]["axes"] if a["type"] == "space"] == ["z", "y", "x"]
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["background", "interior", "boundary"]
    loaded = nu.load_model(path)
    assert loaded.config == model.config


def test_onnx_weights_pass_bioimageio_cores_model_test(tmp_path):
    import bioimageio.core

    path = export_package(random_model(seed=8), tmp_path / "m.zip", onnx=True)
    assert read_rdf(path)["weights"]["onnx"]["parent"] == "pytorch_state_dict"
    summary = bioimageio.core.test_model(path, weight_format="onnx")
    failed = [(d.name, [e.msg[:200] for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    assert any("onnx" in d.name for d in summary.details)


def test_anisotropic_3d_model_package_runs_its_shipped_network(tmp_path):
    """1x2x2 pooling reaches the package: the rdf passes it to the shipped unet.py, whose outputs match."""
    import bioimageio.core

    from .test_anisotropy import aniso_model

    model = aniso_model(seed=4)
    path = export_package(model, tmp_path / "aniso.zip")
    assert read_rdf(path)["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["xy_pool_levels"] == 1
    assert nu.load_model(path).config == model.config
    summary = bioimageio.core.test_model(path)
    assert summary.status == "passed", [(d.name, [e.msg[:200] for e in d.errors]) for d in summary.details
                                        if d.status != "passed"]
