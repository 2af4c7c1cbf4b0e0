"""GPU prediction: throughput, fraction of the bf16 peak, GPU busy fraction, and ours vs MONAI with AMP.

Skipped (exit code 0) without CUDA. Networks: the defaults (depth 4, base 16; 2D with 2 classes, 3D
with 3), random weights with non-trivial BatchNorm statistics. Sections:

1. FLOPs per pixel of each network (``torch.utils.flop_counter`` on a small input; convolutions scale
   linearly with the pixels) and the GPU's bf16 peak (from a table of known GPUs, and measured with a
   large bf16 matmul).
2. Throughput of `napari_unet.segment` / `predict` on a big 2D image, a stack of 2D planes and a 3D
   volume, all in host memory: Mpx/s of the image, and achieved FLOP/s (pixels computed, halo
   included) as a fraction of the peak.
3. GPU busy fraction during those runs: the time the same forward passes take back to back on data
   already on the GPU, over the wall time of the run (and NVML's utilization when pynvml is there).
4. Levers on the forward pass: fp32 vs bf16 autocast, channels_last, BatchNorm folding.
5. Ours vs MONAI ``sliding_window_inference`` (roi 256, overlap 0.25, gaussian, sw_batch_size 4, and 32)
   under bf16 autocast, alternating, with the max |difference| and class agreement against one fp32
   pass over the whole image.

``--dry-run`` runs every section on the CPU with tiny sizes (to check the script without a GPU).
Usage: python benchmarks/gpu.py [--size 8192] [--planes 32] [--volume 128 1024 1024] [--reps 3] [--dry-run]
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, machine, random_model, ratio_summary  # noqa: E402

import napari_unet as nu  # noqa: E402
from napari_unet.device import autocast  # noqa: E402
from napari_unet.predict import inference_network, plan_prediction  # noqa: E402
from napari_unet.tiling import tiling_cost  # noqa: E402

# dense bf16 tensor-core peaks (FLOP/s), from the vendors' data sheets
KNOWN_PEAKS = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 NVL": 835e12,
               "H100 PCIe": 756e12, "H100": 756e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
               "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def flops_per_pixel(net, dims, dev):
    from torch.utils.flop_counter import FlopCounterMode

    shape = (1, 1) + ((256, 256) if dims == 2 else (64, 64, 64))
    x = torch.zeros(shape, device=dev)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / float(np.prod(shape[2:]))


def spec_peak(dev):
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    for key, value in KNOWN_PEAKS.items():
        if key in name:
            return value
    return None


def matmul_peak(dev, n):
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    a @ b
    sync(dev)
    reps = 20 if dev.type == "cuda" else 2
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    return 2 * n**3 * reps / (time.perf_counter() - t)


class Utilization:
    """Samples NVML's GPU utilization in a thread (when pynvml is installed)."""

    def __init__(self, dev):
        self.dev, self.samples, self.stop = dev, [], threading.Event()
        self.ok = dev.type == "cuda"
        if self.ok:
            try:
                torch.cuda.utilization(dev)
            except Exception:  # noqa: BLE001 - pynvml missing or NVML unavailable
                self.ok = False

    def _run(self):
        while not self.stop.wait(0.05):
            self.samples.append(torch.cuda.utilization(self.dev))

    def __enter__(self):
        if self.ok:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.ok:
            self.thread.join()

    def mean(self):
        return f"{np.mean(self.samples):.0f}%" if self.samples else "n/a (no pynvml)"


def compute_only_seconds(model, plan, dev):
    """Time of the run's forward passes back to back on data already on the GPU."""
    net = inference_network(model.network, dev, dims=model.dims)
    fmt = net._napari_unet_memory_format
    tile = tuple(s.stop - s.start for s in plan.tiles[0].input)
    n_tiles = plan.total_tiles
    batches = [min(plan.batch_size, n_tiles - s) for s in range(0, n_tiles, plan.batch_size)]
    xs = {b: torch.randn((b, 1) + tile, device=dev).contiguous(memory_format=fmt) for b in set(batches)}
    with torch.inference_mode(), autocast(dev):
        for b in xs:
            net(xs[b])
        sync(dev)
        t = time.perf_counter()
        for b in batches:
            torch.softmax(net(xs[b]).float(), 1)
        sync(dev)
    return time.perf_counter() - t


def throughput(label, model, image, dev, peak, fpp, output="labels"):
    plan = plan_prediction(model, image, device=dev, labels=output == "labels",
                           probabilities=output == "probabilities")
    run = nu.segment if output == "labels" else nu.predict
    run(model, image, device=dev)  # warm-up: cudnn autotuning, pinned buffers
    with Utilization(dev) as util:
        t = time.perf_counter()
        run(model, image, device=dev)
        wall = time.perf_counter() - t
    item_px = float(np.prod(plan.item_shape)) * len(plan.items)
    computed = tiling_cost(plan.tiles, plan.item_shape) * item_px
    achieved = computed * fpp / wall
    busy = compute_only_seconds(model, plan, dev) / wall
    frac = f"{100 * achieved / peak:.1f}% of peak" if peak else "peak unknown"
    print(f"  {label:34s} {plan.describe()}\n"
          f"  {'':34s} {wall:7.2f} s  {item_px / wall / 1e6:8.1f} Mpx/s  {achieved / 1e12:6.1f} TFLOP/s ({frac})  "
          f"GPU busy {100 * min(busy, 1):.0f}% (compute-only time / wall), NVML {util.mean()}", flush=True)


