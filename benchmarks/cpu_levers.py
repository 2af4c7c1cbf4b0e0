"""What makes CPU prediction fast: each lever measured on its own, side by side, alternating.

A. one forward pass of a 1120 x 1120 tile (1 thread): inference_mode vs no_grad, BatchNorm folded into
   the convolutions, channels_last, both, bf16 autocast (not exact: not a default), and optionally
   torch.compile (``--compile``; it compiles for tens of seconds).
B. batching: four 512 x 512 tiles one by one or as one batch (1 thread).
C. threads: four 1120 x 1120 tiles with one worker of 1 thread, one worker of 2 threads (torch's
   intra-op pool), or two concurrent single-threaded workers (what `iter_predict` does on CPU).
D. end to end: `napari_unet.predict` of a 2048 x 2048 image with several tile sizes; the cost is the
   pixels computed over the pixels of the image (halo overhead).
E. per-pixel speed of a forward pass by tile size (1 thread): what `tiling.choose_tile_size` penalizes.

The network is the default one (depth 4, base 16, random weights and BatchNorm statistics).
Usage: python benchmarks/cpu_levers.py [--reps 3] [--compile] [--only A B C D E]
"""
from __future__ import annotations

import argparse
import copy
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, machine, normalized, random_model  # noqa: E402

import napari_unet as nu  # noqa: E402
from napari_unet.device import thread_policy  # noqa: E402
from napari_unet.predict import plan_prediction  # noqa: E402
from napari_unet.predict.network import fold_batchnorms  # noqa: E402
from napari_unet.synthetic import make_nuclei  # noqa: E402
from napari_unet.tiling import tiling_cost  # noqa: E402


def _with_threads(n, fn):
    def run():
        with thread_policy(threads=n):
            fn()
    return run


def _report(title, times, pixels, base):
    print(f"\n{title}")
    ref = np.array(times[base])
    for name, ts in times.items():
        ts = np.array(ts)
        print(f"  {name:28s} {np.median(ts):7.3f} s  {pixels / np.median(ts) / 1e6:6.3f} Mpx/s  "
              f"time vs {base}: {np.median(ts / ref):.2f}x")


