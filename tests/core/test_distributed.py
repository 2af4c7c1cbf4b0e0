"""Prediction on a dask LocalCluster (worker processes, no network): the in-process result, resumable."""
import dataclasses
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

import napari_unet as nu  # noqa: E402
from napari_unet import blocktasks, distributed as nd  # noqa: E402
from napari_unet.blockwise import segment_blockwise  # noqa: E402

from .test_blockwise import same_partition  # noqa: E402
from .test_predict import random_model  # noqa: E402
from .test_stitch import thresholding_model, trimmed_stack  # noqa: E402


@pytest.fixture(scope="module")
def client():
    c, _ = nd.connect(workers=2)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    semantic = random_model(depth=2, base=4, classes=(1, 2, 3), seed=0)
    instance = random_model(depth=2, base=4, mode="instance", classes=(1, 2, 3), seed=1)
    nu.save_model(semantic, root / "semantic.pt")
    nu.save_model(instance, root / "instance.pt")
    rng = np.random.default_rng(0)
    stacks = [rng.random((2, 96, 150)).astype(np.float32) for _ in range(2)]
    for n, stack in enumerate(stacks):
        np.save(root / f"stack{n}.npy", stack)
    return root, semantic, instance, stacks


def _read(path):
    return zarr.open_array(str(path), mode="r")[...]


def test_semantic_labels_and_probabilities_equal_in_process_for_every_input(client, files, tmp_path):
    root, model, _, stacks = files
    (tmp_path / "labels").mkdir()
    (tmp_path / "prob").mkdir()
    written = nd.segment(root / "semantic.pt", str(root / "stack*.npy"), out=tmp_path / "labels",
                         probabilities_out=tmp_path / "prob", client=client, block=64)
    assert [Path(p).name for p in written] == ["stack0.zarr", "stack1.zarr"]
    for n, stack in enumerate(stacks):
        labels = _read(tmp_path / "labels" / f"stack{n}.zarr")
        assert (labels == nu.segment(model, stack)).mean() >= 0.99999
        np.testing.assert_allclose(_read(tmp_path / "prob" / f"stack{n}.zarr"), nu.predict(model, stack), atol=1e-5)
        assert nu.io.read_image(tmp_path / "labels" / f"stack{n}.zarr").shape == stack.shape  # complete
    assert not [p for p in tmp_path.rglob(".*partial*")]  # nothing left behind


def test_workers_predict_in_the_precision_asked(client, files, tmp_path):
    root, model, _, stacks = files
    nd.segment(root / "semantic.pt", str(root / "stack0.npy"), out=tmp_path / "l.zarr",
               probabilities_out=tmp_path / "p.zarr", client=client, block=64, mixed_precision=False)
    exact = nu.predict(model, stacks[0], mixed_precision=False)
    np.testing.assert_allclose(_read(tmp_path / "p.zarr"), exact, atol=1e-5)  # fp32 on the workers too
    if nu.device.cpu_computes_bf16():  # and the default is bf16 there: the option was not ignored
        assert np.abs(nu.predict(model, stacks[0]) - exact).max() > 1e-4


def test_instance_labels_are_the_local_partition(client, files, tmp_path):
    root, _, model, stacks = files
    nd.segment(root / "instance.pt", root / "stack0.npy", out=tmp_path / "l.zarr", client=client, block=64,
               margin=48)
    got = _read(tmp_path / "l.zarr")
    np.testing.assert_array_equal(got, segment_blockwise(model, stacks[0], block=64, margin=48))
    # a context as large as the plane: the whole-image partition, whatever the size of the objects
    nd.segment(root / "instance.pt", root / "stack0.npy", out=tmp_path / "w.zarr", client=client, block=64,
               margin=150)
    assert same_partition(_read(tmp_path / "w.zarr"), nu.segment(model, stacks[0], tile=None))


def test_a_killed_worker_changes_nothing(client, files, tmp_path):
    root, model, _, stacks = files
    events = nd.iter_segment(root / "semantic.pt", root / "stack1.npy", out=tmp_path / "k.zarr", client=client,
                             block=64)
    killed = False
    for event in events:
        if event.kind == "tiles" and not killed:
            pid = next(iter(client.run(os.getpid).values()))
            os.kill(pid, signal.SIGKILL)  # one worker process dies mid-run; its tasks are retried
            killed = True
    assert killed
    np.testing.assert_array_equal(_read(tmp_path / "k.zarr"), nu.segment(model, stacks[1]))


