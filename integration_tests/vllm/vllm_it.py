"""Helpers for the vLLM integration tests: run one vLLM engine per job in a fresh process (engine_run.py), so
engines never share a process or leak memory, and compare results with the reference model."""
import json
import os
import subprocess
import sys

import torch

from it_common import NEAR_TIE, check_greedy, record_stat, reference_logprobs  # noqa: F401 (re-exported)

HERE = os.path.dirname(os.path.abspath(__file__))


def engine_env(world: int = 1) -> dict:
    """`world`: worker processes of one engine (tensor x pipeline parallel), one OMP core binding each."""
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    if world == 1:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    else:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i % max(1, os.cpu_count() or 1)) for i in range(world))
        # engine_run.py asks the workers which model runner they built (a function sent through collective_rpc);
        # an engine core in its own process sends it pickled only with this
        env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    return env


def run_engine(tmp_path, model: str, engine: dict, requests: list, max_tokens: int = 8, batch: str = "together",
               timeout: int = 420, full: bool = False, log: bool = False, env: dict = None, **job_extra):
    """-> per-request results (or, with full=True, {"requests": [...], "metrics": {...}}); with log=True,
    (results, the engine's stdout: vLLM's log lines). env: extra environment variables of the engine process."""
    world = engine.get("tensor_parallel_size", 1) * engine.get("pipeline_parallel_size", 1)
    engine = dict(engine, distributed_executor_backend="uni" if world == 1 else "mp")
    job = tmp_path / f"job{len(list(tmp_path.iterdir()))}.json"
    job.write_text(json.dumps({"model": model, "engine": engine, "requests": requests, "max_tokens": max_tokens,
                               "batch": batch, **job_extra}))
    p = subprocess.run([sys.executable, os.path.join(HERE, "engine_run.py"), str(job)],
                       env={**engine_env(world), **(env or {})},
                       capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise AssertionError(f"engine run failed (rc={p.returncode}):\n{p.stderr[-6000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    assert res["runner"] == expected_model_runner(), (res["runner"], expected_model_runner())
    res = res if full else res["requests"]
    return (res, p.stdout) if log else res


def expected_model_runner() -> str:
    """The CPU model runner every engine run must use: v2 under VLLM_USE_V2_MODEL_RUNNER=1 (the opt-in
    vllm-mrv2 stage, whose venv has Triton for MRV2's kernels), else V1 (the default vllm venv has no Triton)."""
    if os.environ.get("VLLM_USE_V2_MODEL_RUNNER") == "1":
        return "vllm.v1.worker.cpu.model_runner"
    return "vllm.v1.worker.cpu_model_runner"


# (median, mean, max) of |dlogprob| per prompt position; see check_against_reference. Each bound is >= 3x the
# worst value of a seed sweep (scripts/sweep.py, seeds 1-8, 2026-12-06, conditioned tiny checkpoint):
#   float32 (fp32 reference): median 7.1e-5, mean 1.1e-3, max 8.5e-2 (one FP8 flip at len 100)
#   bfloat16 (bf16 reference, FP8 latent cache): median 3.6e-2, mean 5.6e-2, max 0.56
#   float32-tp (seeds 0-5): median 1.4e-4, mean 1.2e-3, max 8.5e-2
LIMITS = {
    "float32": (4e-4, 5e-3, 0.5),
    # TP: each rank's routed-expert partial output is rounded to bf16 (as the GPU kernels do) before the
    # all-reduce, instead of once after the full sum: bf16-level noise on every (conditioned) MoE output
    "float32-tp": (6e-4, 5e-3, 0.5),
    "bfloat16": (0.1, 0.2, 2.0),
}


def check_against_reference(ref, prompt: list, out: dict, topk: int, dtype: str = "float32",
                            mla_format: str = "bf16", name: str = "") -> dict:
    """Prompt logprobs and greedy tokens of one engine result vs the reference (its dtype: the engine's).

    Noise model (tiny conditioned checkpoint, it_common.write_tiny_checkpoint): the engine's GEMMs round
    differently from the reference's (~1e-7 relative in fp32), which now and then flips an FP8 activation
    rounding in a routed expert or a bf16 rounding of a cached latent row; on the conditioned checkpoint such a
    flip moves a logprob by <= ~4e-3, while a real bug (rope, scale, cache slot, routing) moves every position
    by >= 1e-2. Limits per dtype: LIMITS (median, mean, max of |dlogprob| over the prompt's positions).
    Greedy: each generated token is the reference's argmax up to the reference's first near-tie
    (it_common.check_greedy)."""
    lp = reference_logprobs(ref, prompt, out["token_ids"], mla_format)
    n = len(prompt)
    want = lp[torch.arange(n - 1), torch.tensor(prompt[1:])]
    got = torch.tensor(out["prompt_logprobs"][1:])
    d = (got - want).abs()
    stats = {"n": n, "max": d.max().item(), "median": d.median().item(), "mean": d.mean().item()}
    lim = LIMITS[dtype]
    record_stat(f"vllm:{name or dtype}:len{n}", dict(zip(("median", "mean", "max"), lim)),
                **{k: stats[k] for k in ("median", "mean", "max")})
    assert stats["median"] <= lim[0] and stats["mean"] <= lim[1] and stats["max"] <= lim[2], (dtype, stats, lim)
    check_greedy(lp[n - 1:], out["token_ids"], stats)
    return stats


def check_same_outputs(ref, prompt: list, a: dict, b: dict, what: str) -> None:
    """Two engine runs of the same request (batching / chunking / prefix caching differ): the same greedy
    tokens up to a reference near-tie, prompt logprobs equal up to the FP8 noise above."""
    if a["token_ids"] != b["token_ids"]:
        lp = reference_logprobs(ref, prompt, a["token_ids"])[len(prompt) - 1:]
        k = next(i for i, (x, y) in enumerate(zip(a["token_ids"], b["token_ids"])) if x != y)
        top2 = lp[k].topk(2).values
        assert (top2[0] - top2[1]).item() < NEAR_TIE, f"{what}: {a['token_ids']} != {b['token_ids']}"
    if a["prompt_logprobs"] and b["prompt_logprobs"]:
        d = (torch.tensor(a["prompt_logprobs"][1:]) - torch.tensor(b["prompt_logprobs"][1:])).abs()
    else:   # a prefix-cache hit has no prompt logprobs: compare the generated tokens' logprobs
        n = next((i for i, (x, y) in enumerate(zip(a["token_ids"], b["token_ids"])) if x != y), len(a["token_ids"]))
        d = (torch.tensor(a["logprobs"][:n]) - torch.tensor(b["logprobs"][:n])).abs()
    assert d.median().item() <= 1e-3 and d.mean().item() <= 0.05 and d.max().item() <= 1.0, \
        (what, d.median().item(), d.mean().item(), d.max().item())
