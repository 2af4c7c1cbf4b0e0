import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.model import Model
from napari_unet.predict import plan_prediction, run_prediction
from napari_unet.predict import plan as plan_module


def random_model(dims=2, depth=2, base=4, in_channels=1, mode="semantic", classes=(1, 2), seed=0, **fields):
    """An untrained network with random weights and non-trivial BatchNorm statistics (``fields``: more
    `ModelConfig` fields, e.g. ``background=21``)."""
    model = Model.untrained(dims=dims, depth=depth, base_channels=base, in_channels=in_channels, mode=mode,
                            class_ids=tuple(classes), seed=seed, **fields)
    for m in model.network.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("shape", [(37, 45), (128, 128), (200, 333), (97, 260)])
def test_tiled_equals_whole_image(shape):
    model = random_model(depth=2)
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    whole = nu.predict(model, image, tile=None)
    tiled = nu.predict(model, image, tile=2 * model.halo + 16)
    assert whole.shape == (2,) + shape and whole.dtype == np.float32
    assert np.abs(whole - tiled).max() < 1e-3
    assert (whole.argmax(0) == tiled.argmax(0)).mean() >= 0.9999


def test_tiled_equals_whole_image_depth4_default_halo():
    model = random_model(depth=4, base=4)
    image = np.random.default_rng(2).random((300, 520)).astype(np.float32)
    whole = nu.predict(model, image, tile=None)
    tiled = nu.predict(model, image, tile=224, batch_size=3)
    assert len(plan_prediction(model, image, tile=224).tiles) > 4
    assert np.abs(whole - tiled).max() < 1e-3


def test_any_input_dtype_and_caller_data_untouched():
    model = random_model()
    image = (np.random.default_rng(3).random((50, 60)) * 1000).astype(np.uint16)
    copy = image.copy()
    a = nu.predict(model, image)
    b = nu.predict(model, image.astype(np.float64))
    np.testing.assert_array_equal(image, copy)
    assert np.abs(a - b).max() < 1e-5


def test_2d_model_segments_a_stack_plane_by_plane():
    model = random_model()
    rng = np.random.default_rng(4)
    stack = rng.random((3, 40, 50)).astype(np.float32)
    labels = nu.segment(model, stack)
    assert labels.shape == stack.shape
    for z in range(3):
        np.testing.assert_array_equal(labels[z], nu.segment(model, stack[z]))


def test_dask_and_zarr_inputs_and_out_array(tmp_path):
    da = pytest.importorskip("dask.array")
    import zarr

    model = random_model()
    image = np.random.default_rng(5).random((2, 64, 80)).astype(np.float32)
    expected = nu.segment(model, image)
    np.testing.assert_array_equal(nu.segment(model, da.from_array(image, chunks=(1, 32, 32))), expected)
    z = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=image.shape, chunks=(1, 64, 80), dtype="f4")
    z[:] = image
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="w", shape=image.shape, chunks=(1, 64, 80),
                          dtype=expected.dtype)
    result = nu.segment(model, z, out=out)
    assert result is out
    np.testing.assert_array_equal(out[:], expected)


def test_semantic_output_writes_background_as_zero_and_keeps_class_ids():
    model = random_model(classes=(1, 2, 5))
    image = np.random.default_rng(6).random((64, 64)).astype(np.float32)
    labels = nu.segment(model, image)
    np.testing.assert_array_equal(labels, np.array([0, 2, 5])[nu.predict(model, image).argmax(0)])
    assert len(np.unique(labels)) >= 2  # not trivially all background


def test_multichannel_needs_declared_channel_axis():
    model = random_model(in_channels=2)
    image = np.random.default_rng(7).random((40, 40, 2)).astype(np.float32)
    with pytest.raises(ValueError, match="channel"):
        nu.predict(model, image)
    prob = nu.predict(model, image, channel_axis=-1)
    assert prob.shape == (2, 40, 40)


