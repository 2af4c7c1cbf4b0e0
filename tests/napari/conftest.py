"""Fixtures for the real-viewer tests (pytest-qt + napari's ``make_napari_viewer``; run under Xvfb)."""
import time

import numpy as np
import pytest

pytest.importorskip("napari")

#: The smallest network that still learns the sample in a few seconds on a CPU.
TINY = dict(depth=2, base_channels=8, batch_size=4)


@pytest.fixture(autouse=True, scope="session")
def gui_friendly_torch_threads():
    """Reference computations in the test thread use the plugin's thread policy (one core left free).

    With every core in torch's pool, a GUI thread (or another process) on one of them makes OpenMP
    workers spin: small forward passes get 10-25x slower on a loaded 2-core machine.
    """
    from napari_unet.device import thread_policy

    with thread_policy(spare_cores=1):
        yield


@pytest.fixture(autouse=True)
def fresh_model_store():
    """Each test starts without a current model (the store is process-wide)."""
    from napari_unet._napari._store import STORE

    STORE.clear()
    yield STORE
    STORE.clear()


@pytest.fixture
def notifications():
    """Notifications shown during the test, as a list of (severity, message)."""
    from napari.utils.notifications import notification_manager

    records = []

    def record(notification):
        records.append((str(notification.severity).lower(), str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield records
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def plugin_viewer(make_napari_viewer):
    """A shown viewer with the nuclei sample opened and both widgets docked, all through the manifest."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-unet", "nuclei")
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train UNet")
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment with UNet")
    return viewer, train, segment


def set_tiny(train, budget=2.0):
    """Open the advanced settings and choose a tiny network and a short time budget."""
    if not train.advanced.shown:
        train.advanced.toggle.native.click()
    assert train.advanced.shown
    train.advanced.depth.value = TINY["depth"]
    train.advanced.base_channels.value = TINY["base_channels"]
    train.advanced.batch_size.value = TINY["batch_size"]
    train.time_budget.value = budget


def open_lazy_stack(viewer, segment, planes: int):
    """Add the sample tiled into a dask stack of ``planes`` planes ("stack"), choose it in Segment with
    UNet and make an untrained model current: the setup of the big-lazy-image tests."""
    import dask.array as da

    from napari_unet._napari._store import STORE

    STORE.set(random_model(), "test")
    stack = da.from_array(np.tile(viewer.layers["nuclei"].data, (planes, 1, 1)), chunks=(1, 384, 384))
    layer = viewer.add_image(stack, name="stack")
    segment.image.value = layer
    return layer


def start_long_training(qtbot, train, steps: int):
    """Press Train with the tiny network and a 120 s budget; return the job once ``steps`` losses are plotted."""
    from qtpy.QtCore import Qt

    set_tiny(train, budget=120.0)
    qtbot.mouseClick(train.train_button.native, Qt.MouseButton.LeftButton)
    wait_until(qtbot, lambda: len(train.loss_plot.train) >= steps, timeout=60)
    return train.job


def wait_until(qtbot, condition, timeout=30.0):
    """Process events until ``condition()`` holds; returns the seconds it took."""
    t0 = time.perf_counter()
    qtbot.waitUntil(condition, timeout=int(timeout * 1000))
    return time.perf_counter() - t0


def messages(records, severity=None):
    return [m for s, m in records if severity is None or severity in s]


def component_inside(labels, margin=40, min_px=80, max_px=2000):
    """(center, mask) of a connected object of ``labels`` well inside the image, or None.

    Only single objects are taken, never a clump of touching ones, which a click splits (one object
    per click: `napari_unet.interactive.one_object`).
    """
    from scipy import ndimage as ndi

    from napari_unet.interactive import SPLIT_HEIGHT, SPLIT_SIGMA
    from napari_unet.postprocess import split_objects

    comp, n = ndi.label(labels > 0)
    best = None
    for i, sl in enumerate(ndi.find_objects(comp), 1):
        size = int((comp[sl] == i).sum())
        if not min_px <= size <= max_px:
            continue
        cy, cx = ((s.start + s.stop) // 2 for s in sl)
        if not (margin <= cy < labels.shape[0] - margin and margin <= cx < labels.shape[1] - margin):
            continue
        mask = comp == i
        if not mask[cy, cx] or split_objects(mask[sl], h=SPLIT_HEIGHT, sigma=SPLIT_SIGMA).max() > 1:
            continue
        if best is None or size > best[2]:
            best = ((cy, cx), mask, size)
    return None if best is None else best[:2]


def click_canvas(qtbot, viewer, world_yx):
    """A real left click (press + release) on the vispy canvas at a world (y, x) position.

    The screen position is computed from the camera, then checked by hovering: the mouse is moved
    until napari reports the cursor at the requested world position, and only then clicked.
    """
    from qtpy.QtCore import QPoint, Qt

    native = viewer.window._qt_viewer.canvas.native
    qtbot.wait(100)  # let pending layout changes (a new dims slider...) resize the canvas
    target = np.asarray(world_yx, dtype=float)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9: scene
    zoom = camera.zoom
    center = np.asarray(camera.center)[-2:]
    screen = (target - center)[::-1] * zoom + (native.width() / 2, native.height() / 2)
    for attempt in range(8):  # a canvas still settling (layout, a new slider) needs a few more moves
        pos = QPoint(int(round(screen[0])), int(round(screen[1])))
        qtbot.mouseMove(native, pos)
        qtbot.wait(50 if attempt < 3 else 200)
        error = target - np.asarray(viewer.cursor.position)[-2:]
        if np.abs(error).max() <= 1.0:
            break
        screen = screen + error[::-1] * zoom
    assert np.abs(error).max() <= 1.0, f"cannot place the mouse at {world_yx}: cursor at {viewer.cursor.position}"
    qtbot.mousePress(native, Qt.MouseButton.LeftButton, pos=pos)
    qtbot.mouseRelease(native, Qt.MouseButton.LeftButton, pos=pos)
    return pos


def click_checkbox(qtbot, checkbox):
    """Click a magicgui CheckBox on its indicator (the middle of a wide checkbox is not clickable)."""
    from qtpy.QtCore import QPoint, Qt

    native = checkbox.native
    qtbot.mouseClick(native, Qt.MouseButton.LeftButton, pos=QPoint(8, native.height() // 2))


def random_model(dims=2, in_channels=1, mode="semantic", depth=2, base=4, seed=0):
    """A small untrained model (random weights): fast, and fine wherever only shapes and plumbing matter."""
    from napari_unet.model import Model

    return Model.untrained(dims=dims, depth=depth, base_channels=base, in_channels=in_channels, mode=mode,
                           norm_high=(1000.0,) * in_channels, seed=seed)
