"""The subtracted local background (`background=`): what it removes, exact tiling with it, where it is kept."""
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.model import Model
from napari_unet.synthetic import make_nuclei, make_strokes
from napari_unet.unet import LocalBackground

from .test_predict import random_model


def test_the_background_is_a_grey_opening_smoothed_and_objects_stay():
    """Bright spots narrower than the window stay, a smooth illumination ramp goes."""
    yy, xx = np.mgrid[:96, :128].astype(np.float32)
    ramp = 0.02 * xx + 0.01 * yy
    spots = np.zeros_like(ramp)
    spots[(yy - 48) ** 2 + (xx - 64) ** 2 < 36] = 1.0
    out = LocalBackground(2, (21, 21))(torch.from_numpy(ramp + spots)[None, None])[0, 0].numpy()
    opened = ndi.grey_opening(ramp + spots, size=21, mode="nearest")
    reference = ramp + spots - ndi.uniform_filter(opened, 11, mode="nearest")
    inner = np.s_[30:66, 30:98]  # away from the borders, where scipy's padding differs
    assert np.abs(out[inner] - reference[inner]).max() < 1e-5
    assert out[48, 64] > 0.9 and np.abs(out[inner][spots[inner] == 0]).max() < 0.15  # the ramp is gone


@pytest.mark.parametrize("dims, shape, spacing", [(2, (150, 330), None), (3, (20, 150, 170), (3, 1, 1))])
def test_tiles_with_the_background_equal_the_whole_image(dims, shape, spacing):
    model = random_model(dims=dims, background=21, spacing=spacing, seed=1)
    assert model.halo > Model.untrained(dims=dims, depth=2, base_channels=4).halo  # the window's reach is added
    image = np.random.default_rng(2).random(shape).astype(np.float32)
    whole = nu.predict(model, image, tile=None, mixed_precision=False)
    tile = 128 if dims == 2 else (104, 112, 112)  # one tile along Z, three along Y and X
    tiled = nu.predict(model, image, tile=tile, halo=model.halo, mixed_precision=False)
    assert np.abs(whole - tiled).max() < 1e-5  # the network halo alone (24 px) gives 2e-4


def test_a_model_with_the_background_hardly_sees_a_change_of_illumination():
    """What a user notices: the same sample under a brighter, tilted illumination segments the same."""
    image, _ = make_nuclei((128, 128), seed=3)
    image = image.astype(np.float32)
    lighter = image + np.linspace(0, 0.5 * image.max(), 128, dtype=np.float32)[None, :]  # stray light
    change = {}
    for bg in (None, 41):
        model = random_model(background=bg, seed=4, norm_low=(float(image.min()),), norm_high=(float(image.max()),))
        a, b = (nu.predict(model, x, mixed_precision=False) for x in (image, lighter))
        change[bg] = float(np.abs(a - b).mean())
    assert change[41] < 0.2 * change[None]


def test_the_window_is_stored_kept_when_fine_tuning_and_refused_when_changed(tmp_path):
    image, labels = make_nuclei((96, 96), seed=0)
    strokes = make_strokes(labels, seed=0)
    model = nu.train(image, strokes, depth=2, base_channels=4, epochs=1, background=30, seed=0)
    assert model.config.background == 31  # odd, centred on its pixel
    nu.save_model(model, tmp_path / "m.pt")
    loaded = nu.load_model(tmp_path / "m.pt")
    assert loaded.config.background == 31 and "background: subtracted" in loaded.describe()
    assert isinstance(loaded.network.background, LocalBackground)
    assert nu.train(image, strokes, epochs=1, init=loaded, seed=0).config.background == 31
    with pytest.raises(ValueError, match="leave background out"):
        nu.train(image, strokes, epochs=1, init=loaded, background=61)
    for bad in (1, 2000, 2.5, True):
        with pytest.raises(ValueError, match="background must be a whole number"):
            nu.train(image, strokes, depth=2, base_channels=4, epochs=1, background=bad)


def test_cli_background_flag(tmp_path, capsys):
    image, labels = make_nuclei((96, 96), seed=1)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "strokes.npy", make_strokes(labels, seed=1))
    args = ["train", "-i", tmp_path / "img.npy", "-l", tmp_path / "strokes.npy", "--depth", "2",
            "--base-channels", "4", "--epochs", "1"]
    assert main([str(a) for a in args + ["-o", tmp_path / "m.pt", "--background", "41"]]) == 0
    assert nu.load_model(tmp_path / "m.pt").config.background == 41
    capsys.readouterr()
    assert main([str(a) for a in args + ["-o", tmp_path / "f.pt", "--init", tmp_path / "m.pt",
                                         "--background", "21"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "leave out --background" in err and not (tmp_path / "f.pt").exists()


def test_a_package_of_a_model_with_the_background_runs_it(tmp_path):
    """The rdf passes the window to the shipped unet.py: bioimage.io consumers subtract it too."""
    import bioimageio.core

    from napari_unet.bioimageio import export_package, read_rdf

    model = random_model(background=21, seed=5)
    path = export_package(model, tmp_path / "bg.zip")
    assert read_rdf(path)["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["background"] == [21, 21]
    assert nu.load_model(path).config == model.config
    summary = bioimageio.core.test_model(path)
    assert summary.status == "passed", [(d.name, [e.msg[:200] for e in d.errors]) for d in summary.details
                                        if d.status != "passed"]


def test_block_probabilities_with_the_background_equal_the_whole_image():
    """Blockwise and distributed runs read each block with the plan's halo: the background's reach is in it."""
    from napari_unet.blockwise import region_predictions
    from napari_unet.predict import plan_prediction

    model = random_model(mode="instance", classes=(1, 2, 3), background=31, seed=6)
    image = np.random.default_rng(3).random((1, 200, 236)).astype(np.float32)
    whole = nu.predict(model, image, tile=None, mixed_precision=False)
    plan = plan_prediction(model, image, probabilities=True, tile=160, mixed_precision=False)
    region = (slice(70, 131), slice(101, 236))
    part = region_predictions(plan, [0], region)[0]
    assert np.abs(part - whole[(slice(None), 0) + region]).max() < 1e-5


def test_a_thin_stack_with_a_wide_window_segments():
    """8 planes and a window of 61 along Z: the box filter is wider than the stack (avg_pool3d refuses that)."""
    model = Model.untrained(dims=3, depth=2, base_channels=4, mode="instance", background=61, seed=0)
    labels = nu.segment(model, np.random.default_rng(0).random((8, 64, 64)).astype(np.float32))
    assert labels.shape == (8, 64, 64)
