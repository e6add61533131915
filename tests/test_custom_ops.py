"""ops/custom_ops.py: every torch custom op equals its public op bit for bit, passes torch.library.opcheck
(schema, fake implementation, mutation declarations), and stays one opaque node under torch.compile."""
import pytest
import torch

from deepseek_v32_plugin.ops import PAGE_SIZE, custom_ops, fp8_moe, fp8_quant, indexer, sparse_mla
from deepseek_v32_plugin.ops.indexer import BYTES_PER_TOKEN
from deepseek_v32_plugin.ops.sparse_mla import HEAD_576

T, H, PAGES, TOPK = 6, 4, 3, 16


def _inputs():
    icache = torch.zeros(PAGES, PAGE_SIZE, BYTES_PER_TOKEN, dtype=torch.uint8)
    mcache = torch.zeros(PAGES, PAGE_SIZE, HEAD_576, dtype=torch.bfloat16)
    every = torch.arange(PAGES * PAGE_SIZE)
    indexer.indexer_k_quant_and_cache(torch.randn(len(every), 128), icache, every)
    sparse_mla.mla_cache_write(torch.randn(len(every), 512), torch.randn(len(every), 64), mcache, every)
    q_fp8, q_scale = indexer.indexer_quant(torch.randn(T, H, 128))
    slots = torch.randperm(PAGES * PAGE_SIZE)[:T]
    table = torch.randperm(PAGES).int()[None].expand(T, -1).contiguous()
    ctx = torch.tensor([70, 100, 150, 30, 64, 1], dtype=torch.int32)
    return dict(icache=icache, mcache=mcache, q_fp8=q_fp8, w=(torch.randn(T, H) * q_scale).float(), slots=slots,
                table=table, ctx=ctx)


def _cases():
    """(name, custom op, public op, args, kwargs-free) for every op."""
    x = _inputs()
    k_fp8, k_scale = indexer.indexer_cache_gather(x["icache"], torch.arange(100))
    logits = torch.randn(T, 100)
    ks, ke = torch.zeros(T, dtype=torch.int32), torch.tensor([5, 20, 40, 100, 64, 1], dtype=torch.int32)
    idx = torch.randint(-1, PAGES * PAGE_SIZE, (T, TOPK), dtype=torch.int32)
    q576 = torch.randn(1, T, H, HEAD_576).bfloat16()
    e, d, inter = 4, 128, 128
    w13, w13s = fp8_quant.fp8_quant_weight(torch.randn(e * 2 * inter, d) * 0.05)
    w2, w2s = fp8_quant.fp8_quant_weight(torch.randn(e * d, inter) * 0.05)
    moe = (torch.randn(T, d), w13.view(e, 2 * inter, d), w13s.view(e, -1, 1), w2.view(e, d, inter), w2s.view(e, -1, 1),
           torch.rand(T, 2), torch.randint(0, e, (T, 2), dtype=torch.int32))
    return [
        ("fp8_quant_act", custom_ops.fp8_quant_act, fp8_quant.fp8_quant_act, (torch.randn(T, 256),)),
        ("indexer_quant", custom_ops.indexer_quant, indexer.indexer_quant, (torch.randn(T, H, 128),)),
        ("indexer_k_quant_and_cache", custom_ops.indexer_k_quant_and_cache, indexer.indexer_k_quant_and_cache,
         (torch.randn(T, 128), x["icache"], x["slots"])),
        ("indexer_cache_gather", custom_ops.indexer_cache_gather, indexer.indexer_cache_gather,
         (x["icache"], x["slots"])),
        ("fp8_indexer_logits", custom_ops.fp8_indexer_logits, indexer.fp8_indexer_logits,
         (x["q_fp8"], k_fp8, k_scale, x["w"], ks, ke)),
        ("fp8_paged_indexer_logits", custom_ops.fp8_paged_indexer_logits, indexer.fp8_paged_indexer_logits,
         (x["q_fp8"].view(T, 1, H, 128), x["icache"], x["w"], x["ctx"], x["table"], PAGES * PAGE_SIZE)),
        ("indexer_topk", custom_ops.indexer_topk, indexer.indexer_topk, (logits, TOPK, ks, ke)),
        ("indices_to_slots", custom_ops.indices_to_slots, indexer.indices_to_slots,
         (idx.clamp_max(PAGES * PAGE_SIZE - 1), x["table"])),
        ("mla_cache_write", custom_ops.mla_cache_write, sparse_mla.mla_cache_write,
         (torch.randn(T, 512), torch.randn(T, 64), x["mcache"], x["slots"])),
        ("sparse_mla_decode", custom_ops.sparse_mla_decode, sparse_mla.sparse_mla_decode,
         (q576, x["mcache"], idx[None], 0.1)),
        ("sparse_mla_prefill", custom_ops.sparse_mla_prefill, sparse_mla.sparse_mla_prefill,
         (q576[0], torch.randn(40, 1, HEAD_576).bfloat16(), idx[:, None].clamp_max(39), 0.1)),
        ("fp8_moe_experts", custom_ops.fp8_moe_experts, fp8_moe.fp8_moe_experts, moe),
    ]


def _clone(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


CASES = [c[0] for c in _cases()]


@pytest.mark.parametrize("name", CASES)
def test_custom_op_equals_public_op_and_passes_opcheck(name):
    _, op, public, args = next(c for c in _cases() if c[0] == name)
    a, b = _clone(args), _clone(args)
    got, want = op(*a), public(*b)
    flat = lambda r: r if isinstance(r, tuple) else (r,)  # noqa: E731
    for g, w in zip(flat(got), flat(want)):
        if g is None:
            continue
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g.view(torch.uint8) if g.dtype == fp8_quant.FP8_DTYPE else g,
                           w.view(torch.uint8) if w.dtype == fp8_quant.FP8_DTYPE else w), name
    for x, y in zip(a, b):   # mutated caches equal too
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), name
    # schema + declared mutations, fake (meta) shapes/dtypes, AOT dispatch; torch's schema check compares
    # inputs with arithmetic fp8 lacks: the fp8-input ops (logits, MoE; they write nothing) get the other checks
    utils = ["test_schema", "test_faketensor", "test_aot_dispatch_dynamic"]
    if any(isinstance(t, torch.Tensor) and t.dtype == fp8_quant.FP8_DTYPE for t in args):
        utils.remove("test_schema")
    torch.library.opcheck(getattr(torch.ops.dsv32, name).default, _clone(args), test_utils=utils)


def test_compiled_graph_keeps_ops_opaque():
    """dynamo traces a function calling our ops without a graph break and keeps each op as one node."""
    seen = []

    def backend(gm, example_inputs):
        seen.append(gm)
        return gm.forward

    def f(x, w):
        q_fp8, scale = custom_ops.indexer_quant(x)
        return q_fp8.float().sum(-1) * scale * w

    x, w = torch.randn(T, H, 128), torch.randn(T, H)
    torch._dynamo.reset()
    out = torch.compile(f, backend=backend, fullgraph=True, dynamic=True)(x, w)
    assert torch.equal(out, f(x, w))
    targets = [str(n.target) for n in seen[0].graph.nodes if n.op == "call_function"]
    assert "dsv32.indexer_quant.default" in targets, targets