def test_an_interrupted_run_resumes_with_only_the_missing_blocks(client, files, tmp_path):
    root, _, model, stacks = files
    out = tmp_path / "r.zarr"
    events = nd.iter_segment(root / "instance.pt", root / "stack1.npy", out=out, client=client, block=64)
    first = next(events)
    for event in events:
        if event.kind == "tiles" and event.done >= 3:
            break
    events.close()  # interrupted: no output, the partial job stays
    assert not out.exists()
    time.sleep(1.0)  # blocks already running on the workers finish writing
    (partial,) = tmp_path.glob(".r.partial-*")
    done = _read(partial / "done.zarr")
    assert 3 <= (done > 0).sum() < len(done)
    resumed = nd.iter_segment(root / "instance.pt", root / "stack1.npy", out=out, client=client, block=64)
    start = next(resumed)
    assert start.total == first.total - int((done > 0).sum())  # only what is missing
    for _ in resumed:
        pass
    np.testing.assert_array_equal(_read(out), segment_blockwise(model, stacks[1], block=64))
    assert not partial.exists()


def test_an_unreachable_scheduler_is_one_clear_error_at_once():
    t = time.perf_counter()
    with pytest.raises(ValueError, match="cannot reach the dask scheduler at 'tcp://127.0.0.1:9'"):
        nd.connect("tcp://127.0.0.1:9", timeout=1)
    assert time.perf_counter() - t < 10


def test_workers_check_the_model_input_and_output_before_any_block(files, tmp_path):
    root = files[0]
    job = blocktasks.BlockJob(str(root / "missing.pt"), "0" * 64, str(root / "stack0.npy"), str(tmp_path), None,
                              True, False, (), (64, 64), 0, 12, 1, (2,), (96, 150))
    assert "cannot use the model file" in blocktasks.check_worker(job)
    sha = blocktasks.sha256(root / "semantic.pt")
    good = blocktasks.BlockJob(str(root / "semantic.pt"), sha, str(root / "nothing.npy"), str(tmp_path), None,
                               True, False, (), (64, 64), 0, 12, 1, (2,), (96, 150))
    assert "cannot read the input" in blocktasks.check_worker(good)
    other = blocktasks.BlockJob(str(root / "instance.pt"), sha, str(root / "stack0.npy"), str(tmp_path / "gone"),
                                None, True, False, (), (64, 64), 0, 12, 1, (2,), (96, 150))
    assert "is not the client's" in blocktasks.check_worker(other)
    unwritable = blocktasks.BlockJob(str(root / "semantic.pt"), sha, str(root / "stack0.npy"), str(tmp_path / "gone"),
                                     None, True, False, (), (64, 64), 0, 12, 1, (2,), (96, 150))
    assert blocktasks.check_worker(unwritable).startswith("cannot write the output folder")
    assert blocktasks.check_worker(dataclasses.replace(unwritable, partial=str(tmp_path))) == ""  # all fine


def test_inputs_and_outputs_are_checked_before_a_cluster_starts(files, tmp_path):
    root = files[0]
    with pytest.raises(TypeError, match="give a file path"):
        nd.segment(root / "semantic.pt", np.zeros((8, 8)), out=tmp_path / "o.zarr")
    with pytest.raises(TypeError, match="save it with napari_unet.save_model"):
        nd.segment(files[1], root / "stack0.npy", out=tmp_path / "o.zarr")
    with pytest.raises(ValueError, match="writes zarr"):
        nd.segment(root / "semantic.pt", root / "stack0.npy", out=tmp_path / "o.tif")
    np.save(tmp_path / "wide.npy", np.zeros((16, 700), np.float32))
    with pytest.raises(ValueError, match=r"block 600 is not a multiple of the output chunks \(512\)"):
        nd.segment(root / "semantic.pt", tmp_path / "wide.npy", out=tmp_path / "o.zarr", block=600, workers=1)


