"""Run the benchmarks one after another (``make bench``); see BENCHMARKS.md for what each measures.

They run sequentially on purpose: two benchmarks at once would time each other. Each one prints its
own machine line and results; a failing one is reported and the others still run.

Usage: python benchmarks/run_all.py [--only vs_monai cpu_levers ...] [--quick]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (full arguments, --quick arguments)
BENCHMARKS = {
    "vs_monai": ([], ["--reps", "2", "--size", "1024"]),
    "cpu_levers": ([], ["--reps", "1", "--only", "A", "B"]),
    "streaming_memory": (["--format", "zarr", "tif"], ["--planes", "8", "32", "--size", "512"]),
    "train_throughput": ([], ["--seconds", "15", "--reps", "6"]),
    "tiling_3d": ([], ["--nets", "random", "--shape", "64", "160", "160"]),
    "gpu": ([], []),
    "quality": ([], ["--only", "sparse", "--seeds", "0", "--sparse-budget", "20"]),
    "correction_loop": ([], ["--seeds", "0", "--budget", "15", "--finetune", "10"]),
    "one_pass": ([], ["--size", "512", "--reps", "1"]),
    "omp_wait_policy": ([], ["--steps", "3", "--reps", "1"]),
    "omezarr_labels": ([], ["--shape", "2", "1024", "1024", "--reps", "1"]),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    p.add_argument("--quick", action="store_true", help="small sizes: checks that every script runs")
    args = p.parse_args(argv)
    failed = []
    for name in args.only:
        full, quick = BENCHMARKS[name]
        cmd = [sys.executable, str(HERE / f"{name}.py")] + (quick if args.quick else full)
        print(f"\n===== {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"===== {name}: exit code {rc}, {time.perf_counter() - t:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
