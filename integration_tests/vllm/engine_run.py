"""Run one vLLM engine (in a fresh process) on a JSON job and print one JSON line of results.

  python engine_run.py JOB.json  ->  stdout line "RESULT {...}"
JOB: {"model": dir, "engine": {LLM kwargs}, "requests": [{"prompt_token_ids": [...], "prompt_logprobs": bool (default true)}, ...],
      "max_tokens": int, "batch": "together" | "single", "sync_report": path (optional: DSV32_SYNC_REPORT, the
      plugin's host-sync check of every decode forward, one JSON line per step; deepseek_v32_plugin/host_sync.py)}
Results: {"requests": [...], "metrics": {spec-decode counters}, "runner": the model runner's module}; per request: generated token ids, the prompt logprob of each actual prompt token (None at 0),
the logprob of each generated token, and num_cached_tokens (prefix-cache hit size).
"""
import json
import os
import sys


def main(path: str) -> None:
    job = json.load(open(path))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if job.get("sync_report"):   # read when the plugin is imported (below, by vLLM's plugin loading)
        os.environ["DSV32_SYNC_REPORT"] = job["sync_report"]
    from vllm import LLM, SamplingParams

    if job.get("capture_metadata"):
        _capture_metadata(job["capture_metadata"])
    if job.get("capture_mtp"):
        _capture_first_mtp_step(job["capture_mtp"])
    # eager unless the job asks for vLLM's compilation ("enforce_eager": false)
    llm = LLM(model=job["model"], seed=0, disable_log_stats=False, **{"enforce_eager": True, **job["engine"]})
    runner = llm.collective_rpc(_model_runner_module)[0]
    # vLLM skips prefix-cache lookups for requests asking for prompt logprobs: make them per request
    sps = [SamplingParams(max_tokens=job.get("max_tokens", 8), temperature=0.0, detokenize=False, logprobs=0,
                          ignore_eos=job.get("ignore_eos", False),
                          prompt_logprobs=0 if r.get("prompt_logprobs", True) else None) for r in job["requests"]]
    prompts = [{"prompt_token_ids": r["prompt_token_ids"]} for r in job["requests"]]
    if job.get("batch", "together") == "together":
        outs = llm.generate(prompts, sps, use_tqdm=False)
    else:   # one request at a time (e.g. so a later one hits the prefix cache of an earlier one)
        outs = [llm.generate([p], [sp], use_tqdm=False)[0] for p, sp in zip(prompts, sps)]
    res = []
    for p, o in zip(prompts, outs):
        ids = p["prompt_token_ids"]
        plp = None
        if o.prompt_logprobs is not None:
            plp = [None] + [o.prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))]
        c = o.outputs[0]
        glp = [c.logprobs[i][t].logprob for i, t in enumerate(c.token_ids)] if c.logprobs else None
        res.append({"token_ids": list(c.token_ids), "prompt_logprobs": plp, "logprobs": glp,
                    "num_cached_tokens": o.num_cached_tokens or 0})
    metrics = {}
    from torch._dynamo.utils import counters   # what dynamo traced in this (in-process) engine
    metrics["dynamo_graphs"] = counters["stats"]["unique_graphs"]
    metrics["dynamo_graph_breaks"] = sum(counters["graph_break"].values())
    cc = llm.llm_engine.vllm_config.compilation_config
    metrics["compilation"] = f"{cc.mode.name}/{cc.backend}"
    for m in llm.get_metrics():
        if m.name.startswith("vllm:spec_decode_num_") and hasattr(m, "value"):
            metrics[m.name] = m.value
    if job.get("capture_metadata"):
        import torch
        from deepseek_v32_plugin.engines.vllm import backend
        torch.save(backend.CAPTURE.batches, job["capture_metadata"])
    print("RESULT " + json.dumps({"requests": res, "metrics": metrics, "runner": runner}), flush=True)


def _model_runner_module(worker) -> str:
    """Which vLLM model runner the worker built: V1 (v1/worker/cpu_model_runner) or v2 (v1/worker/cpu/)."""
    return type(worker.model_runner).__module__


def _capture_metadata(path: str) -> None:
    """Record (CPU copies of) every distinct DSAPlan the builder makes (in-process engines only)."""
    import copy
    from deepseek_v32_plugin.engines.vllm import backend

    class Recorder:
        def __init__(self):
            self.batches, self._last = [], None

        def __call__(self, md):
            key = (md.num_tokens, md.slot_mapping.tolist())
            if key != self._last:   # one plan per step; the MTP draft's builder may see the same batch
                self._last = key
                self.batches.append(copy.deepcopy(md))

    backend.CAPTURE = Recorder()


def _capture_first_mtp_step(path: str) -> None:
    """Save the MTP draft module's first step (inputs and logits) to `path` (in-process engines only)."""
    import torch
    from deepseek_v32_plugin.engines.vllm.mtp import DeepseekV32MTP

    fwd, logits_fn, seen = DeepseekV32MTP.forward, DeepseekV32MTP.compute_logits, {}

    def forward(self, input_ids, positions, hidden_states, *a, **kw):
        out = fwd(self, input_ids, positions, hidden_states, *a, **kw)
        if "inputs" not in seen:
            seen["inputs"] = (input_ids.clone(), positions.clone(), hidden_states.float().clone())
        return out

    def compute_logits(self, hidden_states, *a, **kw):
        out = logits_fn(self, hidden_states, *a, **kw)
        if "logits" not in seen and "inputs" in seen:
            seen["logits"] = out.float().clone()
            ids, pos, hid = seen["inputs"]
            torch.save({"input_ids": ids, "positions": pos, "hidden": hid, "logits": seen["logits"]}, path)
        return out

    DeepseekV32MTP.forward, DeepseekV32MTP.compute_logits = forward, compute_logits


if __name__ == "__main__":
    main(sys.argv[1])
