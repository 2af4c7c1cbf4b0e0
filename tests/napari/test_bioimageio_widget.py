"""The Train widget's **Export for bioimage.io…** button, and **Load model…** with the package it wrote."""
import zipfile

from qtpy.QtCore import Qt

from napari_unet._napari._store import STORE
from napari_unet.bioimageio import read_rdf

from .conftest import messages, random_model, wait_until

LEFT = Qt.MouseButton.LeftButton
DIALOG = "napari_unet._napari._model_files.ask_export_package_path"


def test_export_button_writes_a_package_that_load_model_opens(plugin_viewer, qtbot, notifications, tmp_path,
                                                              monkeypatch):
    viewer, train, segment = plugin_viewer
    chosen = {"path": str(tmp_path / "nuclei.zip")}
    monkeypatch.setattr(DIALOG, lambda parent=None: chosen["path"])

    # no model yet: refused with a notification, no file dialog needed
    qtbot.mouseClick(train.export_button.native, LEFT)
    assert any("no model to export" in m for m in messages(notifications, "error"))

    model = random_model()
    STORE.set(model, "a test model")
    notifications.clear()
    qtbot.mouseClick(train.export_button.native, LEFT)
    wait_until(qtbot, lambda: any("package written" in m for m in messages(notifications, "info")), timeout=60)
    assert not messages(notifications, "error")
    assert read_rdf(tmp_path / "nuclei.zip")["config"]["napari-unet"]["model"] == model.config.to_dict()

    # the package loads back through Load model… (the open dialog answered by the test)
    monkeypatch.setattr("napari_unet._napari._model_files.ask_open_model_path", lambda parent=None: chosen["path"])
    STORE.clear()
    qtbot.mouseClick(train.load_button.native, LEFT)
    assert STORE.model is not None and STORE.model.config == model.config
    assert "nuclei.zip" in segment.model_info.value

    # a file that is not a package is never replaced: a one-line notification, the file untouched
    precious = tmp_path / "data.zip"
    with zipfile.ZipFile(precious, "w") as zf:
        zf.writestr("cells.csv", "1,2,3")
    before = precious.read_bytes()
    chosen["path"] = str(precious)
    notifications.clear()
    qtbot.mouseClick(train.export_button.native, LEFT)
    errors = messages(notifications, "error")
    assert len(errors) == 1 and "never replaced" in errors[0]
    assert precious.read_bytes() == before
