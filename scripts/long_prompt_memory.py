"""Opt-in check (issue 15 item 2): one 4096-token prompt with index_topk 2048 through each engine on CPU, under
an RSS watchdog, and the peak resident memory of the engine's process tree.

    python3 scripts/long_prompt_memory.py [--engines vllm sglang] [--cap-gb 6] [--tokens 4096]
    (bash scripts/test.sh memory runs it after building the venvs)

Each engine runs in a fresh child process tree (the venv's own python); this process samples the tree's summed
RSS every 0.1 s and kills the whole tree the moment it passes --cap-gb, so a regression fails the check instead
of the machine (before the fix one 2K prompt grew vLLM past 24 GB). The model is the tiny preset with the
real indexer width (64 index heads, index_topk 2048), random weights; the prompt is a whole prefill chunk
(vLLM max_num_batched_tokens = SGLang chunked_prefill_size = --tokens), so rows both below and above top-k
are in one step. Prints one line per engine: peak GB, wall seconds, generated tokens; exit 1 if any failed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENVS = os.environ.get("DSV32_VENVS", os.path.join(ROOT, ".venvs"))
OVERRIDES = ["index_topk=2048", "index_n_heads=64", "max_position_embeddings=16384"]

VLLM = """
import os, sys, time, json, random
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1"); os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from vllm import LLM, SamplingParams
model, n = sys.argv[1], int(sys.argv[2])
llm = LLM(model=model, enforce_eager=True, seed=0, max_model_len=n + 64, max_num_batched_tokens=n,
          distributed_executor_backend="uni")
ids = random.Random(0).choices(range(10, 1000), k=n)
t0 = time.perf_counter()
out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=4, temperature=0.0, detokenize=False),
                   use_tqdm=False)
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0, "tokens": list(out[0].outputs[0].token_ids)}))
"""

SGLANG = """
import os, sys, time, json, random
import sglang
model, n = sys.argv[1], int(sys.argv[2])
eng = sglang.Engine(model_path=model, device="cpu", mem_fraction_static=0.6, max_total_tokens=n + 1024,
                    chunked_prefill_size=n, disable_cuda_graph=True, log_level="error", dtype="bfloat16")
ids = random.Random(0).choices(range(10, 1000), k=n)
t0 = time.perf_counter()
out = eng.generate(input_ids=ids, sampling_params={"max_new_tokens": 4, "temperature": 0.0})
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0, "tokens": out["output_ids"]}))
eng.shutdown()
"""


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_rss_bytes(pid: int) -> int:
    kids, todo, total = _children(), [pid], 0
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


def run_capped(cmd: list[str], cap: int, env: dict, timeout: float) -> tuple[int, int, str, bool]:
    """-> (exit code, peak tree RSS bytes, stdout, killed by the cap)."""
    out = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    peak, killed, t_end = 0, False, time.monotonic() + timeout
    while proc.poll() is None:
        peak = max(peak, tree_rss_bytes(proc.pid))
        if peak > cap or time.monotonic() > t_end:
            killed = peak > cap
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.1)
    out.seek(0)
    return proc.returncode, peak, out.read(), killed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", nargs="+", default=["vllm", "sglang"], choices=["vllm", "sglang"])
    ap.add_argument("--cap-gb", type=float, default=6.0)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    failed = False
    for engine in args.engines:
        py = os.path.join(VENVS, engine, "bin", "python")
        with tempfile.TemporaryDirectory(prefix="dsv32-mem-") as ckpt:
            subprocess.run([os.path.join(VENVS, engine, "bin", "deepseek-v32"), "make-checkpoint", ckpt, "--preset",
                            "tiny", "--force"] + sum((["--set", o] for o in OVERRIDES), []),
                           check=True, stdout=subprocess.DEVNULL)
            env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
            if engine == "sglang":
                env["SGLANG_USE_CPU_ENGINE"] = "1"
            t0 = time.monotonic()
            rc, peak, log, killed = run_capped([py, "-c", VLLM if engine == "vllm" else SGLANG, ckpt,
                                                str(args.tokens)], int(args.cap_gb * 2 ** 30), env, args.timeout)
        res = next((json.loads(line[7:]) for line in log.splitlines() if line.startswith("RESULT ")), None)
        ok = rc == 0 and res is not None and len(res["tokens"]) > 0
        failed |= not ok
        what = (f"KILLED at the {args.cap_gb:g} GB cap" if killed else "ok" if ok else f"FAILED (rc {rc})")
        gen = f"generate {res['seconds']:.1f} s, tokens {res['tokens']}" if res else ""
        print(f"{engine:7s} prompt {args.tokens} index_topk 2048: peak RSS {peak / 2 ** 30:.2f} GB, "
              f"wall {time.monotonic() - t0:.0f} s, {gen} {what}", flush=True)
        if not ok:
            print(log[-4000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
