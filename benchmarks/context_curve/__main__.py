"""python benchmarks/context_curve [--phases checkpoints,decode,engines,report] [--budget-s 1800] [--quick]

See benchmarks/context_curve/__init__.py. Results: <out>/context_curve.jsonl (one JSON row per measurement,
appended as they come), then <out>/CONTEXT_CURVE.md and <out>/context_curve.png (default out: benchmarks/).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)   # run as a script (like gpu_check): the installed plugin, not the checkout, is imported
MODELS = ("topk2048", "real-width")
ENGINES = ("vllm", "sglang")
PHASES = ("checkpoints", "decode", "engines", "report")


def _ints(s: str) -> list:
    return [int(v) for v in s.split(",") if v]


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--decode-contexts", default=None, help="default 512,...,32768 (--quick: 128,512)")
    ap.add_argument("--prefill-contexts", default=None, help="default 512,...,8192 (--quick: 128,512)")
    ap.add_argument("--reps", type=int, default=10, help="repetitions per cell (decode steps / requests)")
    ap.add_argument("--decode-tokens", type=int, default=8, help="decode steps timed per engine request")
    ap.add_argument("--chunk", type=int, default=1024, help="engines' prefill chunk (max batched tokens)")
    ap.add_argument("--budget-s", type=float, default=1800.0, help="total wall-clock budget of decode + engines")
    ap.add_argument("--decode-share", type=float, default=0.3, help="share of the budget for the decode phase")
    ap.add_argument("--rss-cap-gb", type=float, default=7.0, help="an engine process tree above this is killed")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch / OpenMP threads of every measured process (0: all cores); 1 is steadier on a "
                         "shared machine")
    ap.add_argument("--ckpt-dir", default="/tmp/context-curve-ckpt")
    ap.add_argument("--venvs", default=os.environ.get("DSV32_VENVS") or os.path.join(ROOT, ".venvs"))
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="plumbing check: tiny contexts, 2 repetitions, topk2048 only, index_topk 256")
    a = ap.parse_args(argv)
    if a.quick:
        a.models, a.reps, a.decode_tokens, a.budget_s = "topk2048", 2, 3, min(a.budget_s, 300)
    a.decode_contexts = a.decode_contexts or ("128,512" if a.quick else "512,1024,2048,4096,8192,16384,32768")
    a.prefill_contexts = a.prefill_contexts or ("128,512" if a.quick else "512,1024,2048,4096,8192")
    a.phases, a.models, a.engines = a.phases.split(","), a.models.split(","), [e for e in a.engines.split(",") if e]
    a.decode_contexts, a.prefill_contexts = _ints(a.decode_contexts), _ints(a.prefill_contexts)
    return a


def preset_overrides(args) -> dict:
    """--quick shrinks index_topk to 256 so both sides of it (dense rows, scored rows) are crossed in seconds."""
    return {"index_topk": 256} if args.quick else {}


class Results:
    def __init__(self, path: str, fresh: bool):
        self.path = path
        if fresh and os.path.exists(path):
            os.remove(path)

    def add(self, **row) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# ---------------------------------------------------------------------------------------------- checkpoints

def ckpt_paths(args, model: str) -> dict:
    tag = model + ("-quick" if args.quick else "")
    return {"ours": os.path.join(args.ckpt_dir, tag, "v32"), "dense": os.path.join(args.ckpt_dir, tag, "dense")}


def phase_checkpoints(args, res) -> None:
    from deepseek_v32_plugin.checkpoint import expected_tensors, write_checkpoint
    from deepseek_v32_plugin.config import preset_config
    from deepseek_v32_plugin.testing_checkpoints import write_dense_baseline
    for model in args.models:
        cfg = preset_config(model, **preset_overrides(args))
        p = ckpt_paths(args, model)
        done = os.path.join(os.path.dirname(p["ours"]), "DONE")
        if not os.path.exists(done):
            t0 = time.time()
            write_checkpoint(cfg, p["ours"], seed=args.seed, overwrite=True)
            write_dense_baseline(p["ours"], p["dense"], overwrite=True)
            open(done, "w").write(json.dumps(cfg.to_dict()))
            print(f"[checkpoints] {model}: written in {time.time() - t0:.0f} s", flush=True)
        size = {k: sum(os.path.getsize(os.path.join(v, f)) for f in os.listdir(v) if f.endswith(".safetensors"))
                for k, v in p.items()}
        params = sum(s.numel for n, s in expected_tensors(cfg, include_mtp=False).items()
                     if not n.endswith("_scale_inv"))
        res.add(kind="checkpoint", model=model, config=cfg.to_dict(), bytes=size, params=params, path=p)


# --------------------------------------------------------------------------------------------------- decode

def machine_ceilings(threads: int) -> dict:
    """This CPU's bf16 matmul FLOP/s (a 2048^3 GEMM) and read+write copy bandwidth (256 MB), measured now."""
    import torch
    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    b = torch.randn(2048, 2048, dtype=torch.bfloat16)
    x = torch.empty(64 << 20, dtype=torch.float32)
    y = torch.empty_like(x)
    best_f, best_b = 0.0, 0.0
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        best_f = max(best_f, 2 * 2048 ** 3 / (time.perf_counter() - t))
        t = time.perf_counter()
        y.copy_(x)
        best_b = max(best_b, 2 * x.numel() * 4 / (time.perf_counter() - t))
    return {"flops": best_f, "bandwidth": best_b, "threads": threads}


