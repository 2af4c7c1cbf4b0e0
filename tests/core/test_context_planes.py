"""2D models that read each plane of a stack with its neighbours (``context_planes``, 2.5D)."""
from dataclasses import replace

import numpy as np
import pytest

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.data import as_channels_first
from napari_unet.model import Model
from napari_unet.synthetic import make_nuclei

from .test_blockwise import same_partition
from .test_predict import random_model


def with_neighbours(stack, k, channel_axis=None):
    """(Z, C * (2k + 1), Y, X): every plane with the k planes on each side, the end planes repeated."""
    planes = stack[:, None] if channel_axis is None else stack
    z = np.arange(len(stack))
    near = np.clip(z[:, None] + np.arange(-k, k + 1)[None], 0, len(stack) - 1)
    return planes[near].reshape((len(stack), -1) + stack.shape[-2:])


def test_the_view_holds_each_plane_with_its_neighbours():
    rng = np.random.default_rng(0)
    stack = rng.random((6, 2, 9, 11))  # Z, C, Y, X
    view = as_channels_first(stack, 1, context_planes=2)
    expected = np.moveaxis(with_neighbours(stack, 2, channel_axis=1), 1, 0)
    assert view.shape == expected.shape == (10, 6, 9, 11)
    assert np.array_equal(np.asarray(view), expected)
    for key in [(slice(None), 0), (slice(None), -1, slice(2, 7), slice(None, None, 3)), (slice(3, 5), slice(1, 5, 2)),
                (4, slice(2, 3))]:
        assert np.array_equal(view[key], expected[key]), key
    with pytest.raises(ValueError, match=r"give it a stack \(Z, Y, X\)"):
        as_channels_first(rng.random((9, 11)), None, context_planes=1)


def test_prediction_reads_the_neighbours_in_every_path():
    """Whole, tiled, streamed into a file and blockwise: each plane as the network saw it in training."""
    from napari_unet.blockwise import segment_blockwise

    model = random_model(mode="instance", classes=(1, 2, 3), in_channels=5, context_planes=2, seed=3)
    plain = Model(model.network, replace(model.config, context_planes=0))  # the same weights, fed by hand
    stack = np.random.default_rng(4).random((7, 70, 90)).astype(np.float32)
    expected = nu.predict(plain, with_neighbours(stack, 2), channel_axis=1, tile=None, mixed_precision=False)
    whole = nu.predict(model, stack, tile=None, mixed_precision=False)
    assert whole.shape == (3, 7, 70, 90) and np.abs(whole - expected).max() < 1e-5
    tiled = nu.predict(model, stack, tile=64, halo=model.halo, mixed_precision=False)
    assert np.abs(tiled - expected).max() < 1e-4
    labels = nu.segment(model, stack, mixed_precision=False)
    assert np.array_equal(labels, nu.segment(plain, with_neighbours(stack, 2), channel_axis=1,
                                             mixed_precision=False))
    blockwise = segment_blockwise(model, stack, block=40, margin=112, tile=None, mixed_precision=False)
    assert same_partition(blockwise, labels)


def test_a_click_reads_the_neighbouring_planes():
    model = random_model(mode="instance", classes=(1, 2, 3), in_channels=3, context_planes=1, seed=5)
    plain = Model(model.network, replace(model.config, context_planes=0))
    stack = make_nuclei((6, 96, 96), seed=2)[0].astype(np.float32)
    hit = nu.segment_at(model, stack, (3, 48, 48))
    by_hand = nu.segment_at(plain, with_neighbours(stack, 1), (3, 48, 48), channel_axis=1)
    assert hit.origin == by_hand.origin and np.array_equal(hit.mask, by_hand.mask)


