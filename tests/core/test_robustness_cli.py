"""Mistakes a new user makes with the CLI and the Python API: each got a traceback, silently wrong results,
or a message that could not be followed (docs/robustness-cli.md)."""
import zipfile

import numpy as np
import pytest

import napari_unet as nu

from .test_predict import random_model


def _damage_one_weight_tensor(good, bad):
    """Overwrite the middle of the largest stored tensor; the archive's layout stays valid."""
    with zipfile.ZipFile(good) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data = bytearray(good.read_bytes())
    data[start + info.file_size // 2: start + info.file_size // 2 + 64] = b"\x7f" * 64
    bad.write_bytes(bytes(data))


def test_a_model_file_with_damaged_weights_is_refused_not_used(tmp_path):
    good = nu.save_model(random_model(), tmp_path / "m.pt")
    _damage_one_weight_tensor(good, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="damaged"):
        nu.load_model(tmp_path / "bad.pt")
    nu.load_model(good)  # the check passes on an intact file


@pytest.mark.parametrize("mode, classes, dtype", [("instance", (1, 2, 3), np.uint8), ("instance", (1, 2, 3), np.uint16),
                                                  ("semantic", (1, 2), bool), ("semantic", (1, 2), np.float32),
                                                  ("semantic", (1, 300), np.uint8)])
def test_a_labels_output_that_cannot_hold_the_ids_is_refused_before_any_work(mode, classes, dtype):
    model = random_model(mode=mode, classes=classes)
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    out = np.ones((32, 32), dtype)
    with pytest.raises(TypeError, match="labels_out has dtype"):
        nu.segment(model, image, out=out)  # would wrap instance ids past 255, or turn classes into True
    assert (out == 1).all()


def test_outputs_that_are_not_arrays_get_a_type_error():
    image = np.zeros((32, 32), np.float32)
    with pytest.raises(TypeError, match="labels_out must be an array"):
        nu.segment(random_model(), image, out=[])
    with pytest.raises(TypeError, match="probabilities_out must be an array"):
        nu.predict(random_model(), image, out="prob.zarr")


def test_wide_enough_labels_outputs_are_taken():
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    expected = nu.segment(random_model(mode="instance", classes=(1, 2, 3)), image)
    for dtype in (np.int32, np.uint32, np.int64):
        out = np.zeros((32, 32), dtype)
        nu.segment(random_model(mode="instance", classes=(1, 2, 3)), image, out=out)
        np.testing.assert_array_equal(out, expected)
    nu.segment(random_model(), image, out=np.zeros((32, 32), np.int16))  # semantic ids 0 and 2


def test_an_array_inside_a_zarr_group_can_be_read_as_the_error_advises(tmp_path):
    import zarr

    from napari_unet.io import read_image

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    for name, value in (("a", 1), ("b", 2)):
        group.create_array(name, shape=(8, 9), dtype="u2", fill_value=value)
    with pytest.raises(ValueError, match="point to one of them"):
        read_image(tmp_path / "g.zarr")
    np.testing.assert_array_equal(read_image(tmp_path / "g.zarr" / "b")[:], np.full((8, 9), 2))
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "g.zarr" / "c")
    with pytest.raises(ValueError, match="unknown image format"):
        read_image(tmp_path / "g.zarr" / "c.png")


def test_ome_zarr_labels_and_levels_are_readable_inputs(tmp_path):
    from napari_unet.io import declared_channel_axis, read_image

    from .test_omezarr import make_image

    data = make_image(tmp_path / "img.ome.zarr", channels=2)  # (c, y, x) with a label 'theirs' of its own
    labels = read_image(tmp_path / "img.ome.zarr" / "labels" / "theirs")  # to train on, or to segment again
    np.testing.assert_array_equal(np.asarray(labels[:]), (data > 300).astype(np.uint8))
    level = tmp_path / "img.ome.zarr" / "s1"
    assert read_image(level).shape == (2, 32, 48)
    assert declared_channel_axis(level) == 0  # the image's channels, never taken as planes


@pytest.mark.parametrize("image, match", [(None, "got NoneType"), ("img.tif", "read_image"),
                                          ([np.zeros((32, 32))], "one array per image"),
                                          (np.full((32, 32), "a"), "real numbers"),
                                          (np.zeros((32, 32), np.complex64), "real numbers")])
def test_what_is_not_an_image_array_gets_a_type_error_saying_so(image, match):
    model = random_model()
    for call in (lambda: nu.segment(model, image), lambda: nu.predict(model, image),
                 lambda: nu.segment_at(model, image, (5, 5))):
        with pytest.raises(TypeError, match=match):
            call()
    labels = np.ones((32, 32), np.uint8)
    labels[:4] = 2
    with pytest.raises(TypeError, match=match):
        nu.train([image], [labels], depth=2, base_channels=4, epochs=1, device="cpu")