def phase_decode(args, res, budget_s: float) -> None:
    import torch
    from deepseek_v32_plugin.checkpoint import load_checkpoint
    from deepseek_v32_plugin.model import ReferenceModel

    from decode import DecodeBench, agree, summary, time_steps
    t_end = time.monotonic() + budget_s
    for mi, model in enumerate(args.models):
        t_model = time.monotonic() + (t_end - time.monotonic()) / (len(args.models) - mi)
        cfg, tensors = load_checkpoint(ckpt_paths(args, model)["ours"], include_mtp=False)
        m = ReferenceModel(cfg, tensors, dtype=torch.bfloat16)
        del tensors
        bench = DecodeBench(m, max(args.decode_contexts) + 1, seed=args.seed)
        ctx_eq = min(cfg.index_topk, min(args.decode_contexts))
        res.add(kind="decode_check", model=model, context=ctx_eq, cos=agree(bench, ctx_eq),
                what="min cosine of ours vs dense logits (bf16) at a context <= index_topk, where DSA == dense")
        last = {}
        for ctx in sorted(args.decode_contexts):
            for variant in ("dense", "ours"):
                left = t_model - time.monotonic()
                est = last.get(variant, 0.0) * ctx / last.get(variant + "_ctx", ctx) * (args.reps + 1)
                if est > left:
                    res.add(kind="decode", model=model, variant=variant, context=ctx, skipped=True,
                            reason=f"estimated {est:.0f} s > {left:.0f} s left of the phase budget")
                    continue
                t0 = time.monotonic()
                ms = time_steps(bench, ctx, variant, args.reps)
                last[variant], last[variant + "_ctx"] = (time.monotonic() - t0) / (args.reps + 1), ctx
                res.add(kind="decode", model=model, variant=variant, context=ctx, ms=ms, **summary(ms),
                        load=load_avg())
                print(f"[decode] {model} ctx {ctx} {variant}: {summary(ms)['median']:.1f} ms", flush=True)
        del bench, m


# -------------------------------------------------------------------------------------------------- engines

def _tree_rss(pid: int) -> int:
    """Resident bytes of pid and all its descendants (from /proc)."""
    kids, total = {}, 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def run_capped(cmd: list, env: dict, cap_bytes: int, timeout_s: float, on_line) -> dict:
    """Run cmd in its own process group; SIGKILL the group when its RSS passes cap_bytes or after timeout_s.
    on_line(str) gets each stdout line as it comes. -> {rc, peak_rss, killed, stderr_tail}."""
    import selectors
    err_path = f"/tmp/context-curve-worker-{os.getpid()}.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
                                cwd=ROOT)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    peak, killed, t_end = 0, None, time.monotonic() + timeout_s
    while True:
        for _key, _ in sel.select(timeout=0.2):
            line = proc.stdout.readline()
            if line:
                on_line(line.rstrip("\n"))
        rss = _tree_rss(proc.pid)
        peak = max(peak, rss)
        if killed is None and (rss > cap_bytes or time.monotonic() > t_end):
            killed = f"RSS {rss / 2 ** 30:.1f} GiB > cap {cap_bytes / 2 ** 30:.1f} GiB" if rss > cap_bytes \
                else f"time limit {timeout_s:.0f} s"
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is not None:
            for line in proc.stdout:
                on_line(line.rstrip("\n"))
            break
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # leftovers (SGLang's scheduler) of a finished worker
    except ProcessLookupError:
        pass
    with open(err_path) as f:
        tail = f.read()[-3000:]
    os.remove(err_path)
    return {"rc": proc.returncode, "peak_rss": peak, "killed": killed, "stderr_tail": tail}


