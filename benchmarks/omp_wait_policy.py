"""CPU training step time with OpenMP's default wait policy vs ``OMP_WAIT_POLICY=PASSIVE``.

OpenMP threads spin while waiting for work by default. On a machine where another process keeps a core
busy (a viewer, a browser, a second job), a spinning thread steals the time slice the working thread
needs. Each configuration runs in its own process (the policy is read when torch loads OpenMP),
alternating, on a quiet machine and with one core kept busy by a second process.

Usage: python benchmarks/omp_wait_policy.py [--steps 30] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

CHILD = r"""
import json, sys, time
import numpy as np, torch
from napari_unet.model import ModelConfig, network_from_config
steps = int(sys.argv[1])
torch.manual_seed(0)
net = network_from_config(ModelConfig())
opt = torch.optim.AdamW(net.parameters(), 1e-3)
x = torch.randn(8, 1, 128, 128)
y = torch.randint(0, 2, (8, 128, 128))
times = []
for i in range(steps + 3):
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if i >= 3:  # warm-up steps are not counted
        times.append(time.perf_counter() - t)
print(json.dumps({"ms": 1000 * float(np.median(times)), "threads": torch.get_num_threads()}))
"""


def run(steps: int, policy: str | None) -> float:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", CHILD, str(steps)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["ms"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    print(machine())
    print("training step, depth 4 / base 16, 8 x 128 x 128, torch default threads; median ms per step")
    for busy in (False, True):
        hog = None
        if busy:  # one core kept busy by another process, as a viewer or a second job would
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        try:
            results = {"default": [], "PASSIVE": []}
            for rep in range(args.reps):
                order = ["default", "PASSIVE"] if rep % 2 == 0 else ["PASSIVE", "default"]
                for name in order:
                    results[name].append(run(args.steps, None if name == "default" else "PASSIVE"))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        d, pa = statistics.median(results["default"]), statistics.median(results["PASSIVE"])
        print(f"{'one core busy' if busy else 'quiet'}: default {d:.0f} ms, PASSIVE {pa:.0f} ms, "
              f"PASSIVE/default {pa / d:.2f}  (runs: {[round(v) for v in results['default']]} vs "
              f"{[round(v) for v in results['PASSIVE']]})", flush=True)


if __name__ == "__main__":
    main()
