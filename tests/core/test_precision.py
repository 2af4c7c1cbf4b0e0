"""Training precision: bf16 mixed precision on CPUs with bf16 units and on GPUs, fp32 when asked."""
import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet import device as devices
from napari_unet.cli import main
from napari_unet.device import compute_precision
from napari_unet.predict import plan_prediction
from napari_unet.provenance import provenance

TINY = dict(depth=2, base_channels=8, patch_size=32, batch_size=4)
CPU = torch.device("cpu")


def test_precision_is_bf16_only_where_the_cpu_computes_it_unless_asked(monkeypatch):
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)
    assert compute_precision(CPU) == "bf16"
    assert compute_precision(CPU, False) == "fp32"
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)
    assert compute_precision(CPU) == "fp32"  # emulated bf16 would be slower: not by default
    assert compute_precision(CPU, True) == "bf16"
    assert compute_precision(torch.device("mps")) == "fp32"
    with pytest.raises(ValueError, match="not available on mps"):
        compute_precision(torch.device("mps"), True)
    with pytest.raises(ValueError, match="mixed_precision must be True, False or None"):
        compute_precision(CPU, "yes")


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


def test_prediction_runs_in_bf16_where_the_cpu_computes_it_and_in_fp32_when_asked(monkeypatch, blobs):
    image, strokes, _ = blobs
    model = nu.train(image, strokes, mode="semantic", epochs=4, seed=0, device="cpu", **TINY)
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)
    assert plan_prediction(model, image, device="cpu").precision == "bf16"
    assert "bf16 mixed precision" in plan_prediction(model, image, device="cpu").describe()
    exact = plan_prediction(model, image, device="cpu", mixed_precision=False)
    assert exact.precision == "fp32" and "mixed precision" not in exact.describe()
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)
    assert plan_prediction(model, image, device="cpu").precision == "fp32"  # emulated bf16: slower, not a default
    with pytest.raises(ValueError, match="mixed_precision must be True, False or None"):
        plan_prediction(model, image, mixed_precision="no")
    # bf16 forward passes really run (the probabilities move) and give the same labels but a few pixels
    fp32 = nu.predict(model, image, mixed_precision=False)
    bf16 = nu.predict(model, image, mixed_precision=True)
    assert 0 < np.abs(fp32 - bf16).max() < 0.15
    assert np.mean(fp32.argmax(0) != bf16.argmax(0)) < 0.01


def test_cli_predict_fp32_flag_is_recorded_in_the_provenance(tmp_path, blobs, capsys):
    import tifffile

    from napari_unet.provenance import PROVENANCE_KEY

    image, strokes, _ = blobs
    model = nu.train(image, strokes, mode="semantic", epochs=1, seed=0, device="cpu", **TINY)
    nu.save_model(model, tmp_path / "m.pt")
    np.save(tmp_path / "img.npy", image)
    for flags, precision in (([], "bf16"), (["--fp32"], "fp32")):
        out = tmp_path / f"labels-{precision}.tif"
        assert main(["predict", str(tmp_path / "m.pt"), str(tmp_path / "img.npy"), "-o", str(out), "--device", "cpu",
                     *flags]) == 0
        recorded = tifffile.TiffFile(out).shaped_metadata[0][PROVENANCE_KEY]["settings"]["precision"]
        assert recorded == (precision if devices.cpu_computes_bf16() or precision == "fp32" else "fp32")


def test_gpu_tiles_are_sized_for_the_precision_the_passes_run_in(monkeypatch):
    """An fp32 forward pass on a GPU holds twice the bytes per pixel of a bf16 one: its tiles must be smaller,
    or ``--fp32`` on a GPU runs out of memory where the automatic precision fits."""
    from napari_unet.predict import plan as plans

    monkeypatch.setattr(plans, "memory_budget", lambda device: 2.0**30)  # no CUDA needed to size the tiles
    model = nu.Model.untrained(depth=3, base_channels=16)
    gpu = torch.device("cuda")
    mixed, full = (plans.auto_tile_size(model, gpu, precision=p) for p in ("bf16", "fp32"))
    assert full[0] < mixed[0]
    assert full[0] ** 2 * 2 <= mixed[0] ** 2 * 1.2  # about half the pixels, up to rounding to the alignment
    cpu = torch.device("cpu")  # the CPU estimate was fitted in fp32 and stays it
    assert plans.auto_tile_size(model, cpu, precision="bf16") == plans.auto_tile_size(model, cpu, precision="fp32")
