"""The npe2 manifest and the import rule."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_npe2_validate_passes():
    npe2 = shutil.which("npe2", path=str(Path(sys.executable).parent)) or shutil.which("npe2")
    if npe2 is None:
        pytest.skip("the npe2 command is not installed")
    result = subprocess.run([npe2, "validate", "napari-unet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_manifest_contributions_import():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-unet")
    pm.validate_imports()  # every python_name resolves
    c = pm.contributions
    assert {w.display_name for w in c.widgets} == {"Train UNet", "Segment with UNet"}
    assert [s.key for s in c.sample_data] == ["nuclei"]
    assert set(c.readers[0].filename_patterns) == {"*.tif", "*.tiff", "*.zarr"}
    assert c.readers[0].accepts_directories
    assert c.writers[0].layer_types == ["labels"]
    assert set(c.writers[0].filename_extensions) == {".tif", ".tiff", ".zarr"}


def test_importing_the_core_imports_no_gui():
    code = ("import sys, napari_unet, napari_unet.cli, napari_unet.io, napari_unet.synthetic, napari_unet.metrics; "
            "gui = [m for m in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'magicgui', 'vispy') "
            "if m in sys.modules]; print(gui); sys.exit(1 if gui else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sample_contribution_gives_image_and_strokes():
    from napari_unet._napari._sample import SAMPLE_SHAPE, make_sample_data

    (image, image_meta, image_kind), (strokes, strokes_meta, strokes_kind) = make_sample_data()
    assert image_kind == "image" and image_meta["name"] == "nuclei" and image.shape == SAMPLE_SHAPE
    assert strokes_kind == "labels" and strokes_meta["name"] == "nuclei annotations"
    assert set(map(int, set(strokes.ravel().tolist()))) == {0, 1, 2}


def test_widgets_are_in_the_layers_segment_menu_and_open_from_it(make_napari_viewer):
    from npe2 import PluginManifest

    from napari._app_model import get_app_model

    menus = PluginManifest.from_distribution("napari-unet").contributions.menus
    assert [m.command for m in menus["napari/layers/segment"]] == ["napari-unet.train_widget",
                                                                    "napari-unet.segment_widget"]
    viewer = make_napari_viewer()
    app = get_app_model()
    segment_menu = {item.command.id: item.command.title for item in app.menus.get_menu("napari/layers/segment")
                    if hasattr(item, "command")}
    assert {"napari-unet.train_widget", "napari-unet.segment_widget"} <= set(segment_menu)
    plugin_menu = [item.command.id for item in app.menus.get_menu("napari/plugins/napari-unet")
                   if hasattr(item, "command")]
    assert "napari-unet.segment_widget" in plugin_menu  # still in the plugin's own menu too
    app.commands.execute_command("napari-unet.segment_widget").result()  # what clicking the entry does
    docked = [name for name in viewer.window._wrapped_dock_widgets if "Segment with UNet" in name]
    assert docked
