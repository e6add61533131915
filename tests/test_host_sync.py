"""deepseek_v32_plugin.host_sync.SyncGuard: what it catches, and the decode step's device path without syncs.

1. Every syncing pattern of issue 13 item 3, issued from a frame of plugin code, raises HostSyncError naming
   the op and the line; the same code in a naive.py reference or outside the plugin does not; tensors
   declared as host copies (and what is computed from them alone) are host work.
2. The decode step's device path (model/dsa.py select + attend on a decode-only plan, the FP8 routed experts
   on the padded layout) with DSV32_BACKEND=triton under the interpreter issues no sync and launches only
   Triton kernels for the heavy work; a `.item()` planted in dsa.py's select makes the same step fail.
The engines' own decode steps: integration_tests/{vllm,sglang}/test_*_no_sync.py.
"""
import os

import pytest
import torch

from deepseek_v32_plugin import host_sync
from deepseek_v32_plugin.host_sync import HostSyncError, SyncGuard
from deepseek_v32_plugin.model import dsa
from deepseek_v32_plugin.ops import PAGE_SIZE, fp8_moe, indexer, sparse_mla

PLUGIN = os.path.dirname(host_sync.__file__)
SYNCS = {
    "item": "x.sum().item()", "int": "int(x.argmax())", "bool": "bool(x[0] > 0)", "if": "1 if (x > 0).any() else 0",
    "nonzero": "x.nonzero()", "where1": "torch.where(x > 0)", "mask": "x[x > 0]", "mask_put": "x.__setitem__(x > 9, 0.0)",
    "masked_select": "x.masked_select(x > 0)", "unique": "torch.unique(x)", "bincount": "torch.bincount(x.long().abs())",
    "repeat_interleave": "torch.repeat_interleave(x, torch.tensor([1, 2, 1, 1, 1]))",
    "tolist": "x.tolist()", "cpu": "x.cpu()", "numpy": "x.numpy()", "to_cpu": "x.to('cpu')",
}
NO_SYNCS = {"sort": "x.sort()", "repeat_interleave_sized": "torch.repeat_interleave(x, torch.tensor([1, 2, 1, 1, 1]), output_size=6)",
            "to_device": "x.to(x.device)", "where3": "torch.where(x > 0, x, 0.0)", "index": "x[torch.tensor([0, 2])]"}


def _code_in(path: str, expr: str):
    """A function `run(x)` evaluating expr whose frame belongs to `path` (as if written in that file)."""
    ns = {"torch": torch}
    exec(compile(f"def run(x):\n    return {expr}\n", path, "exec"), ns)
    return ns["run"]


@pytest.mark.parametrize("name", sorted(SYNCS))
def test_guard_catches_syncs_in_plugin_code(name):
    x = torch.randn(5)
    run = _code_in(os.path.join(PLUGIN, "model", "dsa.py"), SYNCS[name])
    with pytest.raises(HostSyncError, match=r"model/dsa\.py:2 in run"):
        with SyncGuard():
            run(x)
    with SyncGuard(raise_on_sync=False) as g:        # a reference, or the engine's / a test's own code: recorded
        _code_in(os.path.join(PLUGIN, "ops", "fp8_moe", "naive.py"), SYNCS[name])(x)
        _code_in(os.path.abspath(__file__), SYNCS[name])(x)
    assert [k for k, _, _ in g.syncs] == ["reference", "other"], g.syncs


@pytest.mark.parametrize("name", sorted(NO_SYNCS))
def test_guard_passes_static_shape_code(name):
    with SyncGuard() as g:
        _code_in(os.path.join(PLUGIN, "model", "dsa.py"), NO_SYNCS[name])(torch.randn(5))
    assert not g.syncs and (g.ops["plugin"] >= 1 or name == "to_device")   # a no-op .to: no op at all


def test_declared_host_tensors_are_host_work():
    lens = torch.tensor([3, 5])
    run = _code_in(os.path.join(PLUGIN, "engines", "x.py"), "[int(v) for v in (x + 1).tolist()] + [int(x.max())]")
    with SyncGuard(host=[lens]):
        run(lens)
    with pytest.raises(HostSyncError):
        with SyncGuard():
            run(lens)


