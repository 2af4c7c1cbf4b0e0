"""The wheel is what napari's plugin menu installs: it must carry the manifest, the entry points and every
module the manifest names."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{r.stderr[-2000:]}")
    (path,) = out.glob("napari_unet-*.whl")
    return path


def test_wheel_carries_manifest_entry_points_and_license(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        metadata = zf.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "napari_unet/napari.yaml" in names
    assert "[napari.manifest]" in entry_points and "napari_unet:napari.yaml" in entry_points
    assert "napari-unet = napari_unet.cli:main" in entry_points
    assert "Classifier: Framework :: napari" in metadata
    assert "Requires-Dist: torch>=2.6" in metadata
    assert not any(line.startswith("Requires-Dist: PyQt") for line in metadata.splitlines())
    assert not any(n.startswith("tests/") for n in names)


def test_installed_wheel_validates_with_npe2(wheel, tmp_path):
    """Install the wheel alone into a folder and let npe2 validate it, importing every python_name."""
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import napari_unet; assert napari_unet.__file__.startswith(sys.argv[1]), napari_unet.__file__;"
        "from npe2 import PluginManifest;"
        "m = PluginManifest.from_file(sys.argv[1] + '/napari_unet/napari.yaml');"
        "m.validate_imports(); print(m.name, len(m.contributions.commands))"
    )
    r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("napari-unet")
    # the command from the napari docs, by distribution name, with the wheel first on the path
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-unet", "--imports"], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "valid" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_core_import_pulls_in_no_gui():
    code = ("import sys, napari_unet, napari_unet.cli, napari_unet.synthetic;"
            "heavy = {'qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'napari', 'magicgui', 'vispy', 'bioimageio'};"
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_one_manifest_file():
    """The manifest at the top of the repository is the packaged one: a link, never a second copy."""
    packaged = ROOT / "src" / "napari_unet" / "napari.yaml"
    assert (ROOT / "napari.yaml").is_file() and not (ROOT / "napari.yaml").is_symlink()
    assert packaged.is_symlink() and packaged.resolve() == (ROOT / "napari.yaml").resolve()
