"""Labels and probabilities together: one pass (``segment(..., probabilities_out=)``) vs two (``segment``
then ``predict``), which is what ``napari-unet predict --probabilities`` did before.

Usage: python benchmarks/one_pass.py [--size 2048] [--reps 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, machine, normalized, random_model  # noqa: E402

import napari_unet as nu  # noqa: E402
from napari_unet.synthetic import make_nuclei  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    print(machine())
    model = random_model()
    image = normalized(make_nuclei((args.size, args.size), seed=0)[0])
    prob = np.zeros((model.num_classes,) + image.shape, np.float32)
    results = {}

    def two_passes():
        results["two"] = (nu.segment(model, image), nu.predict(model, image))

    def one_pass():
        results["one"] = (nu.segment(model, image, probabilities_out=prob), prob)

    times = alternate({"two passes": two_passes, "one pass": one_pass}, args.reps)
    ratios = [o / t for o, t in zip(times["one pass"], times["two passes"])]
    same_labels = bool((results["one"][0] == results["two"][0]).all())
    max_dp = float(np.abs(results["one"][1] - results["two"][1]).max())
    print(f"{args.size}x{args.size}, default network (depth 4, base 16), labels + probabilities:")
    print(f"  two passes {statistics.median(times['two passes']):.2f} s, one pass "
          f"{statistics.median(times['one pass']):.2f} s: one/two = {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f}-{max(ratios):.2f}); labels identical: {same_labels}, max |dp| {max_dp:.1e}")


if __name__ == "__main__":
    main()