def section_a(net, reps, compile_):
    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, 1120, 1120)).astype(np.float32))
    folded = copy.deepcopy(net)
    fold_batchnorms(folded)
    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    folded_cl = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    xcl = x.contiguous(memory_format=torch.channels_last)

    def run(module, inp, mode=torch.inference_mode):
        def f():
            with mode():
                module(inp)
        return _with_threads(1, f)

    def bf16():  # CPU autocast: oneDNN bf16 kernels (fast on CPUs with avx512_bf16/AMX), not exact
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            folded_cl(xcl)

    variants = {"no_grad": run(net, x, torch.no_grad), "inference_mode": run(net, x),
                "fold_bn": run(folded, x), "channels_last": run(cl, xcl), "fold_bn+channels_last": run(folded_cl, xcl),
                "fold+cl+bf16 autocast": _with_threads(1, bf16)}
    with torch.inference_mode():
        ref = torch.softmax(net(x), 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = torch.softmax(folded_cl(xcl).float(), 1)
        exact = torch.softmax(folded_cl(xcl), 1)
    print(f"max |dp| vs the plain network: fold+channels_last {float((exact - ref).abs().max()):.1e}, "
          f"bf16 autocast {float((low - ref).abs().max()):.1e}", flush=True)
    if compile_:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(folded_cl)
        t = time.perf_counter()
        run(compiled, xcl)()
        print(f"torch.compile (inductor, freezing): first call {time.perf_counter() - t:.1f} s", flush=True)
        variants["fold+cl+compile"] = run(compiled, xcl)
    times = alternate(variants, reps)
    _report("A. one 1120x1120 forward pass, 1 thread", times, 1120 * 1120, "no_grad")


def section_b(net, reps):
    folded = copy.deepcopy(net)
    fold_batchnorms(folded)
    folded = folded.to(memory_format=torch.channels_last)
    x = torch.from_numpy(np.random.default_rng(1).random((4, 1, 512, 512)).astype(np.float32))
    x = x.contiguous(memory_format=torch.channels_last)

    def one_by_one():
        with torch.inference_mode():
            for i in range(4):
                folded(x[i:i + 1])

    def batched():
        with torch.inference_mode():
            folded(x)

    times = alternate({"batch 1 x4": _with_threads(1, one_by_one), "batch 4": _with_threads(1, batched)}, reps)
    _report("B. four 512x512 tiles, 1 thread", times, 4 * 512 * 512, "batch 1 x4")


def section_c(net, reps):
    folded = copy.deepcopy(net)
    fold_batchnorms(folded)
    folded = folded.to(memory_format=torch.channels_last)
    xs = [torch.from_numpy(np.random.default_rng(i).random((1, 1, 1120, 1120)).astype(np.float32))
          .contiguous(memory_format=torch.channels_last) for i in range(4)]

    def sequential():
        with torch.inference_mode():
            for x in xs:
                folded(x)

    def two_workers():
        def work(part):
            # per thread (OpenMP): the other worker keeps its own
            with thread_policy(threads=1), torch.inference_mode():
                for x in part:
                    folded(x)
        threads = [threading.Thread(target=work, args=(xs[k::2],)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    variants = {"1 worker x 1 thread": _with_threads(1, sequential),
                "1 worker x 2 threads": _with_threads(2, sequential),
                "2 workers x 1 thread": two_workers}
    times = alternate(variants, reps)
    _report("C. four 1120x1120 tiles: threads", times, 4 * 1120 * 1120, "1 worker x 1 thread")


def section_d(model, reps):
    raw, _ = make_nuclei((2048, 2048), seed=0)
    image = normalized(raw)
    variants, costs = {}, {}
    for tile in (512, 768, 1136, "auto", None):
        plan = plan_prediction(model, image, tile=tile)
        name = f"tile {tile}" if tile != "auto" else f"auto ({plan.tile_size[0]}, fitted)"
        if tile is None:
            name = "whole image"
        costs[name] = (len(plan.tiles), tiling_cost(plan.tiles, image.shape))
        variants[name] = (lambda t: (lambda: nu.predict(model, image, tile=t)))(tile)
    times = alternate(variants, reps, warmup=False)
    print("\nD. predict 2048x2048 end to end (default workers)")
    ref = np.array(times[next(n for n in times if n.startswith("auto"))])
    for name, ts in times.items():
        n, cost = costs[name]
        print(f"  {name:22s} {n:3d} tiles  cost {cost:5.2f}  {np.median(ts):6.2f} s  "
              f"time vs auto: {np.median(np.array(ts) / ref):.2f}x")


def section_e(net, reps):
    folded = copy.deepcopy(net)
    fold_batchnorms(folded)
    folded = folded.to(memory_format=torch.channels_last)
    sides = (512, 768, 1024, 1536, 2048)
    xs = {t: torch.randn(1, 1, t, t).contiguous(memory_format=torch.channels_last) for t in sides}

    def run(t):
        def f():
            with torch.inference_mode():
                folded(xs[t])
        return _with_threads(1, f)

    times = alternate({f"{t}^2": run(t) for t in sides}, reps)
    print("\nE. per-pixel speed by tile size (folded, channels_last, 1 thread)")
    base = np.median(times["512^2"]) / 512**2
    for t in sides:
        per_px = np.median(times[f"{t}^2"]) / t**2
        print(f"  {t}^2  {1 / per_px / 1e6:6.3f} Mpx/s  time per pixel vs 512^2: {per_px / base:.2f}x")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--only", nargs="+", default=["A", "B", "C", "D", "E"])
    args = p.parse_args(argv)
    print(machine(), flush=True)
    model = random_model()
    net = model.network
    if "A" in args.only:
        section_a(net, args.reps, args.compile)
    if "B" in args.only:
        section_b(net, args.reps)
    if "C" in args.only:
        section_c(net, args.reps)
    if "D" in args.only:
        section_d(model, args.reps)
    if "E" in args.only:
        section_e(net, args.reps)


if __name__ == "__main__":
    main()
