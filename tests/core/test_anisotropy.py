"""Anisotropic stacks (issue 15): the realistic 3D stand-in, a declared voxel spacing, 1x2x2 pooling."""
import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.model import Model, ModelConfig, xy_pool_levels_for
from napari_unet.postprocess import FRAGMENT_FRACTION, instance_labels, split_objects
from napari_unet.synthetic import make_nuclei
from napari_unet.unet import UNet


def aniso_model(seed=0, spacing=(3.0, 1.0, 1.0)):
    """A tiny anisotropic 3D instance network with random weights and non-trivial BatchNorm statistics."""
    model = Model.untrained(dims=3, depth=2, base_channels=4, mode="instance", spacing=spacing,
                            xy_pool_levels=xy_pool_levels_for(spacing, 2), seed=seed)
    for m in model.network.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


# --------------------------------------------------------------------------- the stand-in
def test_spaced_stack_is_every_third_plane_of_the_fine_one():
    """Nuclei are laid out in physical units: the stack keeps every third plane of the fine grid."""
    _, fine = make_nuclei((24, 48, 48), seed=4)
    image, coarse = make_nuclei((8, 48, 48), seed=4, spacing=(3, 1, 1))
    assert image.shape == coarse.shape == (8, 48, 48)
    kept = fine[::3]
    relabelled = np.searchsorted(np.unique(kept), kept)  # consecutive ids, 0 stays 0
    np.testing.assert_array_equal(coarse, relabelled)
    assert set(np.unique(coarse)) == set(range(int(coarse.max()) + 1))


def test_optics_that_ask_for_nothing_give_the_plain_stand_in():
    plain = make_nuclei((12, 40, 40), seed=2)
    same = make_nuclei((12, 40, 40), seed=2, spacing=(1, 1, 1), attenuation=0.0, depth_blur=0.0)
    for a, b in zip(plain, same):
        np.testing.assert_array_equal(a, b)


def test_deeper_planes_are_dimmer_and_blurrier():
    shape = (16, 64, 64)
    base, labels = make_nuclei(shape, seed=1, dtype=np.float32)
    dim, _ = make_nuclei(shape, seed=1, dtype=np.float32, attenuation=0.6)
    def contrast(img, z):  # nuclei over background
        return img[z][labels[z] > 0].mean() - img[z][labels[z] == 0].mean()
    assert contrast(dim, 0) == pytest.approx(contrast(base, 0), rel=0.05)
    assert contrast(base, -1) > 0.85 * contrast(base, 0) and contrast(dim, -1) < 0.6 * contrast(dim, 0)
    blurred, _ = make_nuclei(shape, seed=1, dtype=np.float32, depth_blur=1.0)
    def detail(img, z):  # the smoothed (noise-free) plane's gradient energy
        return float(np.abs(np.diff(ndi.gaussian_filter(img[z], 1.0), axis=-1)).mean())
    assert detail(blurred, 0) == pytest.approx(detail(base, 0), rel=0.05)
    assert detail(blurred, -1) < 0.85 * detail(base, -1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(32, 32), spacing=(2, 1)), "3D stacks"),
    (dict(shape=(8, 32, 32), spacing=(2.5, 1, 1)), "whole numbers"),
    (dict(shape=(8, 32, 32), spacing=(3, 1)), "whole numbers"),
    (dict(shape=(8, 32, 32), attenuation=1.0), "attenuation"),
    (dict(shape=(8, 32, 32), depth_blur=-1), "depth_blur"),
])
def test_bad_optics_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_nuclei(seed=0, **kwargs)


# --------------------------------------------------------------------------- the network and its config
def test_anisotropic_pooling_levels_follow_the_spacing():
    assert [xy_pool_levels_for(s, 4) for s in [(1, 1, 1), (1.5, 1, 1), (2, 1, 1), (3, 1, 1), (5, 1, 1),
                                                 (40, 1, 1), (2.0, 0.5, 0.5)]] == [0, 0, 1, 1, 2, 4, 2]
    net = UNet(dims=3, depth=3, base_channels=4, xy_pool_levels=2).eval()
    assert [m.kernel_size for m in net.pools] == [(1, 2, 2), (1, 2, 2), 2]
    assert net(torch.zeros(1, 1, 2, 8, 8)).shape == (1, 2, 2, 8, 8)  # Z is pooled once only
    with pytest.raises(ValueError, match="xy_pool_levels"):
        UNet(dims=2, xy_pool_levels=1)
    with pytest.raises(ValueError, match="xy_pool_levels"):
        ModelConfig(dims=3, depth=2, xy_pool_levels=3)
    with pytest.raises(ValueError, match="spacing"):
        ModelConfig(dims=3, spacing=(3, 1))
    with pytest.raises(ValueError, match="spacing"):
        ModelConfig(dims=3, spacing=(0, 1, 1))