def test_the_command_line_runs_on_a_scheduler_and_says_in_one_line_when_it_cannot(client, files, tmp_path, capsys):
    from napari_unet.cli import main

    root, model, _, stacks = files
    out = tmp_path / "cli.zarr"
    assert main(["predict", str(root / "semantic.pt"), str(root / "stack0.npy"), "-o", str(out),
                 "--scheduler", client.scheduler.address, "--block", "64"]) == 0
    np.testing.assert_array_equal(_read(out), nu.segment(model, stacks[0]))
    capsys.readouterr()
    t = time.perf_counter()
    bad = tmp_path / "bad.zarr"
    assert main(["predict", str(root / "semantic.pt"), str(root / "stack0.npy"), "-o", str(bad),
                 "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach the dask scheduler at 'tcp://127.0.0.1:9'") and "\n" not in err
    assert time.perf_counter() - t < 20
    assert not bad.exists() and not list(tmp_path.glob(".bad*"))


def test_dask_distributed_is_imported_only_when_a_cluster_runs():
    import subprocess
    import sys

    code = ("import sys, napari_unet, napari_unet.cli, napari_unet.distributed, napari_unet.blockwise;"
            "print('distributed' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@pytest.fixture(scope="module")
def zstack(files):
    """A 2D instance model's z-stack: planes of two blocks each (64 px), linked across planes."""
    root, _, model, _ = files
    stack = np.random.default_rng(3).random((5, 64, 128)).astype(np.float32)
    np.save(root / "zstack.npy", stack)
    return root / "zstack.npy", nu.segment(model, stack, stitch_planes=True)


def test_stitched_planes_are_the_in_process_stitched_labels_and_an_interrupted_run_resumes(client, files, zstack,
                                                                                             tmp_path):
    root, model = files[0], files[2]
    path, expected = zstack
    assert len(np.unique(expected)) - 1 < nu.segment(model, np.load(path)).max()  # objects were linked
    out = tmp_path / "z.zarr"
    events = nd.iter_segment(root / "instance.pt", path, out=out, client=client, block=64, margin=64,
                             stitch_planes=True)
    for event in events:
        if event.kind == "item":  # killed while the linked ids are being written
            break
    events.close()
    time.sleep(1.0)  # tasks already running finish
    assert not out.exists()  # nothing published
    (partial,) = tmp_path.glob(".z.partial-*")
    assert (_read(partial / "done.zarr") == blocktasks.DONE_FINAL).any()
    nd.segment(root / "instance.pt", path, out=out, client=client, block=64, margin=64, stitch_planes=True)
    # the context covers each plane: the whole-plane objects, linked with the same rule and ids
    np.testing.assert_array_equal(_read(out), expected)
    assert not partial.exists()


def test_the_command_line_stitches_on_a_cluster(client, files, zstack, tmp_path):
    from napari_unet.cli import main

    path, expected = zstack
    out = tmp_path / "cli.zarr"
    assert main(["predict", str(files[0] / "instance.pt"), str(path), "-o", str(out), "--scheduler",
                 client.scheduler.address, "--stitch-planes"]) == 0
    np.testing.assert_array_equal(_read(out), expected)


def test_trimming_is_turned_off_on_a_cluster_as_in_process(client, tmp_path):
    """``--no-stitch-trim`` on a cluster, blocks smaller than the planes: the in-process untrimmed labels
    (a cap and a single-plane object kept, which the default drops)."""
    from napari_unet.cli import main

    model, (image, dropped) = thresholding_model(), trimmed_stack()
    nu.save_model(model, tmp_path / "m.pt")
    np.save(tmp_path / "stack.npy", image)
    untrimmed = nu.segment(model, image, stitch_planes=True, stitch_trim=False)
    assert (untrimmed[dropped] > 0).all() and not nu.segment(model, image, stitch_planes=True)[dropped].any()
    assert main(["predict", str(tmp_path / "m.pt"), str(tmp_path / "stack.npy"), "-o", str(tmp_path / "u.zarr"),
                 "--scheduler", client.scheduler.address, "--block", "32", "--stitch-planes", "--no-stitch-trim"]) == 0
    np.testing.assert_array_equal(_read(tmp_path / "u.zarr"), untrimmed)


def test_a_file_s_declared_channel_axis_is_used_on_a_cluster(client, files, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from napari_unet.cli import main

    model = random_model(depth=2, base=4, in_channels=2, seed=4)
    nu.save_model(model, tmp_path / "two.pt")
    image = np.random.default_rng(5).random((3, 2, 48, 64)).astype(np.float32)  # z, c, y, x
    tifffile.imwrite(tmp_path / "zcyx.tif", image, imagej=True, metadata={"axes": "ZCYX"})
    out = tmp_path / "o.zarr"
    assert main(["predict", str(tmp_path / "two.pt"), str(tmp_path / "zcyx.tif"), "-o", str(out), "--scheduler",
                 client.scheduler.address]) == 0
    np.testing.assert_array_equal(_read(out), nu.segment(model, image, channel_axis=1))
