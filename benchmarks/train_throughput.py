"""Training throughput on CPU: steps/s, patches/s, and the share of a step spent in the data pipeline.

The data is the sparse-strokes protocol of benchmarks/quality.py (synthetic nuclei 512 x 512, strokes on
6% of the pixels) with the defaults of `napari_unet.train` on CPU (depth 4, base 16, 128 px patches x 8).

1. end to end: `iter_train` for ``--seconds`` (setup and validation included);
2. the parts, alternating: ``PatchSampler.sample(8)`` (crop + augmentation) and one optimizer step on a
   fixed batch (forward, loss, backward, AdamW), each on its own; the data share is
   sample / (sample + step), the share of a training step (sampling runs in the training thread);
3. training precision: the trainer's own step in fp32 and in bf16 mixed precision, alternating, for the
   2D strokes protocol and a 3D instance stack (anisotropic spacing).

Usage: python benchmarks/train_throughput.py [--seconds 60] [--reps 20] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

import napari_unet as nu  # noqa: E402
from napari_unet.data import augment_patch, crop_patch  # noqa: E402
from napari_unet.device import cpu_computes_bf16, thread_policy  # noqa: E402
from napari_unet.synthetic import make_nuclei, make_strokes  # noqa: E402
from napari_unet.train import Trainer, masked_cross_entropy, resolve_settings  # noqa: E402


def sampler_and_network(image, strokes, seed=0):
    """The sampler and network `iter_train` builds for this data (its own parts, the CPU defaults);
    the network in torch's default layout (part 3 compares channels_last)."""
    settings, annotated = resolve_settings([image], [strokes], mode="semantic", device="cpu", seed=seed)
    trainer = Trainer(settings, annotated)
    return trainer.sampler, trainer.network.to(memory_format=torch.contiguous_format)


def precision_step_times(images, labels, reps, **kwargs) -> dict:
    """Seconds per `Trainer.step` in fp32 and in bf16 on the same data, alternating (``mixed_precision``)."""
    trainers = {}
    for name, mixed in (("fp32", False), ("bf16", True)):
        settings, annotated = resolve_settings(images, labels, device="cpu", seed=0, epochs=1,
                                               mixed_precision=mixed, **kwargs)
        trainers[name] = Trainer(settings, annotated)
        trainers[name].step(0.5)  # warm-up: oneDNN picks its kernels on the first call
    times = {name: [] for name in trainers}
    for rep in range(reps):
        for name in (("fp32", "bf16") if rep % 2 == 0 else ("bf16", "fp32")):
            t = time.perf_counter()
            trainers[name].step(0.5)
            times[name].append(time.perf_counter() - t)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    with thread_policy(threads=args.threads):
        run(args)


def run(args):
    print(machine(), flush=True)
    image, truth = make_nuclei((512, 512), seed=0)
    strokes = make_strokes(truth, fraction=0.06, seed=0)

    # 1. end to end
    steps, t0 = 0, time.perf_counter()
    for ev in nu.iter_train(image, strokes, mode="semantic", time_budget=args.seconds, seed=0):
        if ev.kind == "step":
            steps = ev.step
    elapsed = time.perf_counter() - t0
    config = ev.model.config  # the done event's model records the batch and patch it trained with
    print(f"\n1. iter_train for {args.seconds:.0f} s: {steps} steps of {config.batch_size} x "
          f"{list(config.patch_size)} -> {steps / elapsed:.2f} steps/s, {steps * config.batch_size / elapsed:.1f} patches/s "
          f"(setup and validation included)", flush=True)

    # 2. the parts, alternating
    sampler, net = sampler_and_network(image, strokes)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    net.train()
    x_np, y_np = sampler.sample(args.batch)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)

    def step():
        loss, _ = masked_cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    parts = {"sample": lambda: sampler.sample(args.batch), "step": step}
    for f in parts.values():
        f()
    times = {k: [] for k in parts}
    for rep in range(args.reps):
        for k, f in (parts.items() if rep % 2 == 0 else reversed(list(parts.items()))):
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    s, st = np.median(times["sample"]), np.median(times["step"])
    print(f"\n2. parts ({args.reps} alternating repetitions, medians; {torch.get_num_threads()} torch threads)")
    print(f"   PatchSampler.sample({args.batch}): {1e3 * s:7.1f} ms")
    print(f"   optimizer step:          {1e3 * st:7.1f} ms  ({1 / st:.2f} steps/s, {args.batch / st:.1f} patches/s "
          "without the data pipeline)")
    print(f"   data share of a serial step: {100 * s / (s + st):.1f}%")

    # 3. precision: the trainer's own step in fp32 and in bf16 (the default where the CPU has bf16 units)
    print(f"\n3. training precision (the trainer's step, {max(4, args.reps // 2)} alternating pairs, medians; "
          f"bf16 units: {cpu_computes_bf16()})")
    image3, truth3 = make_nuclei((32, 128, 128), seed=0, spacing=(3, 1, 1), attenuation=0.6, depth_blur=0.5)
    for label, data, kw in (("2D strokes, default network", ([image], [strokes]), dict(mode="semantic")),
                            ("3D instance, spacing (3, 1, 1)", ([image3], [truth3]),
                             dict(mode="instance", dims=3, spacing=(3, 1, 1)))):
        times = precision_step_times(*data, reps=max(4, args.reps // 2), **kw)
        r = np.array(times["bf16"]) / np.array(times["fp32"])
        print(f"   {label}: fp32 {1e3 * np.median(times['fp32']):.0f} ms, bf16 {1e3 * np.median(times['bf16']):.0f} ms "
              f"per step (time ratio {np.median(r):.2f}x, {r.min():.2f}-{r.max():.2f})", flush=True)

    # where the sampler's time goes
    prof = {"crop": [], "augment": []}
    for _ in range(args.reps * args.batch):
        t = time.perf_counter()
        i, center = sampler.draw_center()
        item = sampler.items[i]
        img, tgt = crop_patch(item.image, item.target, center, sampler.patch_size, sampler.rng)
        t1 = time.perf_counter()
        augment_patch(img, tgt, sampler.rng)
        t2 = time.perf_counter()
        prof["crop"].append(t1 - t)
        prof["augment"].append(t2 - t1)
    print(f"   per patch: centre + crop {1e3 * np.median(prof['crop']):.2f} ms, "
          f"augmentation {1e3 * np.median(prof['augment']):.2f} ms")


if __name__ == "__main__":
    main()