def test_spacing_round_trips_and_old_files_load(tmp_path):
    model = aniso_model(spacing=(2.0, 0.5, 0.5))
    assert model.config.spacing == (4.0, 1.0, 1.0) and model.config.xy_pool_levels == 2
    path = nu.save_model(model, tmp_path / "aniso.pt")
    loaded = nu.load_model(path)
    assert loaded.config == model.config
    x = torch.randn(1, 1, 4, 16, 16)
    torch.testing.assert_close(loaded.network(x), model.network(x))
    # a file of an isotropic model stores no new keys, so versions before them open it too
    iso = nu.save_model(Model.untrained(dims=3, depth=2, base_channels=4, mode="instance"), tmp_path / "iso.pt")
    stored = json.loads(torch.load(iso, weights_only=True)["config"])
    assert "spacing" not in stored and "xy_pool_levels" not in stored
    assert nu.load_model(iso).config.xy_pool_levels == 0
    # weights of an isotropic network never load into an anisotropic configuration (and back)
    payload = torch.load(path, weights_only=True)
    payload["config"] = json.dumps({k: v for k, v in json.loads(payload["config"]).items() if k != "xy_pool_levels"})
    torch.save(payload, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="damaged"):
        nu.load_model(tmp_path / "mixed.pt")


def test_anisotropic_model_trains_saves_and_segments_any_depth(tmp_path):
    image, truth = make_nuclei((8, 32, 32), seed=3, spacing=(3, 1, 1))
    model = nu.train(image, truth, mode="instance", dims=3, depth=2, base_channels=4, epochs=1, seed=0,
                     spacing=(3, 1, 1), device="cpu")
    assert model.config.spacing == (3.0, 1.0, 1.0) and model.config.xy_pool_levels == 1
    model = nu.load_model(nu.save_model(model, tmp_path / "m.pt"))
    labels = nu.segment(model, image[:7], device="cpu")  # 7 planes: not a multiple of 2**depth
    assert labels.shape == (7, 32, 32) and labels.dtype == np.int32
    with pytest.raises(ValueError, match="spacing"):
        nu.train(image, truth, mode="instance", epochs=1, init=model, spacing=(2, 1, 1))


def test_a_patch_keeps_the_z_size_asked_when_z_is_pooled_fewer_times():
    """With spacing (3, 1, 1) a depth-3 network pools Z twice, not three times: a 12 x 40 x 40 patch trains
    as 12 x 40 x 40 (Z a multiple of 4), Y and X still rounded up to multiples of 8."""
    image, truth = make_nuclei((16, 48, 48), seed=3, spacing=(3, 1, 1))
    model = nu.train(image, truth, mode="instance", dims=3, depth=3, base_channels=4, epochs=1, seed=0,
                     spacing=(3, 1, 1), patch_size=(12, 36, 36), device="cpu")
    assert model.config.size_multiples == (4, 8, 8)
    assert model.config.patch_size == (12, 40, 40)
    with pytest.raises(ValueError, match=r"at least \[4, 8, 8\] px"):
        nu.train(image, truth, mode="instance", dims=3, depth=3, epochs=1, spacing=(3, 1, 1), patch_size=(2, 40, 40))