@pytest.mark.parametrize("seed", [-1, 1.5, 2**70, "0"])
def test_a_bad_seed_is_refused_with_a_message_of_ours(seed):
    labels = np.ones((32, 32), np.uint8)
    labels[:4] = 2
    with pytest.raises(ValueError, match="seed must be a whole number"):
        nu.train([np.zeros((32, 32))], [labels], depth=2, base_channels=4, epochs=1, device="cpu", seed=seed)


def test_instance_only_options_on_a_semantic_model_are_refused_not_ignored(tmp_path, capsys):
    from napari_unet.cli import main

    image = np.zeros((32, 32), np.float32)
    for option in ({"min_fraction": 0.5}, {"min_size": 30}):
        with pytest.raises(ValueError, match="instance model"):
            nu.segment(random_model(), image, **option)
    nu.save_model(random_model(), tmp_path / "m.pt")
    np.save(tmp_path / "img.npy", image)
    code = main(["predict", str(tmp_path / "m.pt"), str(tmp_path / "img.npy"), "-o", str(tmp_path / "l.tif"),
                 "--min-fraction", "0.5"])
    assert code == 2 and "--min-fraction" in capsys.readouterr().err
    assert not (tmp_path / "l.tif").exists()


def test_an_output_that_is_the_image_itself_is_refused():
    image = (np.random.default_rng(0).random((96, 96)) * 1000).astype(np.uint16)
    kept = image.copy()
    with pytest.raises(ValueError, match="the image itself"):
        nu.segment(random_model(), image, out=image, tile=64)  # later tiles would read labels as pixels
    with pytest.raises(ValueError, match="the image itself"):
        nu.segment(random_model(), image, out=image[:, ::-1])  # a view is the same memory
    np.testing.assert_array_equal(image, kept)


@pytest.mark.parametrize("labels", [np.array([[0, 2**63]], np.uint64), np.array([[0, 1e30]])])
def test_label_ids_beyond_int64_are_refused_not_wrapped(labels):
    from napari_unet.data import check_labels

    with pytest.raises(ValueError, match="2\\*\\*63"):
        check_labels(labels)


def test_train_refuses_an_image_given_as_its_own_labels(tmp_path, capsys):
    from napari_unet.cli import main

    labels = np.ones((32, 32), np.uint8)
    labels[:4] = 2
    np.save(tmp_path / "both.npy", labels)
    code = main(["train", "-i", str(tmp_path / "both.npy"), "-l", str(tmp_path / "both.npy"), "-o",
                 str(tmp_path / "m.pt"), "--epochs", "1", "--depth", "2", "--base-channels", "4"])
    assert code == 2 and "-i and -l both name" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("point", [(float("nan"), 3), "10,10", None, ("a", 2)])
def test_segment_at_a_point_that_is_not_numbers(point):
    with pytest.raises(ValueError, match="the point must be a sequence of finite numbers"):
        nu.segment_at(random_model(), np.zeros((32, 32), np.float32), point)


def test_segment_at_a_window_that_is_not_whole_numbers():
    with pytest.raises(ValueError, match="window must be an integer or 2 integers"):
        nu.segment_at(random_model(), np.zeros((32, 32), np.float32), (5, 5), window=64.5)


class _Bar:
    total = None

    def update(self, n):
        pass


@pytest.mark.parametrize("progress", [5, _Bar])
def test_a_progress_that_is_not_a_progress_bar_is_refused_before_training(progress):
    labels = np.ones((32, 32), np.uint8)
    labels[:4] = 2
    with pytest.raises(TypeError, match="progress must be a tqdm-like object"):
        nu.train([np.zeros((32, 32))], [labels], depth=2, base_channels=4, epochs=1, device="cpu",
                 progress=progress)  # the class itself (tqdm instead of tqdm()), or a number
    with pytest.raises(TypeError, match="progress must be a tqdm-like object"):
        nu.predict(random_model(), np.zeros((32, 32)), progress=progress)
    nu.predict(random_model(), np.zeros((32, 32)), progress=_Bar())


def test_an_empty_image_is_called_empty_not_all_nan_or_unannotated():
    model, empty = random_model(), np.zeros((0, 32), np.float32)
    for call in (lambda: nu.segment(model, empty), lambda: nu.segment_at(model, empty, (0, 0)),
                 lambda: nu.train(empty, np.zeros((0, 32), np.uint8), depth=2, base_channels=4, epochs=1)):
        with pytest.raises(ValueError, match=r"the image is empty \(shape \(0, 32\)\)"):
            call()


def test_a_too_small_tile_is_named_as_the_user_gave_it():
    with pytest.raises(ValueError, match="tile size 3 is too small"):  # was "tile size 0" (rounded down)
        nu.segment(random_model(), np.zeros((64, 64), np.float32), tile=3)


@pytest.mark.parametrize("option", [dict(halo=2.5), dict(halo=-8), dict(min_size=10.5), dict(min_size=-1)])
def test_pixel_counts_that_are_not_whole_numbers_are_refused_not_truncated(option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"{name} must be a whole number of pixels"):
        nu.segment(random_model(mode="instance", classes=(1, 2, 3)), np.zeros((64, 64), np.float32), **option)


