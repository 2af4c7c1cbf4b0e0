"""Publishing outputs: whose files may be replaced, symlinks, leftovers of killed runs, interruptions."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr

from napari_unet.io import LABELS_ATTRS, read_image
from napari_unet.outputs import OutputFile, commit_together, write_image
from napari_unet.publish import (_HOST, InterruptedAfterCommit, StaleOutputWarning, atomic_path, clean_stale,
                                 uninterruptible)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_users_folder_named_like_a_zarr_output_is_refused_and_kept(tmp_path):
    folder = tmp_path / "results.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("three weeks of work")
    zarr.open_array(str(tmp_path / "theirs.zarr"), mode="w", shape=(4, 4), dtype="u1")  # a zarr, not ours
    for path in (folder, tmp_path / "theirs.zarr"):
        with pytest.raises(ValueError, match="not written by napari-unet.*never replaced"):
            write_image(path, np.ones((4, 4), np.uint8))
    assert (folder / "notes.txt").read_text() == "three weeks of work"
    assert np.asarray(zarr.open_array(str(tmp_path / "theirs.zarr"), mode="r")).shape == (4, 4)


@pytest.mark.parametrize("ext", [".tif", ".zarr"])
def test_an_earlier_napari_unet_output_is_replaced(tmp_path, ext):
    path = tmp_path / f"labels{ext}"
    write_image(path, np.full((4, 4), 1, np.uint8))
    write_image(path, np.full((4, 4), 2, np.uint8), attrs=LABELS_ATTRS)
    assert (np.asarray(read_image(path)) == 2).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # the swapped-out folder is gone too


def test_foreign_tiffs_and_any_existing_npy_are_never_replaced(tmp_path):
    tifffile.imwrite(tmp_path / "theirs.tif", np.ones((4, 4), np.uint8))
    np.save(tmp_path / "theirs.npy", np.ones((4, 4), np.uint8))
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="not written by napari-unet"):
        OutputFile(tmp_path / "theirs.tif", (4, 4), np.uint8)
    with pytest.raises(ValueError, match="cannot record who wrote it"):
        OutputFile(tmp_path / "theirs.npy", (4, 4), np.uint8)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_symlinked_output_is_written_where_it_points_and_the_link_stays(tmp_path):
    (tmp_path / "disk").mkdir()
    target = tmp_path / "disk" / "labels.tif"
    write_image(target, np.full((4, 4), 1, np.uint8))
    link = tmp_path / "labels.tif"
    link.symlink_to(target)
    dangling = tmp_path / "new.tif"
    dangling.symlink_to(tmp_path / "disk" / "new.tif")
    write_image(link, np.full((4, 4), 5, np.uint8))
    write_image(dangling, np.full((4, 4), 6, np.uint8))
    assert link.is_symlink() and dangling.is_symlink()
    assert (tifffile.imread(target) == 5).all() and (tifffile.imread(tmp_path / "disk" / "new.tif") == 6).all()
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["labels.tif", "new.tif"]


def test_a_model_saved_through_a_symlink_goes_where_it_points_and_a_link_into_nowhere_is_refused(tmp_path):
    import napari_unet as nu

    (tmp_path / "disk").mkdir()
    model = nu.Model.untrained(depth=2, base_channels=4, seed=0)
    link = tmp_path / "model.pt"
    link.symlink_to(tmp_path / "disk" / "real.pt")
    nu.save_model(model, link)
    assert link.is_symlink() and nu.load_model(tmp_path / "disk" / "real.pt").config == model.config
    nu.save_model(model, link)  # its own model file: replaced, the link stays
    assert link.is_symlink() and sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["real.pt"]
    lost = tmp_path / "lost.pt"
    lost.symlink_to(tmp_path / "gone" / "model.pt")
    with pytest.raises(FileNotFoundError, match="gone"):
        nu.save_model(model, lost)


def test_leftovers_of_a_killed_run_are_removed_or_restored_and_others_reported(tmp_path):
    dead, out = _dead_pid(), tmp_path / "labels.zarr"
    partial = tmp_path / f".labels.partial-{_HOST}-{dead}-abcdef.zarr"
    zarr.open_array(str(partial), mode="w", shape=(64, 64), dtype="u2")[:] = 3
    moved_aside = tmp_path / f".labels.old-{_HOST}-{dead}-123456.zarr"  # killed between the two renames
    write_image(moved_aside, np.full((4, 4), 9, np.uint8))
    elsewhere = tmp_path / ".labels.partial-0badc0-1234-fedcba.zarr"  # another machine's run: not ours to judge
    elsewhere.mkdir()
    with pytest.warns(StaleOutputWarning) as heard:
        messages = clean_stale(out)
    assert not partial.exists() and not moved_aside.exists() and elsewhere.exists()
    assert (np.asarray(read_image(out)) == 9).all()  # the previous result is back
    assert len(messages) == 3 and len(heard) == 3
    assert any("restored" in m for m in messages) and any("delete it if no run" in m for m in messages)


def test_the_next_run_cleans_up_after_a_killed_one(tmp_path):
    dead = _dead_pid()
    scratch = tmp_path / f".labels.partial-{_HOST}-{dead}-abcdef.tif.npy"  # a TIFF's scratch file
    np.save(scratch, np.zeros((8, 8)))
    with pytest.warns(StaleOutputWarning, match="interrupted run"):
        write_image(tmp_path / "labels.tif", np.ones((4, 4), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]


def test_a_signal_during_the_renames_comes_after_them(tmp_path):
    labels, prob = tmp_path / "labels.tif", tmp_path / "prob.tif"
    write_image(labels, np.full((4, 4), 1, np.uint8))
    write_image(prob, np.full((2, 4, 4), 0.25, np.float32))
    with OutputFile(labels, (4, 4), np.uint8) as new_labels, OutputFile(prob, (2, 4, 4), np.float32) as new_prob:
        new_labels.array[:] = 2
        new_prob.array[:] = 0.75
        real_commit = OutputFile.commit

        def commit_then_ctrl_c(self):
            real_commit(self)
            if self is new_labels:  # Ctrl-C between the two renames
                os.kill(os.getpid(), signal.SIGINT)

        OutputFile.commit = commit_then_ctrl_c
        try:
            with pytest.raises(InterruptedAfterCommit) as caught:
                commit_together(new_labels, new_prob)
        finally:
            OutputFile.commit = real_commit
    assert caught.value.paths == [labels, prob]
    assert (tifffile.imread(labels) == 2).all() and (tifffile.imread(prob) == 0.75).all()  # both new


def test_an_error_inside_an_uninterruptible_block_is_not_masked():
    with pytest.raises(ValueError, match="boom"):
        with uninterruptible(["x"]):
            raise ValueError("boom")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again


def test_outputs_are_flushed_to_disk_before_they_are_published(tmp_path, monkeypatch):
    import napari_unet.publish as publish

    events = []
    monkeypatch.setattr(publish.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))))
    real_replace = os.replace
    monkeypatch.setattr(publish.os, "replace", lambda a, b: (events.append(("rename", str(a))), real_replace(a, b)))
    with atomic_path(tmp_path / "model.pt") as tmp:
        tmp.write_bytes(b"weights")
    kinds = [(kind, path == str(tmp)) for kind, path in events]
    assert kinds.index(("fsync", True)) < kinds.index(("rename", True))


def test_cli_reports_outputs_written_when_the_signal_came_during_the_commit(tmp_path, capsys, monkeypatch):
    from napari_unet import outputs
    from napari_unet.cli import main

    from .test_predict import random_model
    import napari_unet as nu

    nu.save_model(random_model(depth=2, base=4), tmp_path / "model.pt")
    np.save(tmp_path / "img.npy", np.random.default_rng(0).random((32, 32)).astype(np.float32))
    real_publish = outputs.publish

    def publish_then_ctrl_c(tmp, dest):
        real_publish(tmp, dest)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(outputs, "publish", publish_then_ctrl_c)
    code = main(["predict", str(tmp_path / "model.pt"), str(tmp_path / "img.npy"), "-o", str(tmp_path / "l.tif")])
    err = capsys.readouterr().err
    assert code == 130 and "output was complete and is written" in err and "no output was written" not in err
    assert read_image(tmp_path / "l.tif").shape == (32, 32)
