"""Tiled prediction on CPU: napari-unet against MONAI ``sliding_window_inference``, side by side.

Same network (napari_unet UNet, depth 4, base 16, random weights with non-trivial BatchNorm statistics,
eval mode), same normalized image (synthetic nuclei, 2048 x 2048 float32 by default). MONAI runs with
roi 256, overlap 0.25, gaussian blending, sw_batch_size 4, at torch's default thread count and with one
thread (it is faster with one on a busy machine; the better of the two is the baseline). Ours runs
with its defaults, and also restricted to one thread to compare at equal cores. Repetitions
alternate between the methods; the ratios are per repetition. Accuracy is measured against one forward
pass over the whole image: max |difference| of the class probabilities and the fraction of pixels whose
class agrees.

Usage: python benchmarks/vs_monai.py [--size 2048] [--reps 5] [--json results.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, machine, normalized, random_model, ratio_summary  # noqa: E402

import napari_unet as nu  # noqa: E402
from napari_unet.device import thread_policy  # noqa: E402
from napari_unet.predict import plan_prediction  # noqa: E402
from napari_unet.synthetic import make_nuclei  # noqa: E402


def monai_predict(net, image: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Class probabilities from MONAI's sliding window (logits blended, then softmax)."""
    from monai.inferers import sliding_window_inference

    with thread_policy(threads=threads), torch.inference_mode():
        x = torch.from_numpy(image)[None, None]
        logits = sliding_window_inference(x, roi_size=256, sw_batch_size=4, predictor=net, overlap=0.25,
                                          mode="gaussian")
        return torch.softmax(logits, dim=1)[0].numpy()


def whole_image(net, image: np.ndarray) -> np.ndarray:
    """One forward pass over the whole image (its sides must be multiples of 2**depth)."""
    with torch.inference_mode():
        return torch.softmax(net(torch.from_numpy(image)[None, None]), dim=1)[0].numpy()


def accuracy(prob: np.ndarray, ref: np.ndarray) -> dict:
    return dict(max_abs=float(np.abs(prob - ref).max()), mean_abs=float(np.abs(prob - ref).mean()),
                class_agreement=float((prob.argmax(0) == ref.argmax(0)).mean()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    print(machine(), flush=True)
    model = random_model(dims=2, depth=4, base=16)
    raw, _ = make_nuclei((args.size, args.size), seed=0)
    image = normalized(raw)
    net = model.network
    plan = plan_prediction(model, image)
    print(f"image {image.shape}; ours: {plan.describe()}", flush=True)

    t = time.perf_counter()
    ref = whole_image(net, image)
    print(f"whole-image reference pass: {time.perf_counter() - t:.1f} s", flush=True)
    results = {"ours": nu.predict(model, image), "monai": monai_predict(net, image)}
    acc = {name: accuracy(prob, ref) for name, prob in results.items()}
    del results

    def ours_one_thread():
        with thread_policy(threads=1):
            nu.predict(model, image, workers=1)

    variants = {
        "ours": lambda: nu.predict(model, image),
        "ours_1thread": ours_one_thread,
        "monai": lambda: monai_predict(net, image),
        "monai_1thread": lambda: monai_predict(net, image, threads=1),
    }
    times = alternate(variants, args.reps, warmup=False)
    best_monai = "monai" if np.median(times["monai"]) <= np.median(times["monai_1thread"]) else "monai_1thread"

    print(f"\n{args.reps} alternating repetitions (seconds, median [min-max]; absolute times are noisy: "
          "the machine is shared)")
    for name, ts in times.items():
        print(f"  {name:14s} {np.median(ts):7.2f} [{min(ts):.2f}-{max(ts):.2f}]")
    print(f"ours / MONAI ({torch.get_num_threads()} threads): {ratio_summary(times, 'ours', 'monai')}")
    print(f"ours / MONAI (1 thread):  {ratio_summary(times, 'ours', 'monai_1thread')}")
    print(f"ours / best MONAI ({best_monai}): {ratio_summary(times, 'ours', best_monai)}")
    print(f"same core count, one thread each: ours / MONAI {ratio_summary(times, 'ours_1thread', 'monai_1thread')}")
    print("\naccuracy against one whole-image pass")
    for name, a in acc.items():
        print(f"  {name:6s} max |dp| {a['max_abs']:.2e}  mean |dp| {a['mean_abs']:.2e}  "
              f"class agreement {100 * a['class_agreement']:.4f}%")
    if args.json:
        args.json.write_text(json.dumps(dict(machine=machine(), plan=plan.describe(), times=times, accuracy=acc,
                                             best_monai=best_monai), indent=1))


if __name__ == "__main__":
    main()