def _decode_step(w):
    """One decode step's device work for one layer: indexer select + sparse MLA attend on a decode-only plan
    (3 requests, one with a context <= topk), then the routed experts of the same 3 tokens."""
    p = dsa.plan([0, 1, 2, 3], [70, 9, 130], w["table"], w["slots"], w["topk"], decode_threshold=1)
    slots = dsa.select(p, w["k"], w["q_fp8"], w["weights"], w["icache"], w["topk"])
    out = dsa.attend(p, w["q576"], w["kv_c"], w["k_pe"], w["mcache"], slots, 0.1, 512)
    moe = fp8_moe.fp8_moe_experts(w["x"], w["w13"], w["s13"], w["w2"], w["s2"], w["topk_w"], w["topk_ids"])
    return out, moe


@pytest.fixture
def step_inputs(seed):
    from deepseek_v32_plugin.ops.fp8_quant import fp8_quant_weight
    g = torch.Generator().manual_seed(seed)
    pages, t, e, d, inter = 9, 3, 8, 256, 128
    table = torch.randperm(pages, generator=g).int().view(3, 3)
    pos = torch.tensor([69, 8, 129])
    icache = torch.zeros(pages, PAGE_SIZE, indexer.BYTES_PER_TOKEN, dtype=torch.uint8)
    mcache = torch.zeros(pages, PAGE_SIZE, sparse_mla.HEAD_576, dtype=torch.bfloat16)
    every = torch.arange(pages * PAGE_SIZE)
    indexer.indexer_k_quant_and_cache(torch.randn(len(every), 128, generator=g), icache, every, backend="torch")
    sparse_mla.mla_cache_write(torch.randn(len(every), 512, generator=g), torch.randn(len(every), 64, generator=g),
                               mcache, every, backend="torch")
    q_fp8, q_scale = indexer.indexer_quant(torch.randn(t, 4, 128, generator=g), backend="torch")

    def experts(n, k):
        qs = [fp8_quant_weight(torch.randn(n, k, generator=g) * 0.05) for _ in range(e)]
        return torch.stack([q for q, _ in qs]), torch.stack([s for _, s in qs])
    w13, s13 = experts(2 * inter, d)
    w2, s2 = experts(d, inter)
    return dict(table=table, slots=table[torch.arange(3), pos // PAGE_SIZE].long() * PAGE_SIZE + pos % PAGE_SIZE,
                topk=32, k=torch.randn(t, 128, generator=g), q_fp8=q_fp8,
                weights=(torch.randn(t, 4, generator=g) * q_scale).float(), icache=icache, mcache=mcache,
                q576=torch.randn(t, 2, sparse_mla.HEAD_576, generator=g).bfloat16(),
                kv_c=torch.randn(t, 512, generator=g).bfloat16(), k_pe=torch.randn(t, 64, generator=g).bfloat16(),
                x=torch.randn(t, d, generator=g), w13=w13, s13=s13, w2=w2, s2=s2,
                topk_w=torch.rand(t, 2, generator=g), topk_ids=torch.tensor([[0, 5], [5, 7], [2, -1]], dtype=torch.int32))


def test_decode_step_device_path_has_no_sync(step_inputs, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("DSV32_BACKEND", "triton")
    with SyncGuard() as g:     # the host plan is built inside the guard too: it reads only host ints
        out, moe = _decode_step(step_inputs)
    assert not g.plugin_syncs(), g.syncs    # (first use imports the Triton modules: their import-time work is 'other')
    assert out.isfinite().all() and moe.isfinite().all()
    assert set(g.launches) == {"_indexer_quant_kernel", "_fp8_paged_logits_kernel", "_topk_kernel",
                               "_indices_to_slots_kernel", "_mla_cache_write_kernel", "_sparse_mla_attn_kernel",
                               "_fp8_quant_act_kernel", "_grouped_gemm_contiguous_kernel", "_silu_mul_quant_kernel"}


def test_planted_item_in_the_decode_path_fails(step_inputs, monkeypatch):
    """A `.item()` added to dsa.select (a frame of model/dsa.py) is caught in the same step."""
    pytest.importorskip("triton")
    monkeypatch.setenv("DSV32_BACKEND", "triton")
    real = dsa.select
    ns = {"real": real}
    exec(compile("def select(p, k, *a, **kw):\n    if k.abs().max().item() > 1e30:\n        pass\n"
                 "    return real(p, k, *a, **kw)\n", dsa.__file__, "exec"), ns)
    monkeypatch.setattr(dsa, "select", ns["select"])
    with pytest.raises(HostSyncError, match=r"_local_scalar_dense at deepseek_v32_plugin/model/dsa\.py:2 in select"):
        with SyncGuard():
            _decode_step(step_inputs)
