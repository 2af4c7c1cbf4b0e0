"""Live training in a real viewer (run under Xvfb): stroke-to-training latency, preview period and cost,
steps/s with and without the preview, and the event loop's longest stall.

The nuclei sample is opened, Train UNet docked with its default network (`interactive_network`), Live
switched on and Train pressed. Every ``--stroke-every`` s a background stroke is painted through the
Labels layer's API (``layer.paint``) on a background pixel nobody painted. Runs alternate with the
preview on, off (the session never asks for one) and a plain Train run (the baseline), ``--reps`` times each, ``--seconds`` each. A
10 ms timer on the GUI thread records the longest gap between its ticks (the longest stall).

Usage: xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/live.py [--seconds 40] [--reps 2]
"""
from __future__ import annotations

import argparse
import faulthandler
import time
from types import SimpleNamespace

import numpy as np
from scipy import ndimage as ndi

from _common import machine


def run_once(viewer, train, preview, seconds: float, stroke_every: float, rng, trace=None):
    """One run: ``preview`` True / False (live), or None: a plain Train run with a time budget (the baseline)."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_unet._napari import _live
    from napari_unet.synthetic import make_sample

    app = QApplication.instance()
    original = _live.LiveSession.view_request
    if preview is False:
        _live.LiveSession.view_request = lambda self: None
    strokes = viewer.layers["nuclei annotations"]
    strokes.data = make_sample(strokes.data.shape, seed=0)[1]
    truth = make_sample(strokes.data.shape, seed=0)[2]
    far = ndi.distance_transform_edt(truth == 0) > 12
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    if trace is not None:  # a stall longer than trace.after s dumps every thread's stack (no GIL needed)
        timer.timeout.connect(lambda: faulthandler.dump_traceback_later(trace.after, file=trace.file))
    try:
        train.live.value = preview is not None
        train.time_budget.value = seconds + 30
        train.start()
        session = train._live
        while not train.loss_plot.train:  # the first step
            app.processEvents()
            time.sleep(0.002)
        timer.start(10)
        t0 = next_stroke = time.perf_counter()
        steps0 = len(train.loss_plot.train)
        while time.perf_counter() - t0 < seconds:
            if session is not None and time.perf_counter() >= next_stroke:
                free = np.argwhere(far & (strokes.data == 0))
                strokes.brush_size = 7
                strokes.paint(tuple(int(c) for c in free[rng.integers(len(free))]), 1)
                next_stroke += stroke_every
            app.processEvents()
            time.sleep(0.002)
        wall = time.perf_counter() - t0
        steps = len(train.loss_plot.train) - steps0
        timer.stop()
        if trace is not None:
            faulthandler.cancel_dump_traceback_later()
        train.stop()
        while train.running:
            app.processEvents()
            time.sleep(0.002)
    finally:
        _live.LiveSession.view_request = original
    gaps = np.diff(ticks) if len(ticks) > 1 else np.array([np.nan])
    if session is None:
        return dict(steps_per_s=steps / wall, stall=float(gaps.max()))
    periods = np.diff(session.preview_times)
    return dict(steps_per_s=steps / wall, latency=[t.latency for t in session.taken], stall=float(gaps.max()),
                period=float(np.median(periods)) if periods.size else np.nan,
                preview_share=float(np.sum(session.preview_seconds)) / wall, previews=len(session.preview_times),
                strokes=session.version)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=40)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--stroke-every", type=float, default=4.0)
    p.add_argument("--fp32", action="store_true", help="train in fp32 even where the CPU has bf16 units (the "
                   "widget passes no precision: this makes 'automatic' mean fp32)")
    p.add_argument("--trace-stalls", metavar="FILE", help="write the stacks of every thread to FILE whenever "
                   "the event loop stalls longer than --trace-after (where a stall comes from)")
    p.add_argument("--trace-after", type=float, default=0.06, help="seconds (default 0.06)")
    args = p.parse_args()
    trace = None
    if args.trace_stalls:
        trace = SimpleNamespace(after=args.trace_after, file=open(args.trace_stalls, "w"))
    if args.fp32:
        import napari_unet.device

        napari_unet.device.cpu_computes_bf16 = lambda: False
    import napari

    from napari_unet._napari._jobs import WARMED

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-unet", "nuclei")
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train UNet")
    from qtpy.QtWidgets import QApplication

    while not WARMED.is_set():
        QApplication.processEvents()
        time.sleep(0.01)
    print(f"# {time.strftime('%Y-%m-%d')} {machine()}; network depth {train.advanced.depth.value}, "
          f"{train.advanced.base_channels.value} base channels{', fp32' if args.fp32 else ''}; {args.seconds:g} s per run, a stroke every "
          f"{args.stroke_every:g} s", flush=True)
    rng = np.random.default_rng(0)
    results = {True: [], False: [], None: []}
    for rep in range(args.reps):
        for preview in ((True, False, None), (False, None, True), (None, True, False))[rep % 3]:
            r = run_once(viewer, train, preview, args.seconds, args.stroke_every, rng, trace)
            results[preview].append(r)
            if preview is None:
                print(f"plain Train (baseline): {r['steps_per_s']:.2f} steps/s, longest event-loop stall "
                      f"{1000 * r['stall']:.0f} ms", flush=True)
                continue
            lat = np.asarray(r["latency"])
            print(f"preview {'on ' if preview else 'off'}: {r['steps_per_s']:.2f} steps/s, {r['strokes']} strokes, "
                  f"stroke->step latency median {np.median(lat):.2f} s max {lat.max():.2f} s, "
                  f"previews {r['previews']} (period {r['period']:.2f} s, {100 * r['preview_share']:.1f}% of the "
                  f"time), longest event-loop stall {1000 * r['stall']:.0f} ms", flush=True)
    on = np.median([r["steps_per_s"] for r in results[True]])
    off = np.median([r["steps_per_s"] for r in results[False]])
    plain = np.median([r["steps_per_s"] for r in results[None]])
    lat = np.concatenate([r["latency"] for rs in (results[True], results[False]) for r in rs])
    print(f"median steps/s with preview {on:.2f}, without {off:.2f}: ratio {on / off:.2f}; plain Train {plain:.2f} "
          f"(longest stall {1000 * max(r['stall'] for r in results[None]):.0f} ms); stroke->step latency "
          f"median {np.median(lat):.2f} s, p90 {np.percentile(lat, 90):.2f} s; preview period median "
          f"{np.median([r['period'] for r in results[True]]):.2f} s; longest stall "
          f"{1000 * max(r['stall'] for rs in (results[True], results[False]) for r in rs):.0f} ms (live)", flush=True)
    viewer.close()


if __name__ == "__main__":
    main()
