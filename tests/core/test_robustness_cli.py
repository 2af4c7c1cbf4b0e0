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
