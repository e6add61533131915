"""gpu_check: the one command a session with a GPU runs first (README "GPU check").

    python benchmarks/gpu_check [--out DIR] [--phases build,ops,model,timing] [--budget ops=90,...]
    python benchmarks/gpu_check --dry-run --out /tmp/x     # CPU, TRITON_INTERPRET=1, tiny shapes (CI)

Phases, in order of value, each with a wall-clock budget (seconds; a phase past its budget is cut: a
`cut` row is written and the next phase starts; time a phase leaves unused is added to the next one's):
  (a) build   150 s  JIT-build the CUDA extension, record the arch paths built (sm90a / sm80) and Triton's path
  (b) ops     120 s  every op x backend vs the PyTorch reference, representative + awkward shapes
  (c) model    90 s  the reference model on our kernels vs on the references: tiny + a real-width preset
  (d) timing  120 s  one row per anchor shape x (CUDA, Triton, torch), CUDA graphs + L2 flush, each
                     timed output checked, beside the anchors and the measured ceilings
  (e) graph    60 s  one decode step's op sequence (decode, MTP verify) captured in a CUDA graph on a
                     persistent-buffer plan, replayed on another batch vs eager on its own plan; both timed
  = 540 s (9 min) on one H100. Estimates (README "GPU check"): (a) nvcc on this repo's CPU machine: the
  sm_90a CuTe GEMM 31 s, sm_90a indexer 17 s, sm_90a MLA 14 s, sm80 GEMM 10 s, the rest 2-3 s each
  (84 s serial; ninja runs them in parallel on 16 cores, so ~40-60 s with bindings.cpp) + margin;
  Triton (tests/triton/test_compile_*.py, sm_90a, this machine): the shipped MLA+MoE configs 17 s, the
  indexer's 18 s, ~1-2 s per kernel variant;
  (b) 71 cases x (cuda [+ forced sm80] + triton) = 188 checks, dominated by ~40 Triton JIT compiles
  at ~1-2 s; (c) 3.2 GB of weights generated on the GPU + 2 presets x 2 cache formats x 3 backends;
  (d) 7 anchors x 3 backends, ~0.3 s of replays each + compiles + the torch references (~1-3 s each);
  (e) 2 cases: 340 MB of caches filled, 2 warm-ups + a capture + 20 timed steps each,
  Triton JITs shared with (b) (graph_check.py);
  (f) context  90 s  opt-in (--phases ...,context): the engine-neutral decode step, DSA on our kernels vs
                     dense MLA, contexts 2K..128K (context_check.py; benchmarks/context_curve on CPU): seconds
                     to generate the real-width weights + fill 128K of cache, Triton JIT of the new shapes,
                     then 5 contexts x 2 paths x 22 eager steps
Later work may append optional phases (g) to PHASES with their own budgets; they run after (f) and are cut the same way.

Results: <out>/gpu_check.jsonl (every row appended + fsync'd when it exists), <out>/RESULTS.md rendered
after each phase. Render again / update the README: python benchmarks/gpu_check/results.py FILE --md ... --readme README.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

PHASES = [("build", 150.0), ("ops", 120.0), ("model", 90.0), ("timing", 120.0), ("graph", 60.0),
          ("context", 90.0)]
OPTIONAL = {"context"}     # run only when named in --phases: the default run stays within 540 s
DRY_BUDGETS = {"build": 20.0, "ops": 45.0, "model": 40.0, "timing": 20.0, "graph": 20.0, "context": 30.0}


class PhaseCut(BaseException):
    """Raised by the phase deadline (SIGALRM); BaseException so `except Exception` in cases lets it through."""


class Ctx:
    def __init__(self, dry: bool, res, seed: int):
        self.dry, self.res, self.seed = dry, res, seed
        self.dev = "cpu" if dry else "cuda"
        self.cuda_ok = False
        self.cuda_reason = "dry run: no CUDA (CPU, TRITON_INTERPRET=1)" if dry else "CUDA extension not built yet"
        self.sm90: dict = {}
        self.triton_ok, self.triton_path, self.triton_reason = False, "-", "not probed"
        self.deadline = float("inf")

    def seed_for(self, *key) -> int:
        return (self.seed + zlib.crc32(repr(key).encode())) % (1 << 31)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def _on_alarm(signum, frame):
    raise PhaseCut()


def _versions() -> dict:
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
    except Exception:  # noqa: BLE001
        v["deepseek-v32-plugin"] = "not installed"
    return v


def _git() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (out + ("+dirty" if dirty else "")) if out else "?"
    except Exception:  # noqa: BLE001
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes, CUDA skipped")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "benchmarks", "results", "latest"))
    ap.add_argument("--phases", default="", help="comma-separated subset of " + ",".join(p for p, _ in PHASES)
                    + " (default: all but the optional " + ",".join(sorted(OPTIONAL)) + ")")
    ap.add_argument("--budget", default="", help="per-phase budget overrides, e.g. ops=60,timing=200")
    ap.add_argument("--seed", type=int, default=20261122)
    args = ap.parse_args(argv)

    if args.dry_run:   # before torch/triton load: kernels pick interpreter vs compiler at decoration time
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import triton_interp_patch   # the interpreter's numeric fixes (bf16 dot, fp8 casts)
        triton_interp_patch.apply()
    import torch
    from results import Results, load, render_markdown

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --dry-run on CPU)", file=sys.stderr)
        return 2
    budgets = dict(DRY_BUDGETS) if args.dry_run else {p: b for p, b in PHASES}
    for kv in filter(None, args.budget.split(",")):
        k, v = kv.split("=")
        budgets[k.strip()] = float(v)
    chosen = [p for p, _ in PHASES if (p in args.phases.split(",") if args.phases else p not in OPTIONAL)]

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_check.jsonl")
    if os.path.exists(path):
        os.remove(path)
    res = Results(path)
    ctx = Ctx(args.dry_run, res, args.seed)
    dev = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    cap = None if args.dry_run else "sm_%d%d" % torch.cuda.get_device_capability()
    res.add(kind="meta", phase="meta", status="start", dry_run=args.dry_run, device=dev, capability=cap,
            date=f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", versions=_versions(),
            git=_git(), command="python benchmarks/gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]),
            budgets_s={p: budgets[p] for p in chosen}, seed=args.seed)

    import build
    import context_check
    import graph_check
    import model_check
    import ops_check
    import timing
    runners = {"build": build.run, "ops": ops_check.run, "model": model_check.run, "timing": timing.run,
               "graph": graph_check.run, "context": context_check.run}
    signal.signal(signal.SIGALRM, _on_alarm)
    rc = 0
    if "build" not in chosen:     # the later phases need to know what is there
        build.triton_info(ctx) if args.dry_run else None
        if not args.dry_run:
            ctx.deadline = time.monotonic() + 300
            build.run(ctx)
    slack = 0.0     # time a phase leaves unused goes to the next ones: the total stays within the sum
    for name in chosen:
        budget = budgets[name] + slack
        t0 = time.monotonic()
        ctx.deadline = t0 + budget
        res.add(kind="phase", phase=name, status="start", budget_s=budget)
        status, n0 = "done", res.n
        env0 = dict(os.environ)   # a cut can land inside a case's env override: restore after the phase
        try:
            signal.setitimer(signal.ITIMER_REAL, budget)
            runners[name](ctx)
        except PhaseCut:
            status = "cut"
        except Exception:  # noqa: BLE001
            status, rc = "error", 1
            res.add(kind="phase", phase=name, status="error", reason=traceback.format_exc()[-1500:])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            os.environ.clear()
            os.environ.update(env0)
            from deepseek_v32_plugin.ops import _dispatch
            _dispatch._cache.clear()
        if status == "cut":
            if ctx.dev == "cuda":
                try:
                    torch.cuda.synchronize()
                except Exception:  # noqa: BLE001
                    pass
            res.add(kind="cut", phase=name, status="cut",
                    reason=f"budget {budget:.0f} s exceeded after {res.n - n0} rows; the rest of the phase was skipped")
        elapsed = time.monotonic() - t0
        slack = max(0.0, budget - elapsed)
        res.add(kind="phase", phase=name, status=status, budget_s=round(budget, 1), elapsed_s=round(elapsed, 1))
        with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
            f.write(render_markdown(load(path), os.path.basename(path)))
    rows = load(path)
    bad = [r for r in rows if r.get("status") in ("fail", "error") or r.get("check") == "fail"]
    res.add(kind="end", phase="end", status="fail" if bad else "pass", reason=f"{len(bad)} failing rows")
    with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
        f.write(render_markdown(load(path), os.path.basename(path)))
    res.close()
    from results import render_status
    print("\n".join(render_status(load(path), os.path.basename(path))), flush=True)   # the reply's tail
    print(f"gpu_check: {len(rows) + 1} rows in {path}; RESULTS.md beside it; {len(bad)} failing rows", flush=True)
    return rc or (1 if bad else 0)


if __name__ == "__main__":
    sys.exit(main())
