"""Test-time augmentation: probabilities averaged over the turned and mirrored views (opt-in)."""

import numpy as np
import pytest
import tifffile

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.postprocess import instance_labels

from .test_predict import random_model


def _views_mean(model, image):
    """The reference: predict each of the 8 views of the YX plane, turn it back, average."""
    total = 0
    for flip in (False, True):
        for k in range(4):
            v = np.rot90(image[..., ::-1] if flip else image, k, axes=(-2, -1))
            p = np.rot90(nu.predict(model, np.ascontiguousarray(v), tile=None), -k, axes=(-2, -1))
            total = total + (p[..., ::-1] if flip else p)
    return total / 8


@pytest.mark.parametrize("dims,shape", [(2, (48, 80)), (3, (8, 24, 32))])
def test_tta_is_the_mean_of_the_turned_and_mirrored_predictions(dims, shape):
    model = random_model(dims=dims, depth=2, base=4)
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    tta = nu.predict(model, image, tile=None, tta=True)
    np.testing.assert_allclose(tta, _views_mean(model, image), atol=2e-5)
    assert np.abs(tta - nu.predict(model, image, tile=None)).max() > 1e-3  # a random network is not symmetric


def test_tta_off_by_default_and_tiled_tta_segments_the_whole_image():
    model = random_model(depth=2, base=4)
    image = np.random.default_rng(1).random((100, 120)).astype(np.float32)
    np.testing.assert_array_equal(nu.predict(model, image), nu.predict(model, image, tta=False))
    tiled = nu.predict(model, image, tile=2 * model.halo + 16, tta=True)
    whole = nu.predict(model, image, tile=None, tta=True)
    assert tiled.shape == whole.shape and np.abs(tiled - whole).mean() < 0.02
    with pytest.raises(TypeError, match="tta must be True or False"):
        nu.predict(model, image, tta="yes")


def test_tta_instance_labels_come_from_the_averaged_probabilities():
    model = random_model(depth=2, base=4, mode="instance", classes=(0, 1, 2))
    image = np.random.default_rng(2).random((64, 64)).astype(np.float32)
    labels = nu.segment(model, image, tile=None, tta=True)
    np.testing.assert_array_equal(labels, instance_labels(nu.predict(model, image, tile=None, tta=True)))


def test_cli_predict_tta(tmp_path, capsys):
    image = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    tifffile.imwrite(tmp_path / "img.tif", image)
    model = random_model(depth=2, base=4)
    nu.save_model(model, tmp_path / "model.pt")
    code = main(["predict", str(tmp_path / "model.pt"), str(tmp_path / "img.tif"), "-o", str(tmp_path / "l.tif"),
                 "--tta", "--tile", "none"])
    assert code == 0, capsys.readouterr().err
    assert "test-time augmentation" in capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "l.tif"),
                                  nu.segment(nu.load_model(tmp_path / "model.pt"), image, tile=None, tta=True))
