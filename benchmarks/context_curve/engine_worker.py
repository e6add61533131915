"""One engine, one checkpoint, in this process: time prefill and decode of single requests against context.

    python engine_worker.py JOB.json      (run by __main__ with the engine's venv python, under an RSS cap)

JOB: {"engine": "vllm"|"sglang", "model": dir, "contexts": [...], "reps": int, "decode_tokens": int,
      "chunk": int, "dtype": "bfloat16", "seed": int, "budget_s": float}
Each repetition sends one request of `context` random prompt tokens (fresh per repetition, so no prefix-cache
hit) asking for decode_tokens + 1 tokens, and records the time to the first token (the prefill, chunks
included) and the gap between each later token (one decode step each). Prints one line per repetition:
"ROW {json}", then "DONE"; a context whose estimated time would overrun budget_s is skipped ("SKIP {json}").
vLLM: the engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) and LLMEngine.step() is timed;
SGLang: sglang.Engine's streamed generate (the scheduler runs in a child process), timed per streamed chunk.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time


def prompt(vocab: int, n: int, seed: int) -> list:
    r = random.Random(seed)
    return [r.randrange(2, vocab) for _ in range(n)]


class VllmRunner:
    def __init__(self, job):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM, SamplingParams
        self.sp = SamplingParams(max_tokens=job["decode_tokens"] + 1, temperature=0.0, ignore_eos=True,
                                 detokenize=False)
        self.llm = LLM(model=job["model"], enforce_eager=True, seed=0, dtype=job["dtype"],
                       max_model_len=max(job["contexts"]) + job["decode_tokens"] + 64,
                       max_num_batched_tokens=job["chunk"], distributed_executor_backend="uni",
                       disable_log_stats=True)
        self.vocab = self.llm.llm_engine.model_config.get_vocab_size()
        self.n = 0

    def run(self, ids):
        eng = self.llm.llm_engine
        self.n += 1
        eng.add_request(f"r{self.n}", {"prompt_token_ids": ids}, self.sp)
        t0, stamps, seen = time.perf_counter(), [], 0
        while eng.has_unfinished_requests():
            outs = eng.step()
            now = time.perf_counter()
            for o in outs:
                k = len(o.outputs[0].token_ids)
                stamps += [now] * (k - seen)
                seen = k
        return t0, stamps


class SglangRunner:
    def __init__(self, job):
        import sglang
        ctx = max(job["contexts"]) + job["decode_tokens"] + 64
        self.engine = sglang.Engine(model_path=job["model"], device="cpu", dtype=job["dtype"], mem_fraction_static=0.6,
                                    max_total_tokens=ctx + 256, context_length=ctx, chunked_prefill_size=job["chunk"],
                                    disable_cuda_graph=True, disable_radix_cache=True, log_level="error",
                                    random_seed=0)
        with open(os.path.join(job["model"], "config.json")) as f:
            self.vocab = json.load(f)["vocab_size"]
        self.sp = {"max_new_tokens": job["decode_tokens"] + 1, "temperature": 0.0, "ignore_eos": True}

    def run(self, ids):
        t0, stamps, seen = time.perf_counter(), [], 0
        for chunk in self.engine.generate(input_ids=ids, sampling_params=self.sp, stream=True):
            now = time.perf_counter()
            k = len(chunk.get("output_ids") or []) if isinstance(chunk, dict) else 0
            k = k or chunk["meta_info"]["completion_tokens"]
            stamps += [now] * (k - seen)
            seen = k
        return t0, stamps

    def close(self):
        self.engine.shutdown()


def main(path: str) -> int:
    job = json.load(open(path))
    t_start = time.monotonic()
    runner = (VllmRunner if job["engine"] == "vllm" else SglangRunner)(job)
    load_s = time.monotonic() - t_start
    print("LOADED " + json.dumps({"load_s": load_s}), flush=True)
    runner.run(prompt(runner.vocab, 16, job["seed"]))    # warm-up: first-call allocations, lazy imports
    budget = job["budget_s"] - (time.monotonic() - t_start)
    last = None     # (context, seconds of one repetition)
    for ctx in sorted(job["contexts"]):
        if last is not None:    # a repetition costs at least what a shorter one did, scaled by length
            est = last[1] * (ctx / last[0]) * job["reps"]
            left = budget - (time.monotonic() - t_start - load_s)
            if est > left:
                print("SKIP " + json.dumps({"context": ctx, "estimate_s": round(est, 1), "left_s": round(left, 1)}),
                      flush=True)
                continue
        for rep in range(job["reps"]):
            t0, stamps = runner.run(prompt(runner.vocab, ctx, job["seed"] * 1000003 + ctx * 101 + rep))
            if len(stamps) < 2:
                raise RuntimeError(f"context {ctx}: {len(stamps)} tokens came back, wanted {job['decode_tokens'] + 1}")
            gaps = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])]
            row = {"context": ctx, "rep": rep, "ttft_s": stamps[0] - t0, "decode_ms": gaps}
            print("ROW " + json.dumps(row), flush=True)
            last = (ctx, stamps[-1] - t0)
    if hasattr(runner, "close"):
        runner.close()
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
