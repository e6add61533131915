"""Deprecated alias: the GPU entry point is `python benchmarks/gpu_check` (README "GPU check").

The old suite (all of tests/ then ~60 bench rows, RESULTS.md written only at the end) could not finish
inside a 15-minute lease; gpu_check runs in phases with budgets and writes every row as it is measured.
The per-family sweeps remain runnable alone: python benchmarks/bench_<family>.py (benchmarks/harness.py).
"""
import os
import runpy
import sys

if __name__ == "__main__":
    print("run_gpu_suite.py is an alias of benchmarks/gpu_check", file=sys.stderr, flush=True)
    sys.argv = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_check")] + sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
