"""Fuzzing the readers with malformed TIFF, zarr and npy files: no hang, no crash, only clear errors.

Mutations (bit flips, overwritten bytes, truncation, garbage appended) of small valid files are read
with `read_image` and then fully materialized. Opening must either work or raise a ValueError (or
MemoryError for absurd declared sizes); reading the data must finish. The run happens in a subprocess
so that a hang or a hard crash of a C library fails the test instead of CI.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

N_MUTATIONS = 60


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:  # flip a few bits, mostly in the header where the structure is
        for _ in range(int(rng.integers(1, 8))):
            pos = int(rng.integers(min(len(buf), 512)))
            buf[pos] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # overwrite a run with random bytes
        pos = int(rng.integers(len(buf)))
        n = int(rng.integers(1, 32))
        buf[pos:pos + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    elif kind == 2:  # truncate
        buf = buf[: int(rng.integers(len(buf)))]
    else:  # garbage appended and a length field poked
        pos = int(rng.integers(min(len(buf), 64)))
        buf[pos:pos + 4] = b"\xff\xff\xff\x7f"
        buf += rng.integers(0, 256, 100, dtype=np.uint8).tobytes()
    return bytes(buf)


def fuzz(workdir: str) -> dict:
    """Run every mutation; return counts of outcomes. Raises on an unexpected open error type."""
    import tifffile
    import zarr

    from napari_unet.io import read_image

    work = Path(workdir)
    data = np.random.default_rng(0).integers(0, 4000, (3, 40, 50)).astype(np.uint16)
    sources = {}
    tifffile.imwrite(work / "src.tif", data)
    tifffile.imwrite(work / "srcz.tif", data, compression="zlib", tile=(16, 16))
    np.save(work / "src.npy", data)
    stores = []
    for fmt in (2, 3):  # both zarr formats: their metadata files and codecs differ
        store = work / f"src{fmt}.zarr"
        z = zarr.open_array(str(store), mode="w", shape=data.shape, chunks=(1, 20, 25), dtype=data.dtype,
                            zarr_format=fmt)
        z[:] = data
        stores.append((store, sorted(p for p in store.rglob("*") if p.is_file())))
    for name in ("src.tif", "srcz.tif", "src.npy"):
        sources[name] = (work / name).read_bytes()
    for path in [work / n for n in sources] + [s for s, _ in stores]:  # the controls decode to the data
        np.testing.assert_array_equal(np.asarray(read_image(path)[...]), data)
    outcomes = {"opened": 0, "refused": 0, "read_failed": 0}
    rng = np.random.default_rng(1234)
    for i in range(N_MUTATIONS):
        for name, blob in sources.items():
            target = work / f"m{i}_{name}"
            target.write_bytes(_mutate(blob, rng))
            _try(target, read_image, outcomes)
            target.unlink()
        # zarr: mutate one file of a store (metadata or a chunk) in a copy
        import shutil

        store, files = stores[i % 2]
        copy = work / f"m{i}.zarr"
        shutil.copytree(store, copy)
        victim = copy / files[int(rng.integers(len(files)))].relative_to(store)
        victim.write_bytes(_mutate(victim.read_bytes(), rng))
        _try(copy, read_image, outcomes)
        shutil.rmtree(copy)
    return outcomes


def _try(path, read_image, outcomes):
    try:
        arr = read_image(path)
    except (ValueError, MemoryError):
        outcomes["refused"] += 1
        return
    outcomes["opened"] += 1
    try:
        values = np.asarray(arr[...] if not isinstance(arr, np.ndarray) else arr)
    except Exception:  # damaged chunk data: a clear exception at read time is acceptable
        outcomes["read_failed"] += 1
        return
    # what opens decodes whole, to numbers of the declared shape and dtype (never objects)
    assert values.shape == tuple(arr.shape) and values.dtype == np.dtype(arr.dtype) and values.dtype.kind in "biuf"


def test_malformed_files_never_hang_or_crash(tmp_path):
    root = Path(__file__).resolve().parents[2]
    code = ("import json, sys; from tests.core.test_fuzz_readers import fuzz; "
            f"print(json.dumps(fuzz({str(tmp_path)!r})))")
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcomes["opened"] + outcomes["refused"] == 4 * N_MUTATIONS
    assert outcomes["refused"] > 0  # the mutations do hit the structure


def test_cli_on_malformed_input_prints_one_error_line(tmp_path):
    from napari_unet.modelfile import save_model

    from .test_predict import random_model

    save_model(random_model(), tmp_path / "m.pt")
    rng = np.random.default_rng(7)
    import tifffile

    tifffile.imwrite(tmp_path / "ok.tif", rng.integers(0, 255, (40, 40)).astype(np.uint8))
    blob = (tmp_path / "ok.tif").read_bytes()
    for i in range(15):
        bad = tmp_path / f"bad{i}.tif"
        bad.write_bytes(_mutate(blob, rng))
        r = subprocess.run([sys.executable, "-m", "napari_unet.cli", "predict", str(tmp_path / "m.pt"), str(bad),
                            "-o", str(tmp_path / f"out{i}.tif")], capture_output=True, text=True, timeout=120)
        assert r.returncode in (0, 1, 2)
        assert "Traceback" not in r.stderr
        if r.returncode:
            assert r.stderr.strip().splitlines()[-1].startswith("error: ")
            assert not (tmp_path / f"out{i}.tif").exists()


def _declare_shape(store, shape):
    """Rewrite a small zarr array's metadata (format 2 or 3) to declare ``shape``, keeping its few chunks."""
    for name in (".zarray", "zarr.json"):
        meta_file = store / name
        if meta_file.exists():
            meta = json.loads(meta_file.read_text())
            meta["shape"] = list(shape)
            meta_file.write_text(json.dumps(meta))


def test_giant_declared_shapes_are_refused_or_stated_before_any_output(tmp_path, capsys, monkeypatch):
    """A tiny file declaring 100000 x 100000 pixels: its size is said, and refused, before any output."""
    import shutil
    from collections import namedtuple

    import zarr

    from napari_unet.cli import main
    from napari_unet.io import read_image
    from napari_unet.modelfile import save_model

    from .test_predict import random_model

    save_model(random_model(), tmp_path / "m.pt")
    giant = (100_000, 100_000)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 2**30, 2**30))  # 1 GiB free
    for fmt in (2, 3):
        store = tmp_path / f"giant{fmt}.zarr"
        z = zarr.open_array(str(store), mode="w", shape=(64, 64), chunks=(32, 32), dtype="u2", zarr_format=fmt)
        z[:] = 7
        _declare_shape(store, giant)
        assert read_image(store).shape == giant  # opened lazily: nothing allocated
        assert sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) < 100_000
        for out in ("out.tif", "out.npy"):  # a file output the disk cannot hold: refused at once
            code = main(["predict", str(tmp_path / "m.pt"), str(store), "-o", str(tmp_path / out)])
            err = capsys.readouterr().err
            assert code in (1, 2) and "GiB" in err and "100000x100000 (10.0 G pixels)" in err, err
            assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("giant")) == ["m.pt"]
