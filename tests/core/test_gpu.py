"""The GPU path of prediction: CUDA checks (skipped without CUDA) and CPU checks of its recovery logic."""
import dataclasses

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.predict import inference_network, plan_prediction
from napari_unet.predict.runner import smaller_tile

from .test_predict import random_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _oom(*_):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")


def _limit_memory(monkeypatch, model, max_pixels, calls=None):
    """Make the network fail like a GPU out of memory on inputs of more than ``max_pixels`` in all."""
    forward = model.network.forward

    def limited(x):
        if calls is not None:
            calls.append(tuple(x.shape))
        if x.shape[0] * int(np.prod(x.shape[2:])) > max_pixels:
            _oom()
        return forward(x)

    monkeypatch.setattr(model.network, "forward", limited)


# ------------------------------------------------------------------ out-of-memory recovery (any device)
def test_a_tile_that_does_not_fit_is_computed_as_smaller_tiles_with_the_same_result(monkeypatch):
    model = random_model(depth=2, base=4)
    image = np.random.default_rng(0).random((300, 280)).astype(np.float32)
    # fp32: the patched forward runs the unfolded network, which only fp32 keeps within 1e-5 of the folded one
    expected = nu.predict(model, image, tile=160, mixed_precision=False)
    calls = []
    _limit_memory(monkeypatch, model, 110 * 110, calls)
    events = list(nu.iter_predict(model, image, labels=False, probabilities=True, tile=160, workers=1,
                                  mixed_precision=False))
    warnings = [e.message for e in events if e.kind == "warning"]
    assert len(warnings) == 1 and "one tile of 160x160" in warnings[0] and "continuing with tiles of" in warnings[0]
    # exact halo: the mosaic of smaller tiles gives the big tile's values
    np.testing.assert_allclose(events[-1].result, expected, atol=1e-5)
    # the smaller tile is remembered: only the first big tile was tried
    assert sum(1 for s in calls if s[2:] == (160, 160)) == 1


def test_batches_shrink_before_tiles(monkeypatch):
    model = random_model(depth=2, base=4)
    image = np.random.default_rng(1).random((256, 256)).astype(np.float32)
    expected = nu.predict(model, image, tile=96, mixed_precision=False)  # fp32: as above
    _limit_memory(monkeypatch, model, 2 * 96 * 96)
    events = list(nu.iter_predict(model, image, labels=False, probabilities=True, tile=96, batch_size=8, workers=1,
                                  mixed_precision=False))
    messages = [e.message for e in events if e.kind == "warning"]
    assert any("retrying 4 at a time" in m for m in messages)
    assert not any("continuing with tiles" in m for m in messages)
    np.testing.assert_allclose(events[-1].result, expected, atol=1e-5)


def test_out_of_memory_at_the_smallest_tile_is_a_clear_error(monkeypatch):
    model = random_model(depth=2, base=4)
    monkeypatch.setattr(model.network, "forward", _oom)
    with pytest.raises(MemoryError, match="even for a single tile"):
        nu.predict(model, np.zeros((200, 200), np.float32), tile=128)


def test_other_errors_are_not_mistaken_for_out_of_memory(monkeypatch):
    model = random_model(depth=2, base=4)

    def broken(x):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")

    monkeypatch.setattr(model.network, "forward", broken)
    with pytest.raises(RuntimeError, match="CUDNN_STATUS"):
        nu.predict(model, np.zeros((64, 64), np.float32))


def test_smaller_tile_steps_keep_the_halo_and_stop_at_the_minimum():
    assert smaller_tile((1120, 1120), halo=96, align=16) == (656, 656)
    tile, seen = (1120, 1120), []
    while tile is not None:
        seen.append(tile)
        tile = smaller_tile(tile, halo=96, align=16)
    assert seen[-1] == (208, 208) and all(t[0] % 16 == 0 for t in seen)


# --------------------------------------------------------------------------- the inference network
def test_inference_network_is_a_folded_copy_that_computes_the_same():
    model = random_model(depth=3, base=8)
    x = torch.from_numpy(np.random.default_rng(2).random((2, 1, 64, 64)).astype(np.float32))
    net = inference_network(model.network, "cpu")
    assert net is not model.network
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.network.modules())  # untouched
    with torch.inference_mode():
        np.testing.assert_allclose(net(x).numpy(), model.network(x).numpy(), atol=1e-4)