def engine_env(engine: str, variant: str, threads: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS=str(threads))
    env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"    # vLLM's CPU worker would pin and size its own pool
    env.pop("PYTHONPATH", None)
    if variant == "dense":
        env["VLLM_PLUGINS"] = ""               # vLLM: no plugin at all
        env["DSV32_SGLANG_BUILTIN"] = "1"      # SGLang: only the plugin's CPU shims, no model/backend of ours
    return env


def phase_engines(args, res, budget_s: float) -> None:
    runs = [(e, m, v) for m in args.models for e in args.engines for v in ("dense", "ours")]
    t_end = time.monotonic() + budget_s
    for i, (engine, model, variant) in enumerate(runs):
        share = (t_end - time.monotonic()) / (len(runs) - i)
        py = os.path.join(args.venvs, engine, "bin", "python")
        job = {"engine": engine, "model": ckpt_paths(args, model)[variant], "contexts": args.prefill_contexts,
               "reps": args.reps, "decode_tokens": args.decode_tokens, "chunk": args.chunk, "dtype": "bfloat16",
               "seed": args.seed, "budget_s": max(share, 30.0)}
        path = f"/tmp/context-curve-job-{os.getpid()}-{i}.json"
        with open(path, "w") as f:
            json.dump(job, f)
        base = dict(kind="engine", engine=engine, model=model, variant=variant)
        print(f"[engines] {engine} {model} {variant}: budget {share:.0f} s, load {load_avg()}", flush=True)

        def on_line(line, base=base):
            tag, _, body = line.partition(" ")
            if tag == "ROW":
                res.add(**base, **json.loads(body), load=load_avg())
            elif tag == "SKIP":
                res.add(**base, **json.loads(body), skipped=True)
            elif tag == "LOADED":
                res.add(**{**base, "kind": "engine_load"}, **json.loads(body))
        out = run_capped([py, os.path.join(HERE, "engine_worker.py"), path], engine_env(engine, variant, args.threads),
                         int(args.rss_cap_gb * 2 ** 30), max(share, 30.0) + 120, on_line)
        os.remove(path)
        res.add(**{**base, "kind": "engine_run"}, rc=out["rc"], peak_rss=out["peak_rss"], killed=out["killed"],
                stderr_tail=None if out["rc"] == 0 else out["stderr_tail"])
        print(f"[engines] {engine} {model} {variant}: rc {out['rc']}, peak RSS {out['peak_rss'] / 2 ** 30:.2f} GiB"
              + (f", killed: {out['killed']}" if out["killed"] else ""), flush=True)


# ------------------------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    args = parse(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "context_curve.jsonl")
    fresh = "decode" in args.phases or "engines" in args.phases
    res = Results(path, fresh)
    import torch
    threads = args.threads or os.cpu_count() or 1
    args.threads = threads
    torch.set_num_threads(threads)
    if fresh:
        res.add(kind="meta", date=f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
                machine=_cpu_name(), cores=os.cpu_count(), mem_gb=round(os.sysconf("SC_PAGE_SIZE")
                                                                        * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
                python=platform.python_version(), torch=torch.__version__, load_start=load_avg(),
                args={k: v for k, v in vars(args).items() if k not in ("out",)}, git=_git(),
                ceilings=machine_ceilings(threads), engines=_engine_versions(args))
    t0 = time.monotonic()
    if "checkpoints" in args.phases or fresh:
        phase_checkpoints(args, res)
    t_budget = time.monotonic() + args.budget_s
    if "decode" in args.phases:
        share = args.budget_s * (args.decode_share if "engines" in args.phases else 1.0)
        phase_decode(args, res, share)
    if "engines" in args.phases and args.engines:
        phase_engines(args, res, max(60.0, t_budget - time.monotonic()))
    if fresh:
        res.add(kind="end", load_end=load_avg(), elapsed_s=round(time.monotonic() - t0, 1))
    if "report" in args.phases:
        import report
        report.write(path, args.out)
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        return "?"


def _engine_versions(args) -> dict:
    out = {}
    for e, pkg in (("vllm", "vllm-cpu"), ("sglang", "sglang")):
        py = os.path.join(args.venvs, e, "bin", "python")
        if e in args.engines and os.path.exists(py):
            p = subprocess.run([py, "-c", f"from importlib.metadata import version; print(version('{pkg}'))"],
                               capture_output=True, text=True, timeout=60)
            out[e] = p.stdout.strip() or "?"
    return out


if __name__ == "__main__":
    sys.exit(main())