def levers(model, dev, tile, batch, reps):
    x = torch.randn((batch, 1) + (tile,) * model.dims, device=dev)
    variants = {}
    for name, kwargs, amp in [("fp32", dict(fold_batchnorm=False, channels_last=False), False),
                              ("bf16 autocast", dict(fold_batchnorm=False, channels_last=False), True),
                              ("bf16 + channels_last", dict(fold_batchnorm=False, channels_last=True), True),
                              ("bf16 + channels_last + fold BN", dict(channels_last=True), True)]:
        net = inference_network(model.network, dev, dims=model.dims, **kwargs)
        fmt = net._napari_unet_memory_format
        xi = x.contiguous(memory_format=fmt) if fmt is not None else x

        def run(net=net, xi=xi, amp=amp):
            with torch.inference_mode(), autocast(dev, enabled=amp):
                for _ in range(3):
                    net(xi)
            sync(dev)
        variants[name] = run
    times = alternate(variants, reps)
    px = 3 * batch * tile**model.dims
    print(f"  forward of {batch} x {tile}^{model.dims}:")
    for name, ts in times.items():
        print(f"    {name:32s} {px / np.median(ts) / 1e6:9.1f} Mpx/s  time vs fp32 {ratio_summary(times, name, 'fp32')}")


def vs_monai(model, image, dev, reps):
    from monai.inferers import sliding_window_inference

    net = model.network.to(dev).eval()

    def monai(batch):
        def run():
            with torch.inference_mode(), autocast(dev):
                x = torch.from_numpy(image)[None, None].to(dev)
                logits = sliding_window_inference(x, roi_size=256, sw_batch_size=batch, predictor=net, overlap=0.25,
                                                  mode="gaussian")
                return torch.softmax(logits.float(), 1)[0].cpu().numpy()
        return run

    def ours():
        return nu.predict(model, image, device=dev)

    allow = torch.backends.cudnn.allow_tf32 if dev.type == "cuda" else None
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False  # an fp32 reference
    with torch.inference_mode():
        ref = torch.softmax(net(torch.from_numpy(image)[None, None].to(dev)), 1)[0].cpu().numpy()
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = allow
    variants = {"ours": ours, "monai_sw4": monai(4), "monai_sw32": monai(32)}
    for name, f in variants.items():
        prob = f()
        d = np.abs(prob - ref)
        print(f"  {name:11s} max |dp| {d.max():.2e}  mean |dp| {d.mean():.2e}  class agreement "
              f"{100 * (prob.argmax(0) == ref.argmax(0)).mean():.4f}%", flush=True)
    times = alternate(variants, reps, warmup=False)
    for name, ts in times.items():
        print(f"  {name:11s} {np.median(ts):7.3f} s [{min(ts):.3f}-{max(ts):.3f}]")
    print(f"  ours / MONAI (sw_batch_size 4):  {ratio_summary(times, 'ours', 'monai_sw4')}")
    print(f"  ours / MONAI (sw_batch_size 32): {ratio_summary(times, 'ours', 'monai_sw32')}")
    model.network.cpu()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--planes", type=int, default=32)
    p.add_argument("--volume", type=int, nargs=3, default=[128, 1024, 1024])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dry-run", action="store_true", help="run on the CPU with tiny sizes")
    args = p.parse_args(argv)
    if args.dry_run:
        dev = torch.device("cpu")
        args.size, args.planes, args.volume, args.reps = 512, 2, [32, 96, 96], 1
        tile2, tile3, mm, monai_size = 256, 64, 512, 512
    elif not torch.cuda.is_available():
        print("no CUDA device here: GPU benchmark skipped")
        return 0
    else:
        dev = torch.device("cuda")
        tile2, tile3, mm, monai_size = 2048, 128, 8192, 4096
    print(machine(), flush=True)
    m2, m3 = random_model(dims=2), random_model(dims=3, classes=3, mode="instance")
    peak_spec, peak_mm = spec_peak(dev), matmul_peak(dev, mm)
    fpp2 = flops_per_pixel(inference_network(m2.network, dev, dims=2), 2, dev)
    fpp3 = flops_per_pixel(inference_network(m3.network, dev, dims=3), 3, dev)
    peak = peak_spec or peak_mm
    print(f"\n1. {fpp2 / 1e3:.1f} kFLOP/px (2D), {fpp3 / 1e3:.1f} kFLOP/voxel (3D); bf16 peak: data sheet "
          f"{peak_spec / 1e12 if peak_spec else float('nan'):.0f} TFLOP/s, measured matmul {peak_mm / 1e12:.0f} TFLOP/s",
          flush=True)

    rng = np.random.default_rng(0)
    print("\n2-3. throughput and GPU busy fraction", flush=True)
    image = (rng.random((args.size, args.size)) * 4000).astype(np.uint16)
    throughput(f"2D {args.size}^2, labels", m2, image, dev, peak, fpp2)
    throughput(f"2D {args.size}^2, probabilities", m2, image, dev, peak, fpp2, output="probabilities")
    stack = (rng.random((args.planes, args.size // 4, args.size // 4)) * 4000).astype(np.uint16)
    throughput(f"2D stack {stack.shape}, labels", m2, stack, dev, peak, fpp2)
    del image, stack
    volume = (rng.random(tuple(args.volume)) * 4000).astype(np.uint16)
    throughput(f"3D {tuple(args.volume)}, labels", m3, volume, dev, peak, fpp3)
    del volume

    print("\n4. levers", flush=True)
    levers(m2, dev, tile2, 4, args.reps)
    levers(m3, dev, tile3, 2, args.reps)

    print(f"\n5. ours vs MONAI, bf16 autocast, {monai_size}^2", flush=True)
    image = rng.random((monai_size, monai_size)).astype(np.float32)
    vs_monai(m2, image, dev, args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
