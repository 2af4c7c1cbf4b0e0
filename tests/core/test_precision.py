"""Training precision: bf16 mixed precision on CPUs with bf16 units and on GPUs, fp32 when asked."""
import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet import device as devices
from napari_unet.cli import main
from napari_unet.device import training_precision
from napari_unet.provenance import provenance

TINY = dict(depth=2, base_channels=8, patch_size=32, batch_size=4)
CPU = torch.device("cpu")


def test_precision_is_bf16_only_where_the_cpu_computes_it_unless_asked(monkeypatch):
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)
    assert training_precision(CPU) == "bf16"
    assert training_precision(CPU, False) == "fp32"
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)
    assert training_precision(CPU) == "fp32"  # emulated bf16 would be slower: not by default
    assert training_precision(CPU, True) == "bf16"
    assert training_precision(torch.device("mps")) == "fp32"
    with pytest.raises(ValueError, match="not available on mps"):
        training_precision(torch.device("mps"), True)
    with pytest.raises(ValueError, match="mixed_precision must be True, False or None"):
        training_precision(CPU, "yes")


def first_message(image, labels, **kwargs):
    return next(iter(nu.iter_train(image, labels, epochs=1, seed=0, **TINY, **kwargs))).message


def test_the_start_message_says_which_precision_trains(blobs):
    image, strokes, _ = blobs
    assert "bf16 mixed precision" in first_message(image, strokes, device="cpu", mixed_precision=True)
    assert "mixed precision" not in first_message(image, strokes, device="cpu", mixed_precision=False)
    with pytest.raises(ValueError, match="mixed_precision"):
        first_message(image, strokes, mixed_precision=1)


def test_bf16_training_learns_keeps_fp32_weights_and_is_reproducible(blobs):
    image, strokes, truth = blobs
    models = [nu.train(image, strokes, mode="semantic", epochs=6, seed=0, device="cpu", mixed_precision=True, **TINY)
              for _ in range(2)]
    for a, b in zip(models[0].network.parameters(), models[1].network.parameters()):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    fg = nu.segment(models[0], image) > 0
    assert (fg & (truth > 0)).sum() / (fg | (truth > 0)).sum() > 0.8


def test_the_model_file_and_the_provenance_say_which_precision_trained_it(tmp_path, blobs):
    image, strokes, _ = blobs
    model = nu.train(image, strokes, mode="semantic", epochs=1, seed=0, device="cpu", mixed_precision=True, **TINY)
    nu.save_model(model, tmp_path / "m.pt")
    loaded = nu.load_model(tmp_path / "m.pt")
    assert model.config.precision == loaded.config.precision == "bf16"
    assert "last run in bf16" in loaded.describe()
    assert provenance(loaded)["model"]["training_precision"] == "bf16"
    assert nu.Model.untrained(depth=2).config.precision is None  # never trained: nothing claimed


def test_cli_fp32_flag_trains_in_full_precision(tmp_path, blobs, capsys):
    image, strokes, _ = blobs
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", strokes)
    out = tmp_path / "m.pt"
    assert main(["train", "-i", str(tmp_path / "img.npy"), "-l", str(tmp_path / "lab.npy"), "-o", str(out), "--epochs", "1",
                 "--depth", "2", "--base-channels", "4", "--device", "cpu", "--fp32"]) == 0
    assert out.exists() and "mixed precision" not in capsys.readouterr().err
    assert nu.load_model(out).config.precision == "fp32"