def test_3d_model_on_volume_and_time_series():
    model = random_model(dims=3, depth=2)
    vol = np.random.default_rng(8).random((2, 20, 24, 28)).astype(np.float32)
    prob = nu.predict(model, vol)
    assert prob.shape == (2, 2, 20, 24, 28)
    whole = nu.predict(model, vol[0], tile=None)
    exact = nu.predict(model, vol[0], tile=(2 * model.halo + 4,) * 3, halo=model.halo)
    assert np.abs(whole - exact).max() < 1e-3


@pytest.mark.parametrize("kwargs,match", [
    (dict(tile=0), "positive integer"),
    (dict(tile=20), "too small"),
    (dict(batch_size=0), "batch size"),
    (dict(device="tpu"), "unknown device"),
    (dict(tile="big"), "tile must be"),
])
def test_bad_arguments_are_refused_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nu.predict(random_model(), np.zeros((32, 32), np.float32), **kwargs)


def test_model_that_does_not_fit_the_image():
    with pytest.raises(ValueError, match="3D model"):
        nu.predict(random_model(dims=3), np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError, match="out has shape"):
        nu.predict(random_model(), np.zeros((32, 32), np.float32), out=np.zeros((2, 31, 32), np.float32))


def test_progress_events_and_tqdm_like_progress():
    model = random_model()
    events = list(nu.iter_predict(model, np.zeros((200, 200), np.float32), labels=False, probabilities=True,
                                  tile=2 * model.halo + 16))
    assert events[0].kind == "start" and events[-1].kind == "done"
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(e.region is not None for e in events if e.kind == "tiles")

    class Bar:
        total = None
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    nu.predict(model, np.zeros((64, 64), np.float32), progress=bar)
    assert bar.n == bar.total == 100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = random_model(depth=3, base=8)
    image = np.random.default_rng(9).random((256, 256)).astype(np.float32)
    cpu = nu.predict(model, image, device="cpu")
    gpu = nu.predict(model, image, device="cuda")
    assert (cpu.argmax(0) == gpu.argmax(0)).mean() > 0.99


def test_all_nan_image_is_refused():
    image = np.full((40, 40), np.nan, np.float32)
    with pytest.raises(ValueError, match="no finite values"):
        nu.segment(random_model(), image)
    partly = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    partly[:10] = np.nan  # some missing values are fine: they are treated as 0 after normalization
    assert nu.segment(random_model(), partly).shape == (40, 40)


def test_out_of_memory_retries_with_smaller_batches(monkeypatch):
    model = random_model()
    image = np.random.default_rng(1).random((200, 200)).astype(np.float32)
    # fp32: the patched forward below runs the unfolded network, which only fp32 keeps within 1e-6
    expected = nu.predict(model, image, tile=64, batch_size=1, mixed_precision=False)
    forward = model.network.forward

    def small_memory(x):
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(x)

    monkeypatch.setattr(model.network, "forward", small_memory)
    events = list(nu.iter_predict(model, image, labels=False, probabilities=True, tile=64, batch_size=4,
                                  mixed_precision=False))
    assert any(e.kind == "warning" and "retrying" in e.message for e in events)
    np.testing.assert_allclose(events[-1].result, expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["semantic", "instance"])
def test_labels_with_probabilities_run_the_network_once(mode, monkeypatch):
    model = random_model(mode=mode, seed=3)
    stack = np.random.default_rng(4).random((2, 70, 90)).astype(np.float32)
    labels_alone = nu.segment(model, stack, tile=64)
    probabilities_alone = nu.predict(model, stack, tile=64)

    calls = []
    forward = type(model.network).forward
    monkeypatch.setattr(type(model.network), "forward", lambda self, x: calls.append(1) or forward(self, x))
    probabilities = np.zeros((3 if mode == "instance" else 2,) + stack.shape, np.float32)
    labels = nu.segment(model, stack, tile=64, probabilities_out=probabilities)
    plan = plan_prediction(model, stack, tile=64)
    assert len(calls) == plan.total_tiles  # one forward pass per tile, for both outputs
    np.testing.assert_array_equal(labels, labels_alone)
    np.testing.assert_allclose(probabilities, probabilities_alone, atol=1e-6)


