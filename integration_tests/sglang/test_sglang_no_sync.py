"""Decode steps in SGLang with our Triton kernels issue no host sync from plugin code (issue 13 item 3).

The real engine (scheduler process, our attention backend, SGLang's FusedMoE routing into our FP8 experts)
serves the tiny checkpoint with every op on the Triton backend under the interpreter (DSV32_BACKEND=triton)
and DSV32_SYNC_REPORT: each decode forward runs inside deepseek_v32_plugin.host_sync.SyncGuard, which
records every syncing aten op (`.item()`, `nonzero`, boolean-mask indexing, ...) and host copy with the
frame that issued it, and writes one line per decode step; no step may hold a sync issued by plugin code
outside the naive.py references. (Recording, not raising: SGLang answers a scheduler exception by killing
the process tree, pytest included.) tests/test_host_sync.py shows a planted `.item()` in the decode path is
caught. The SGLang backend's init_forward_metadata runs before the model forward, outside this check.
Prompts longer than index_topk so decode runs the real top-k selection; greedy output == the reference
(the scheduler process loads tests/triton_interp_patch.py through a sitecustomize on PYTHONPATH: the
interpreter's bf16 dot and float casts are wrong without it).
"""
import json
import os

import pytest

from conftest import ENGINE_KW, check_greedy_against, prompt_ids

# prefill-only ops (ragged indexer logits, key gather) on the references: the interpreter's prefill is slow
ENV = {"TRITON_INTERPRET": "1", "DSV32_CPU_TRITON": "1", "DSV32_BACKEND": "triton",
       "DSV32_BACKEND_FP8_INDEXER_LOGITS": "torch", "DSV32_BACKEND_INDEXER_CACHE_GATHER": "torch"}


def test_decode_steps_issue_no_host_sync(tiny_ckpt, ref_bf16, monkeypatch, tmp_path):
    pytest.importorskip("triton")
    import sglang
    report = tmp_path / "sync.jsonl"
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests")
    (tmp_path / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {tests!r})\nimport triton_interp_patch\ntriton_interp_patch.apply()\n")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    for k, v in dict(ENV, DSV32_SYNC_REPORT=str(report), PYTHONPATH=path).items():
        monkeypatch.setenv(k, v)   # inherited by the scheduler process
    ids = [prompt_ids(34, seed=51), prompt_ids(36, seed=52)]
    eng = sglang.Engine(model_path=tiny_ckpt, **ENGINE_KW)
    try:
        outs = eng.generate(input_ids=ids, sampling_params={"max_new_tokens": 3, "temperature": 0.0})
    finally:
        eng.shutdown()
    monkeypatch.undo()
    steps = [json.loads(ln) for ln in report.read_text().splitlines()]
    assert len(steps) >= 2, steps                       # the decode steps were checked
    assert any(s["tag"] == "sglang T=2" for s in steps), [s["tag"] for s in steps]
    assert all(s["launches"] for s in steps)            # our Triton kernels served them
    bad = [(s["tag"], x) for s in steps for x in s["syncs"] if x[0] == "plugin"]
    assert not bad, bad
    for p, o in zip(ids, outs):
        assert len(o["output_ids"]) == 3
        check_greedy_against(ref_bf16, p, o["output_ids"], info=len(p))
