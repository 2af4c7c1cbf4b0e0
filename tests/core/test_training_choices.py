"""The training choices (loss, edge weight, instance boundary, extra augmentation): stored, checked, applied."""
import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.data import instance_targets
from napari_unet.data.patches import augment_patch
from napari_unet.model import ModelConfig
from napari_unet.synthetic import make_nuclei
from napari_unet.train import masked_loss
from napari_unet.train.trainer import edge_pixels

TINY = dict(depth=2, base_channels=4, patch_size=32, batch_size=2)


def test_choices_round_trip_through_the_model_file_and_fine_tuning_keeps_them(blobs, tmp_path):
    image, _, truth = blobs
    model = nu.train(image, truth, mode="instance", epochs=1, seed=0, loss="ce+dice", edge_weight=3,
                     instance_boundary="thick", augment="elastic, blur", **TINY)
    c = model.config
    assert (c.loss, c.edge_weight, c.instance_boundary, c.augment) == ("ce+dice", 3.0, "thick", ("elastic", "blur"))
    nu.save_model(model, tmp_path / "m.pt")
    loaded = nu.load_model(tmp_path / "m.pt")
    assert loaded.config == c
    assert "loss ce+dice, edge weight 3, boundary thick, extra augmentation elastic, blur" in loaded.describe()
    tuned = nu.train(image, truth, mode="instance", epochs=1, seed=0, init=loaded, patch_size=32, batch_size=2)
    assert (tuned.config.loss, tuned.config.instance_boundary, tuned.config.augment) == ("ce+dice", "thick",
                                                                                         ("elastic", "blur"))
    again = nu.train(image, truth, mode="instance", epochs=1, seed=0, init=loaded, augment="none", loss="ce",
                     patch_size=32, batch_size=2)
    assert again.config.augment == () and again.config.loss == "ce"


def test_older_model_files_without_the_choices_read_as_the_defaults():
    old = ModelConfig(mode="instance").to_dict()
    # at their defaults the choices are left out of the file: older versions open it
    assert not {"loss", "edge_weight", "instance_boundary", "augment"} & set(old)
    c = ModelConfig.from_dict(old)
    assert (c.loss, c.edge_weight, c.instance_boundary, c.augment) == ("ce", 1.0, "inner", ())
    chosen = ModelConfig(mode="instance", loss="ce+dice", augment=("blur",)).to_dict()
    assert (chosen["loss"], chosen["augment"]) == ("ce+dice", ["blur"])
    assert ModelConfig.from_dict(chosen).augment == ("blur",)


def test_a_new_instance_model_weighs_its_outlines_and_fine_tuning_an_older_one_does_not(blobs):
    image, strokes, truth = blobs
    instance = nu.train(image, truth, mode="instance", epochs=1, seed=0, **TINY)
    assert instance.config.edge_weight == 3.0  # conventions.DEFAULT_EDGE_WEIGHT: it is in the file
    assert ModelConfig.from_dict(instance.config.to_dict()).edge_weight == 3.0
    assert nu.train(image, strokes, epochs=1, seed=0, **TINY).config.edge_weight == 1.0
    plain = nu.train(image, truth, mode="instance", epochs=1, seed=0, edge_weight=1, **TINY)
    assert "edge_weight" not in plain.config.to_dict()  # as a file of before the default changed
    tuned = nu.train(image, truth, mode="instance", epochs=1, seed=0, init=plain, patch_size=32, batch_size=2)
    assert tuned.config.edge_weight == 1.0  # fine-tuning goes on as the model was trained
    volume, masks = make_nuclei((8, 32, 32), seed=0)
    assert nu.train(volume, masks, mode="instance", dims=3, epochs=1, seed=0, depth=2, base_channels=4,
                    patch_size=(8, 32, 32), batch_size=1).config.edge_weight == 1.0  # 3D: weight 2 lost


def test_dense_2d_masks_get_32_base_channels_where_training_runs_in_mixed_precision(blobs, monkeypatch):
    from napari_unet import device as devices
    from napari_unet.train.settings import resolve_settings

    image, strokes, truth = blobs

    def base(labels, **kw):
        return resolve_settings(image, labels, epochs=1, device="cpu", **kw)[0].config.base_channels

    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)
    assert base(truth, mode="instance") == 32
    assert base(truth, mode="instance", mixed_precision=False) == 16  # an fp32 step of 32 costs 2.4x
    assert base(strokes) == 16  # strokes lost with 32
    assert base(truth, mode="instance", base_channels=8) == 8  # asked for: kept
    volume, masks = make_nuclei((8, 32, 32), seed=0)
    assert resolve_settings(volume, masks, mode="instance", dims=3, epochs=1, device="cpu")[0].config.base_channels == 16
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)
    assert base(truth, mode="instance") == 16


@pytest.mark.parametrize("fields,message", [
    (dict(loss="focal"), "loss must be one of"),
    (dict(edge_weight=0.5), "edge_weight must be a number of at least 1"),
    (dict(edge_weight=float("nan")), "edge_weight"),
    (dict(instance_boundary="outer"), "instance_boundary must be one of"),
    (dict(augment="elastic,warp"), "augment must name some of"),
])
def test_bad_choices_are_refused_before_training(blobs, fields, message):
    image, strokes, _ = blobs
    with pytest.raises(ValueError, match=message):
        nu.train(image, strokes, epochs=1, **TINY, **fields)