def test_training_stores_the_planes_and_fine_tuning_keeps_them(tmp_path):
    image, labels = make_nuclei((5, 64, 64), seed=0)
    model = nu.train(image, labels, mode="instance", depth=2, base_channels=4, epochs=1, context_planes=2, seed=0)
    assert model.config.context_planes == 2 and model.in_channels == 5 and model.config.image_channels == 1
    nu.save_model(model, tmp_path / "m.pt")
    loaded = nu.load_model(tmp_path / "m.pt")
    assert loaded.config == model.config and "context planes: each plane" in loaded.describe()
    assert nu.segment(loaded, image).shape == image.shape
    assert nu.train(image, labels, mode="instance", epochs=1, init=loaded, seed=0).config.context_planes == 2
    with pytest.raises(ValueError, match="leave context_planes out"):
        nu.train(image, labels, mode="instance", epochs=1, init=loaded, context_planes=1)
    with pytest.raises(ValueError, match=r"give it a stack \(Z, Y, X\)"):
        nu.segment(loaded, image[0])
    with pytest.raises(ValueError, match="context_planes is for 2D models"):
        nu.train(image, labels, mode="instance", dims=3, epochs=1, context_planes=1)
    for bad in (-1, 9, 1.5, True):
        with pytest.raises(ValueError, match="context_planes must be a whole number"):
            nu.train(image, labels, mode="instance", epochs=1, context_planes=bad)
    with pytest.raises(ValueError, match=r"give it a stack \(Z, Y, X\)"):
        nu.train(image[0], labels[0], mode="instance", epochs=1, context_planes=1)


def test_a_package_is_refused_with_a_reason(tmp_path):
    pytest.importorskip("bioimageio.spec")
    from napari_unet.bioimageio import export_package

    model = random_model(in_channels=3, context_planes=1)
    with pytest.raises(ValueError, match="bioimage.io packages cannot describe"):
        export_package(model, tmp_path / "m.zip")
    assert not (tmp_path / "m.zip").exists()


def test_cli_context_planes(tmp_path, capsys):
    image, labels = make_nuclei((5, 64, 64), seed=1)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    np.save(tmp_path / "plane.npy", image[0])
    train = ["train", "-i", tmp_path / "img.npy", "-l", tmp_path / "lab.npy", "--mode", "instance", "--depth", "2",
             "--base-channels", "4", "--epochs", "1", "-o", tmp_path / "m.pt", "--context-planes", "1"]
    assert main([str(a) for a in train]) == 0
    assert nu.load_model(tmp_path / "m.pt").config.context_planes == 1
    out = tmp_path / "out.npy"
    assert main([str(a) for a in ["predict", tmp_path / "m.pt", tmp_path / "img.npy", "-o", out,
                                  "--stitch-planes"]]) == 0
    assert np.load(out).shape == image.shape
    capsys.readouterr()
    assert main([str(a) for a in ["predict", tmp_path / "m.pt", tmp_path / "plane.npy", "-o",
                                  tmp_path / "bad.npy"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "give it a stack" in err and "\n" not in err
    assert not (tmp_path / "bad.npy").exists()


def test_live_training_previews_a_plane_of_the_stack():
    import threading

    from napari_unet.train import Latest, PreviewRequest, iter_train_live

    image, labels = make_nuclei((5, 64, 64), seed=2)
    strokes = np.where(labels > 0, 2, 1) * (np.arange(64)[None, :, None] % 8 == 0)  # every 8th row painted
    previews, stop = Latest(), threading.Event()
    events = iter_train_live(image, strokes, updates=Latest(), previews=previews, stop=stop, preview_every=0.0,
                             depth=2, base_channels=4, patch_size=32, batch_size=2, device="cpu", seed=0,
                             context_planes=1)
    previews.put(PreviewRequest(0, (2, slice(0, 64), slice(0, 48))))
    preview = next(ev for ev in events if ev.kind == "preview")
    assert preview.data.labels.shape == (64, 48) and preview.data.model.config.context_planes == 1
    stop.set()
    done = next(ev for ev in events if ev.kind == "done")
    assert done.model.config.context_planes == 1 and done.model.in_channels == 3


def test_planes_of_a_stack_without_objects_are_not_trained_as_background():
    """A user paints the nuclei of a few planes of a z-stack: the other planes are not annotated."""
    from napari_unet.data import collect_annotated

    image, labels = make_nuclei((8, 64, 64), seed=3)
    painted = np.zeros_like(labels)
    painted[[2, 5]] = labels[[2, 5]]
    annotated = collect_annotated(image, painted, dims=2, channel_axis=None, mode="instance", context_planes=1)
    assert [idx for _, _, idx in annotated.items] == [(2,), (5,)]
    with pytest.raises(ValueError, match="no objects"):
        collect_annotated(image, np.zeros_like(labels), dims=2, channel_axis=None, mode="instance")