def test_prediction_follows_weights_changed_in_place():
    model = random_model(depth=2, base=4)
    image = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    before = nu.predict(model, image)
    with torch.no_grad():
        model.network.head.bias += torch.tensor([3.0, -3.0])
    after = nu.predict(model, image)
    assert (after[0] > before[0]).all()


def test_auto_tiles_are_fitted_to_the_image():
    model = random_model(depth=4, base=16)
    plan = plan_prediction(model, np.zeros((2048, 2048), np.float32), device="cpu")
    # fitted: a tile size that covers the image with few tiles and little halo overhead
    computed = len(plan.tiles) * int(np.prod(plan.tile_size))
    assert computed <= 1.3 * 2048 * 2048
    assert plan_prediction(model, np.zeros((500, 700), np.float32), device="cpu").tiles.__len__() == 1


# ------------------------------------------------------------------------------------- with CUDA
@needs_cuda
@pytest.mark.parametrize("dims", [2, 3])
def test_cuda_matches_cpu_with_mixed_precision(dims):
    model = random_model(dims=dims, depth=2, base=8)
    shape = (192, 200) if dims == 2 else (40, 72, 80)
    image = np.random.default_rng(4).random(shape).astype(np.float32)
    cpu = nu.predict(model, image, device="cpu")
    gpu = nu.predict(model, image, device="cuda")
    assert gpu.dtype == np.float32 and gpu.shape == cpu.shape
    assert np.abs(cpu - gpu).max() < 0.05  # bf16/fp16 autocast
    assert (cpu.argmax(0) == gpu.argmax(0)).mean() > 0.99


@needs_cuda
def test_cuda_stack_batches_planes_and_writes_in_order(tmp_path):
    zarr = pytest.importorskip("zarr")
    model = random_model(depth=2, base=8)
    stack = np.random.default_rng(5).random((9, 96, 96)).astype(np.float32)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="w", shape=stack.shape, chunks=(1, 96, 96), dtype="u1")
    events = list(nu.iter_predict(model, stack, labels_out=out, device="cuda", batch_size=4))
    done = [e.done for e in events if e.kind == "tiles"]
    assert done == sorted(done) and done[-1] == 9
    for z in (0, 4, 8):
        np.testing.assert_array_equal(out[z], nu.segment(model, stack[z], device="cuda"))


@needs_cuda
def test_cuda_out_of_memory_recovery_on_the_device(monkeypatch):
    model = random_model(depth=2, base=4)
    image = np.random.default_rng(6).random((300, 300)).astype(np.float32)
    expected = nu.predict(model, image, tile=160, device="cuda")
    _limit_memory(monkeypatch, model, 100 * 100)
    events = list(nu.iter_predict(model, image, labels=False, probabilities=True, tile=160, device="cuda"))
    assert any("continuing with tiles of" in e.message for e in events if e.kind == "warning")
    assert (events[-1].result.argmax(0) == expected.argmax(0)).mean() > 0.999


@needs_cuda
def test_cuda_closing_early_leaves_no_threads_and_frees_memory():
    import threading

    model = random_model(depth=2, base=8)
    stack = np.random.default_rng(7).random((30, 128, 128)).astype(np.float32)
    events = nu.iter_predict(model, stack, labels=False, probabilities=True, device="cuda", batch_size=2)
    for e in events:
        if e.kind == "tiles":
            break
    events.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("napari-unet-predict")]


@needs_cuda
def test_cuda_normalizes_raw_integer_tiles_on_the_device_like_preprocess():
    model = random_model(depth=2, base=8)
    model.config = dataclasses.replace(model.config, norm_low=(100.0,), norm_high=(3000.0,))
    image = np.random.default_rng(8).integers(0, 4000, (160, 176)).astype(np.uint16)
    cpu = nu.predict(model, image, device="cpu")
    gpu = nu.predict(model, image, device="cuda")
    assert (cpu.argmax(0) == gpu.argmax(0)).mean() > 0.99
    with_nan = image.astype(np.float32)
    with_nan[:10] = np.nan  # missing values count as 0 after normalization, on the GPU too
    assert np.isfinite(nu.predict(model, with_nan, device="cuda")).all()


def test_a_thin_tile_shrinks_only_along_the_axes_that_can():
    assert smaller_tile((1120, 48), halo=96, align=16) == (656, 48)
    assert smaller_tile((208, 48), halo=96, align=16) is None
