"""The GPU suite: one command on a lent H100/H200 (or any CUDA GPU).

    pip install --no-deps --no-build-isolation .        # the plugin, so tests import the installed package
    python benchmarks/run_gpu_suite.py [--skip-tests] [--only indexer,fp8_quant] [--out benchmarks/RESULTS.md]

1. Runs the kernel tests on the GPU (tests/ with compiled kernels, including the `gpu`-marked full-size
   ones) and records pytest's summary line.
2. Measures the ceilings once (device copy bandwidth, bf16 and fp8 matmul), then imports every
   benchmarks/bench_*.py and calls its `run(h: harness.Harness)`, which times its kernels.
3. Writes one table (date, GPU, versions, ceilings, test summary, one row per shape) to --out.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import importlib.util
import os
import platform
import subprocess
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)


def run_tests(paths: list[str]) -> str:
    if importlib.util.find_spec("pytest") is None:
        return "not run: pytest is not installed in this environment"
    cmd = [sys.executable, "-m", "pytest", *paths, "-q", "-rfE", "-p", "no:cacheprovider"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append("--timeout=900")
    print("+", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    sys.stdout.write(p.stdout[-20000:])
    sys.stderr.write(p.stderr[-5000:])
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.strip()]
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    summary = lines[-1] if lines else f"pytest rc={p.returncode}"
    return summary + ("\n" + "\n".join(f"    {ln}" for ln in failed[:40]) if failed else "")


def versions() -> dict:
    import torch
    v = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton
        v["triton"] = triton.__version__
    except ImportError:
        v["triton"] = "missing"
    try:
        from importlib.metadata import version
        v["deepseek-v32-plugin"] = version("deepseek-v32-plugin")
    except Exception:
        v["deepseek-v32-plugin"] = "not installed"
    try:
        v["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                  text=True).stdout.strip() or "?"
    except Exception:
        v["git"] = "?"
    return v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--tests", default="tests", help="comma-separated pytest paths (default: tests)")
    ap.add_argument("--only", default="", help="comma-separated bench names (bench_<name>.py)")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args()

    import torch
    if not torch.cuda.is_available():
        print("run_gpu_suite: no CUDA device; this suite only runs on a GPU", file=sys.stderr)
        return 2
    from harness import Harness

    test_summary = "skipped" if args.skip_tests else run_tests(args.tests.split(","))
    h = Harness()
    errors = []
    only = {s for s in args.only.split(",") if s}
    for path in sorted(glob.glob(os.path.join(HERE, "bench_*.py"))):
        name = os.path.basename(path)[len("bench_"):-3]
        if only and name not in only:
            continue
        h.section(name)
        try:
            spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            mod.run(h)
        except Exception:
            tb = traceback.format_exc()
            print(tb, file=sys.stderr)
            errors.append(f"bench_{name}: {tb.strip().splitlines()[-1]}")
    torch.cuda.synchronize()
    h.print_table()

    v = versions()
    cap = ".".join(map(str, h.capability))
    lines = [
        "# GPU suite results",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- GPU: {h.gpu} (sm_{cap.replace('.', '')})",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- measured ceilings: copy {h.ceilings['copy_GBps']:.0f} GB/s (read+write), "
        f"bf16 mm {h.ceilings['bf16_TFLOPS']:.0f} TFLOPS, fp8 mm {h.ceilings['fp8_TFLOPS']:.0f} TFLOPS",
        f"- tests: {test_summary}",
        "- command: `python benchmarks/run_gpu_suite.py`",
        "",
        "% roofline = max(FLOPs / fp8-or-bf16 peak, bytes / copy bandwidth) / time, ceilings measured above. "
        "x torch ref = torch reference time / ours.",
        h.markdown(),
    ]
    if errors:
        lines += ["", "### errors", ""] + [f"- {e}" for e in errors]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