def test_zarr_folders_without_one_array_say_what_to_read(tmp_path):
    import zarr

    from napari_unet.io import read_image

    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ValueError, match="not a zarr store"):
        read_image(tmp_path / "empty.zarr")
    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w")
    with pytest.raises(ValueError, match="empty zarr group"):
        read_image(tmp_path / "img.zarr")
    labels = group.create_group("labels")
    for name in ("cells", "nuclei"):  # label images are groups (OME-Zarr); plain arrays here
        labels.create_group(name).create_array("0", shape=(4, 4), dtype="u1")
    with pytest.raises(ValueError, match="img.zarr/labels/cells"):  # a path that reads, as the next test shows
        read_image(tmp_path / "img.zarr" / "labels")
    assert read_image(tmp_path / "img.zarr" / "labels" / "nuclei").shape == (4, 4)  # its one array


def test_predict_finishes_when_the_reader_of_its_messages_goes_away(tmp_path):
    """``napari-unet predict ... 2>&1 | head -1``: the closed pipe ended the run in an abort, without output."""
    import os
    import subprocess
    import sys

    nu.save_model(random_model(), tmp_path / "m.pt")
    np.save(tmp_path / "stack.npy", np.random.default_rng(0).random((12, 64, 64)).astype(np.float32))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "napari_unet", "predict", str(tmp_path / "m.pt"), str(tmp_path / "stack.npy"),
           "-o", str(tmp_path / "labels.zarr")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    proc.stdout.readline()  # the plan's line, then the reader leaves
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0
    assert nu.io.read_image(tmp_path / "labels.zarr").shape == (12, 64, 64)


def test_train_uses_the_channel_axis_the_file_declares_as_predict_does(tmp_path, capsys):
    import tifffile

    from napari_unet.cli import main

    rng = np.random.default_rng(0)
    image = (rng.random((2, 32, 32)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "cyx.tif", image, imagej=True, metadata={"axes": "CYX"})
    labels = np.ones((32, 32), np.uint8)
    labels[:8] = 2
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    args = ["train", "-i", tmp_path / "cyx.tif", "-l", tmp_path / "labels.tif", "-o", tmp_path / "m.pt",
            "--epochs", "1", "--depth", "2", "--base-channels", "4", "--device", "cpu"]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    assert nu.load_model(tmp_path / "m.pt").config.in_channels == 2
    tifffile.imwrite(tmp_path / "yx.tif", image[0])
    args[2:3] = [tmp_path / "cyx.tif", "-i", tmp_path / "yx.tif", "-l", tmp_path / "labels.tif"]
    assert main([str(a) for a in args]) == 2 and "declare different channel axes" in capsys.readouterr().err


def test_export_refuses_a_test_image_with_missing_values(tmp_path):
    pytest.importorskip("bioimageio.spec")
    from napari_unet.bioimageio import export_package

    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    image[30:34, 30:34] = np.nan  # its test tensors (input and output) would hold NaN
    with pytest.raises(ValueError, match="NaN or infinite"):
        export_package(random_model(), tmp_path / "p.zip", test_image=image)
    assert list(tmp_path.iterdir()) == []


def test_an_output_inside_a_file_is_refused_before_any_work(tmp_path, capsys):
    from napari_unet.cli import main

    labels = np.ones((32, 32), np.uint8)
    labels[:8] = 2
    np.save(tmp_path / "img.npy", np.zeros((32, 32), np.float32))
    np.save(tmp_path / "labels.npy", labels)
    nu.save_model(random_model(), tmp_path / "m.pt")
    file = tmp_path / "img.npy"
    for args in (["train", "-i", file, "-l", tmp_path / "labels.npy", "-o", file / "m.pt", "--epochs", "1"],
                 ["predict", tmp_path / "m.pt", file, "-o", file / "labels.tif"]):
        # train failed only when saving, after the whole training run (RuntimeError, exit 1)
        assert main([str(a) for a in args]) == 2
        assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        nu.save_model(random_model(), file / "m.pt")


def test_training_that_diverges_stops_with_an_error_instead_of_returning_a_nan_model():
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    labels = np.ones((64, 64), np.uint8)
    labels[20:40, 20:40] = 2
    with pytest.raises(ValueError, match="training diverged"):  # its network predicted NaN: all background
        nu.train([image], [labels], depth=2, base_channels=4, epochs=3, seed=0, device="cpu", learning_rate=1e6,
                 mixed_precision=False)


def test_a_segmentation_given_as_semantic_labels_gets_advice():
    model = random_model()
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    segmentation = np.zeros((64, 64), np.uint8)
    segmentation[10:30, 10:30] = 2  # what segment writes: background 0, objects 2
    with pytest.raises(ValueError, match="to_training_labels"):
        nu.train([image], [segmentation], depth=2, base_channels=4, epochs=1, device="cpu")
    from napari_unet.interactive import to_training_labels

    nu.train([image], [to_training_labels(segmentation, "semantic", model.config.class_ids)], depth=2,
             base_channels=4, epochs=1, device="cpu")  # the advice works