def test_probabilities_out_of_the_wrong_shape_is_refused():
    model = random_model()
    image = np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match=r"probabilities_out has shape \(64, 64\) but the probabilities need \(2, 64, 64\)"):
        nu.segment(model, image, probabilities_out=np.zeros((64, 64), np.float32))
    with pytest.raises(TypeError, match="need a float array"):
        nu.segment(model, image, probabilities_out=np.zeros((2, 64, 64), np.uint8))


def test_an_output_that_was_not_asked_for_is_refused_before_any_work():
    model = random_model()
    image = np.zeros((64, 64), np.float32)
    plan = plan_prediction(model, image)  # labels only
    with pytest.raises(ValueError, match="probabilities_out was given but the plan does not compute probabilities"):
        run_prediction(plan, probabilities_out=np.zeros((2, 64, 64), np.float32))
    with pytest.raises(ValueError, match="labels_out was given"):
        nu.iter_predict(model, image, labels=False, probabilities=True, labels_out=np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="nothing to compute"):
        plan_prediction(model, image, labels=False)
    with pytest.raises(ValueError, match=r"labels_out has shape \(63, 64\)"):
        run_prediction(plan, labels_out=np.zeros((63, 64), np.uint8))


def test_the_plan_described_is_the_plan_run(monkeypatch):
    model = random_model(depth=2, base=4)
    image = np.random.default_rng(2).random((3, 300, 260)).astype(np.float32)
    plan = plan_prediction(model, image, tile="auto", probabilities=True)

    def no_memory(device):
        raise AssertionError("the memory budget is read at planning, not while running")

    monkeypatch.setattr(plan_module, "memory_budget", no_memory)  # memory changes after planning
    events = list(run_prediction(plan))
    assert events[0].kind == "start" and events[0].message == plan.describe()
    tiles = [e for e in events if e.kind == "tiles"]
    assert tiles[-1].done == tiles[-1].total == plan.total_tiles == len(plan.items) * len(plan.tiles)
    assert plan.batch_size == 1  # CPU: one "tiles" event per tile of the plan, in its order
    assert [e.region for e in tiles] == [index + t.output for index in plan.items for t in plan.tiles]
    done = events[-1]
    assert done.labels.shape == plan.shape and done.labels.dtype == plan.labels_dtype
    assert done.probabilities.shape == plan.probabilities_shape and done.result is done.labels


@pytest.mark.parametrize("mode", ["semantic", "instance"])
def test_labels_and_probabilities_tee_equals_separate_runs(mode):
    model = random_model(mode=mode, seed=5)
    stack = np.random.default_rng(6).random((2, 80, 70)).astype(np.float32)
    both = list(nu.iter_predict(model, stack, labels=True, probabilities=True, tile=64))[-1]
    labels = list(nu.iter_predict(model, stack, tile=64))[-1]
    probabilities = list(nu.iter_predict(model, stack, labels=False, probabilities=True, tile=64))[-1]
    assert labels.probabilities is None and probabilities.labels is None
    assert probabilities.result is probabilities.probabilities
    np.testing.assert_array_equal(both.labels, labels.labels)
    np.testing.assert_allclose(both.probabilities, probabilities.probabilities, atol=1e-6)


def test_run_blocks_writes_only_the_blocks_it_is_given():
    from napari_unet.predict import run_blocks
    from napari_unet.predict.sinks import ProbabilitiesSink

    model = random_model()
    image = np.random.default_rng(7).random((2, 150, 150)).astype(np.float32)
    plan = plan_prediction(model, image, labels=False, probabilities=True, tile=64)
    out = np.full(plan.probabilities_shape, -1.0, np.float32)
    blocks = [(1, 0), (1, len(plan.tiles) - 1)]  # two tiles of the second plane
    events = list(run_blocks(plan, ProbabilitiesSink(out), blocks))
    assert [e.kind for e in events] == ["tiles", "tiles"] and events[-1].done == events[-1].total == 2
    expected = nu.predict(model, image, tile=64)
    written = np.zeros(plan.shape, bool)
    for i, t in blocks:
        written[plan.items[i] + plan.tiles[t].output] = True
    np.testing.assert_allclose(out[:, written], expected[:, written], atol=1e-6)
    assert (out[:, ~written] == -1.0).all()