def test_cli_train_with_spacing(tmp_path, capsys):
    import tifffile

    image, truth = make_nuclei((8, 32, 32), seed=5, spacing=(3, 1, 1))
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", truth)
    code = main(["train", "-i", str(tmp_path / "img.tif"), "-l", str(tmp_path / "lab.tif"), "-o",
                 str(tmp_path / "m.pt"), "--mode", "instance", "--dims", "3", "--depth", "2", "--base-channels",
                 "4", "--epochs", "1", "--spacing", "3", "1", "1", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert main(["info", str(tmp_path / "m.pt")]) == 0
    assert "voxel spacing (Z, Y, X, relative): [3.0, 1.0, 1.0]; poolings in Y and X only: 1" in capsys.readouterr().out
    code = main(["train", "-i", str(tmp_path / "img.tif"), "-l", str(tmp_path / "lab.tif"), "-o",
                 str(tmp_path / "n.pt"), "--mode", "instance", "--dims", "3", "--spacing", "3", "1"])
    assert code == 2 and "spacing must be 3 positive voxel sizes" in capsys.readouterr().err
    assert not (tmp_path / "n.pt").exists()


# --------------------------------------------------------------------------- post-processing in physical units
def _stacked_nuclei():
    """Two balls (radius 8) touching along Z on a fine grid, sampled every third plane."""
    z, y, x = np.mgrid[:36, :24, :24]
    ball = (y - 12) ** 2 + (x - 12) ** 2
    return (((z - 10) ** 2 + ball <= 64) | ((z - 25) ** 2 + ball <= 64))[1::3]


def test_seeds_use_the_voxel_spacing():
    """Counted in planes, the neck between nuclei stacked along Z looks thickest and they merge."""
    mask = _stacked_nuclei()
    assert split_objects(mask).max() == 1
    assert split_objects(mask, spacing=(3, 1, 1)).max() == 2
    np.testing.assert_array_equal(split_objects(mask, spacing=(1, 1, 1)), split_objects(mask))
    prob = np.stack([~mask, mask, np.zeros_like(mask)]).astype(np.float32)
    assert instance_labels(prob).max() == 1 and instance_labels(prob, spacing=(3, 1, 1)).max() == 2
    np.testing.assert_array_equal(instance_labels(prob, spacing=None), instance_labels(prob, spacing=(1, 1, 1)))
    with pytest.raises(ValueError, match="spacing"):
        instance_labels(prob, spacing=(3, 1))


def test_a_new_3d_model_takes_the_voxel_size_its_images_declare():
    from napari_unet.model import spacing_from_scales

    assert spacing_from_scales([(2.0, 0.5, 0.5)], 3) == (4.0, 1.0, 1.0)
    assert spacing_from_scales([(1, 2.0, 0.5, 0.5), (2.0, 0.5, 0.5)], 3) == (4.0, 1.0, 1.0)  # leading axes ignored
    assert spacing_from_scales([(0.3, 0.3, 0.3)], 3) is None  # isotropic: the plain network
    assert spacing_from_scales([(2.0, 0.5, 0.5)], 2) is None  # a 2D model has no z spacing
    with pytest.raises(ValueError, match="different voxel sizes"):
        spacing_from_scales([(2.0, 0.5, 0.5), (1.0, 0.5, 0.5)], 3)


def test_a_click_on_nuclei_stacked_along_z_gets_the_one_clicked_with_the_spacing():
    from napari_unet.interactive import one_object, split_at

    mask = _stacked_nuclei()
    top = (3, 12, 12)  # the centre of the upper nucleus (fine plane 10)
    assert split_at(mask, top).sum() == mask.sum()  # counted in planes: both
    own = split_at(mask, top, spacing=(3, 1, 1))
    assert 0.35 < own.sum() / mask.sum() < 0.65 and own[top] and not own[8, 12, 12]
    prob = np.stack([~mask, mask, np.zeros_like(mask)]).astype(np.float32)
    got, value = one_object(prob, "instance", (1, 2, 3), top, spacing=(3, 1, 1))
    assert value == 1 and not got[8, 12, 12] and got[top]


def _blobs(ndim, centers, radii, shape):
    grid = np.indices(shape)
    mask = np.zeros(shape, bool)
    for c, r in zip(centers, radii):
        mask |= sum((g - ci) ** 2 for g, ci in zip(grid, c)) <= r ** 2
    return np.stack([~mask, mask, np.zeros_like(mask)]).astype(np.float32)


def test_labels_drop_fragments_in_3d_and_in_2d_unless_asked_to_keep_them():
    """A 60-voxel piece next to nuclei of ~500 is a fragment in 3D, and a 20-pixel speck next to nuclei
    of ~150 in 2D (debris); ``min_fraction=0`` keeps them."""
    centers = [(6, 8, 8), (6, 8, 24), (6, 24, 8), (6, 24, 24), (6, 36, 36)]
    prob3d = _blobs(3, centers, [5, 5, 5, 5, 2.5], (13, 44, 44))
    assert instance_labels(prob3d).max() == 4
    assert instance_labels(prob3d, min_fraction=0).max() == 5
    prob2d = _blobs(2, [c[1:] for c in centers], [7, 7, 7, 7, 2.5], (44, 44))
    assert instance_labels(prob2d).max() == 4
    assert instance_labels(prob2d, min_fraction=FRAGMENT_FRACTION).max() == 4
    assert instance_labels(prob2d, min_fraction=0).max() == 5
