#!/usr/bin/env python
"""Regenerate the README screenshots in docs/images/ from a real viewer with the plugin docked.

Run it with a display, or under Xvfb::

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/screenshots.py

It opens the nuclei sample, trains from its strokes (``--time-budget`` seconds) and saves

* ``train.png``    after training, loss plot visible,
* ``segment.png``  the segmentation over the image,
* ``click.png``    objects added one click at a time (real mouse clicks on the canvas),
* ``live.png``     live training: strokes painted while it trains, the model's preview below them,
* ``advanced.png`` the Train UNet panel alone with its advanced settings unfolded.

``--only live`` or ``--only advanced`` makes that one alone (no other image is rewritten).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "images"))
    p.add_argument("--time-budget", type=float, default=40.0)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--only", choices=["live", "advanced"], default=None, help="make only this screenshot")
    return p.parse_args(argv)


def shoot_live(viewer, train, pump, wait_until, shoot):
    """Live mode: zoomed in, Live on, strokes painted through the layer while it trains, the preview below."""
    from scipy import ndimage as ndi

    from napari_unet._napari._live import preview_name
    from napari_unet.synthetic import make_sample

    for layer in list(viewer.layers):
        layer.visible = layer.name in ("nuclei", "nuclei annotations")
    strokes = viewer.layers["nuclei annotations"]
    truth = make_sample(strokes.data.shape, seed=0)[2]
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9: scene
    camera.zoom *= 1.6  # part of the image on screen: the preview covers what is visible
    train.live.value = True
    train.continue_training.value = False
    train.train_button.native.click()
    name = preview_name("nuclei")
    wait_until(lambda: len(train._live.preview_times) > 0, timeout=300)
    far = np.argwhere(ndi.distance_transform_edt(truth == 0) > 14)
    rng = np.random.default_rng(1)
    strokes.brush_size = 9
    for _ in range(6):  # a few background dabs, each trained on within seconds
        strokes.paint(tuple(int(c) for c in far[rng.integers(len(far))]), 1)
        pump(1.5)
    wait_until(lambda: len(train.loss_plot.train) >= 120, timeout=600)  # a model worth previewing
    n = len(train._live.preview_times)
    wait_until(lambda: len(train._live.preview_times) >= n + 1, timeout=300)
    viewer.layers.selection.active = strokes
    shoot("live.png")
    train.train_button.native.click()  # Stop
    wait_until(lambda: not train.running, timeout=120)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication
    from scipy import ndimage as ndi

    from napari_unet._napari._jobs import WARMED

    app = QApplication.instance() or QApplication([])

    def pump(seconds=0.0):
        end = time.perf_counter() + seconds
        while True:
            app.processEvents()
            if time.perf_counter() >= end:
                return
            time.sleep(0.01)

    def wait_until(condition, timeout=600.0):
        end = time.perf_counter() + timeout
        while not condition():
            if time.perf_counter() > end:
                raise TimeoutError("the viewer did not get there in time")
            pump(0.02)
        pump(0.3)

    def shoot(name, widget=None):
        pump(0.5)
        path = out / name
        (widget or viewer.window._qt_window).grab().save(str(path))
        print(f"wrote {path}")

    viewer = napari.Viewer(title="napari-unet")
    viewer.window._qt_window.resize(1900, 1150)
    viewer.open_sample("napari-unet", "nuclei")
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train UNet")
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment with UNet")
    viewer.window._qt_window.show()
    wait_until(WARMED.is_set)
    viewer.reset_view()
    if args.only == "live":
        train.advanced.depth.value, train.advanced.base_channels.value = args.depth, args.base_channels
        shoot_live(viewer, train, pump, wait_until, shoot)
        viewer.close()
        return 0

    # --- Train (its advanced settings first, as a user opens them)
    train.advanced.toggle.native.click()
    train.advanced.depth.value, train.advanced.base_channels.value = args.depth, args.base_channels
    shoot("advanced.png", train.native)
    if args.only == "advanced":
        viewer.close()
        return 0
    train.time_budget.value = args.time_budget
    train.advanced.toggle.native.click()  # fold the settings again: the plot is the point of the picture
    train.train_button.native.click()
    wait_until(lambda: not train.running)
    shoot("train.png")

    # --- Segment
    segment.segment_button.native.click()
    wait_until(lambda: not segment.running)
    viewer.layers["nuclei annotations"].visible = False
    viewer.layers.selection.active = viewer.layers["nuclei"]
    shoot("segment.png")

    # --- Click to segment: a fresh output layer, then clicks on a few nuclei
    result = np.asarray(viewer.layers["nuclei segmentation"].data)
    viewer.layers.remove("nuclei segmentation")
    pump(0.3)
    comp, n = ndi.label(result > 0)
    sizes = ndi.sum(np.ones_like(comp), comp, index=np.arange(1, n + 1))
    centers = ndi.center_of_mass(np.ones_like(comp), comp, index=np.arange(1, n + 1))
    picks = [c for c, s in zip(centers, sizes) if 150 < s < 1500
             and 40 < c[0] < result.shape[0] - 40 and 40 < c[1] < result.shape[1] - 40]
    picks = [p for p in picks if result[int(p[0]), int(p[1])]]
    picks = picks[:: max(1, len(picks) // 6)][:6]  # spread over the image
    segment.click_to_segment.value = True
    canvas = viewer.window._qt_viewer.canvas.native
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9: scene
    for cy, cx in picks:
        center = np.asarray(camera.center)[-2:]
        x = (cx - center[1]) * camera.zoom + canvas.width() / 2
        y = (cy - center[0]) * camera.zoom + canvas.height() / 2
        pos = QPoint(int(round(x)), int(round(y)))
        QTest.mouseMove(canvas, pos)
        pump(0.05)
        QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=pos)
        wait_until(lambda: not segment.clicking, timeout=30)
    print(f"clicked {len(picks)} nuclei; last click took {segment.last_click_timing}")
    shoot("click.png")
    shoot_live(viewer, train, pump, wait_until, shoot)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