def test_edge_weight_weighs_the_errors_along_outlines_more():
    target = torch.zeros((1, 8, 8), dtype=torch.long)
    target[0, :, 4:] = 1
    target[0, 0, :] = -1  # not annotated: no outline there
    edge = edge_pixels(target)[0]
    assert edge[1:, 3:5].all() and not edge[1:, :3].any() and not edge[1:, 5:].any() and not edge[0].any()
    right = torch.nn.functional.one_hot(target.clamp_min(0), 2).movedim(-1, 1).float() * 10
    at_edge, inside = right.clone(), right.clone()
    at_edge[0, :, 3:5, 3] = torch.tensor([[-10.0], [10.0]])  # 2 wrong pixels on the outline
    inside[0, :, 3:5, 0] = torch.tensor([[-10.0], [10.0]])  # 2 wrong pixels far from it
    plain = [masked_loss(x, target, "ce")[0].item() for x in (at_edge, inside)]
    assert plain[0] == pytest.approx(plain[1])
    weighted = [masked_loss(x, target, "ce", edge_weight=4)[0].item() for x in (at_edge, inside)]
    assert weighted[0] > 2.5 * weighted[1]
    assert masked_loss(right, target, "ce", edge_weight=4)[0].item() < 1e-3  # right is right


def test_instance_boundary_variants():
    labels = np.zeros((12, 22), np.int32)
    labels[1:10, 1:8], labels[1:10, 8:15], labels[3:8, 17:21] = 1, 2, 3  # 1 and 2 touch; 3 stands alone
    inner, thick, touching = (instance_targets(labels, b) for b in ("inner", "thick", "touching"))
    for t in (inner, thick, touching):  # the rim is always inside the objects
        assert ((t > 0) == (labels > 0)).all()
    assert (inner[1:10, 1] == 2).all() and (inner[4:7, 2] == 1).all()
    assert (thick[4:7, 2] == 2).all() and (thick[4:7, 3] == 1).all()
    assert set(zip(*np.nonzero(touching == 2))) == {(r, c) for r in range(1, 10) for c in (7, 8)}


def test_extra_augmentation_keeps_image_and_target_aligned():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:48, :48]
    target = (((yy // 8) + (xx // 8)) % 2).astype(np.int64)  # a checkerboard: any misalignment shows
    image = target.astype(np.float32)[None]
    moved = 0
    for _ in range(6):
        img, tgt = augment_patch(image, target, rng, extra=("elastic",))
        # undo the intensity augmentation (scale/shift/noise, gamma) per patch: threshold at the middle
        crisp = np.abs(img[0] - img[0].mean()) > 0.5 * img[0].std()
        assert ((img[0] > img[0].mean()) == (tgt == 1))[crisp].mean() > 0.97
        moved += int((np.abs(np.diff(tgt, axis=1)) != np.abs(np.diff(target, axis=1))).any())
    assert moved  # the deformation did something beyond flips and rotations


def test_cli_train_flags_reach_the_model(blobs, tmp_path, capsys):
    import tifffile

    image, _, truth = blobs
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "masks.tif", truth)
    code = main(["train", "-i", str(tmp_path / "img.tif"), "-l", str(tmp_path / "masks.tif"), "-o",
                 str(tmp_path / "m.pt"), "--mode", "instance", "--epochs", "1", "--depth", "2", "--base-channels",
                 "4", "--loss", "ce+dice", "--edge-weight", "2", "--instance-boundary", "touching",
                 "--augment", "contrast"])
    assert code == 0, capsys.readouterr().err
    c = nu.load_model(tmp_path / "m.pt").config
    assert (c.loss, c.edge_weight, c.instance_boundary, c.augment) == ("ce+dice", 2.0, "touching", ("contrast",))


def test_the_boundary_follows_the_voxel_spacing():
    """Planes 3 px apart: a plane of rim against the background would be 3 px of tissue, so the top
    and bottom planes of a nucleus stay interior (its in-plane rim aside); where two nuclei touch along
    Z, both facing planes are rim."""
    labels = np.zeros((8, 12, 12), np.int32)
    labels[1:4, 2:10, 2:10], labels[4:7, 2:10, 2:10] = 1, 2  # stacked along Z, touching
    plain, spaced = instance_targets(labels), instance_targets(labels, spacing=(3, 1, 1))
    assert (plain[1, 3:9, 3:9] == 2).all() and (spaced[1, 3:9, 3:9] == 1).all()  # top plane
    assert (spaced[6, 3:9, 3:9] == 1).all()  # bottom plane
    assert (spaced[3:5, 3:9, 3:9] == 2).all()  # where the nuclei touch
    assert (spaced[2, 2, 2:10] == 2).all()  # the in-plane rim is kept
    np.testing.assert_array_equal(instance_targets(labels, spacing=(1, 1, 1)), plain)


def test_training_with_a_spacing_draws_the_boundary_with_it(monkeypatch):
    from napari_unet.data import targets
    from napari_unet.synthetic import make_nuclei

    seen = []
    original = targets.instance_targets
    monkeypatch.setattr(targets, "instance_targets", lambda lab, b, spacing=None: seen.append(spacing) or
                        original(lab, b, spacing))
    image, labels = make_nuclei((8, 32, 32), seed=0)
    for spacing in (None, (3, 1, 1)):
        nu.train(image, labels, mode="instance", dims=3, depth=2, base_channels=4, epochs=1, seed=0,
                 patch_size=(8, 32, 32), spacing=spacing)
    assert seen == [None, (3.0, 1.0, 1.0)]
