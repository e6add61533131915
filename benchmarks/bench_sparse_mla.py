"""Time the Triton sparse-MLA kernels (a sweep beyond benchmarks/gpu_check's anchor rows; run alone: python benchmarks/bench_sparse_mla.py).

FLOPs follow FlashMLA: 2 * rows * h * topk * (576 + 512) (QK over 576, PV over 512) with rows = b * s_q
(decode) or s_q (prefill). Bytes: the gathered latent rows (656 B FP8 / 1152 B bf16 per index, an upper
bound: duplicate rows across heads are read once per row), q (bf16) and out (bf16) + lse.
Anchor (FACTS.md): FlashMLA sparse decode FP8 410 TFLOPS at b=128, s_q=2, h=128, topk=2048 (H800);
sparse prefill 640 TFLOPS (H800).
`run_cuda(h)`: the CUDA extension (ops/sparse_mla/cuda.py) vs the Triton kernel, a row per backend (run alone:
both sweeps).
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Harness, cuda_vs_triton_backends, try_bench  # noqa: E402

from deepseek_v32_plugin.ops import sparse_mla as ops  # noqa: E402
from deepseek_v32_plugin.ops.sparse_mla import naive  # noqa: E402

PAGE = 64
SCALE = 576 ** -0.5
REF_LIMIT = 6 << 30   # skip the torch reference when its gathered fp32 kv would exceed this many bytes


def _flops(rows, h, topk):
    return 2.0 * rows * h * topk * (576 + 512)


def _decode_inputs(b, s_q, h, topk, ctx, fp8):
    """A paged cache with ctx tokens per sequence (pages shuffled), top-k distinct slots per query row."""
    pages_per_seq = ctx // PAGE
    n_pages = b * pages_per_seq
    dev = "cuda"
    if fp8:
        cache = torch.empty(n_pages, PAGE, 656, dtype=torch.uint8, device=dev)
    else:
        cache = torch.empty(n_pages, PAGE, 576, dtype=torch.bfloat16, device=dev)
    n = n_pages * PAGE
    kv_c = torch.randn(n, 512, device=dev, dtype=torch.bfloat16)
    k_pe = torch.randn(n, 64, device=dev, dtype=torch.bfloat16)
    ops.mla_cache_write(kv_c, k_pe, cache, torch.arange(n, device=dev, dtype=torch.int64), backend="triton")
    del kv_c, k_pe
    table = torch.randperm(n_pages, device=dev).view(b, pages_per_seq)
    pos = torch.rand(b * s_q, ctx, device=dev).topk(topk, dim=-1).indices.view(b, s_q, topk)      # distinct
    slots = table.gather(1, (pos // PAGE).view(b, -1)).view(b, s_q, topk) * PAGE + pos % PAGE
    q = torch.randn(b, s_q, h, 576, device=dev, dtype=torch.bfloat16)
    return q, cache, slots.int()


# DSV32_BENCH_SWEEP=1: also time candidate launch configs of the headline shape (via DSV32_MLA_ATTN_CONFIG)
SWEEP = [dict(BLOCK_T=64, num_stages=1), dict(BLOCK_T=16, num_stages=3), dict(BLOCK_T=32, num_stages=3),
         dict(BLOCK_T=32, num_stages=1), dict(BLOCK_H=32, BLOCK_T=64, num_warps=4, num_stages=2)]


def _sweep(h: Harness):
    b, s_q, nh, topk, ctx = 128, 2, 128, 2048, 8192
    for cfg in SWEEP:
        os.environ["DSV32_MLA_ATTN_CONFIG"] = json.dumps(cfg)
        try:
            h.bench(f"sweep decode fp8 b={b} s_q={s_q} h={nh} topk={topk}",
                    lambda q, c, i: ops.sparse_mla_decode(q, c, i, SCALE, backend="triton"),
                    lambda: _decode_inputs(b, s_q, nh, topk, ctx, True), flops=_flops(b * s_q, nh, topk),
                    roof="bf16", note=json.dumps(cfg))
        except Exception as e:  # a config that does not compile (e.g. out of shared memory) is reported, not fatal
            print(f"sweep {cfg}: {type(e).__name__}: {str(e)[:200]}", flush=True)
        finally:
            os.environ.pop("DSV32_MLA_ATTN_CONFIG", None)


def run(h: Harness):
    if os.environ.get("DSV32_BENCH_SWEEP"):
        _sweep(h)
    for b, s_q, nh, topk, ctx, fp8 in [(128, 2, 128, 2048, 8192, True), (128, 2, 128, 2048, 8192, False),
                                       (64, 1, 128, 2048, 32768, True), (4, 1, 128, 2048, 16384, True),
                                       (1, 1, 16, 2048, 16384, True), (128, 1, 16, 2048, 8192, True)]:
        row_bytes = 656 if fp8 else 1152
        nbytes = b * s_q * (topk * row_bytes + nh * (576 * 2 + 512 * 2 + 4))

        def make(b=b, s_q=s_q, nh=nh, topk=topk, ctx=ctx, fp8=fp8):
            return _decode_inputs(b, s_q, nh, topk, ctx, fp8)

        big_ref = b * s_q * topk * 576 * 4 * 3 > REF_LIMIT
        h.bench(f"decode {'fp8' if fp8 else 'bf16'} b={b} s_q={s_q} h={nh} topk={topk}",
                lambda q, c, i: ops.sparse_mla_decode(q, c, i, SCALE, backend="triton"), make,
                flops=_flops(b * s_q, nh, topk), bytes=nbytes, roof="bf16",
                ref=None if big_ref else (lambda q, c, i: naive.naive_sparse_mla_decode(q, c, i, SCALE)),
                anchor="FlashMLA FP8 410 TFLOPS (H800)" if (fp8 and b == 128 and s_q == 2 and nh == 128) else "")

    for s_q, nh, topk, s_kv in [(4096, 128, 2048, 8192), (1024, 128, 2048, 4096)]:
        def make_p(s_q=s_q, nh=nh, topk=topk, s_kv=s_kv):
            q = torch.randn(s_q, nh, 576, device="cuda", dtype=torch.bfloat16)
            kv = torch.randn(s_kv, 1, 576, device="cuda", dtype=torch.bfloat16)
            idx = torch.rand(s_q, s_kv, device="cuda").topk(topk, dim=-1).indices.int().view(s_q, 1, topk)
            return q, kv, idx

        big_ref = s_q * topk * 576 * 4 * 3 > REF_LIMIT
        h.bench(f"prefill bf16 s_q={s_q} h={nh} topk={topk}",
                lambda q, kv, i: ops.sparse_mla_prefill(q, kv, i, SCALE, backend="triton"), make_p,
                flops=_flops(s_q, nh, topk), bytes=s_q * (topk * 1152 + nh * (576 + 512) * 2), roof="bf16",
                ref=None if big_ref else (lambda q, kv, i: naive.naive_sparse_mla_prefill(q, kv, i, SCALE)),
                anchor="FlashMLA sparse prefill 640 TFLOPS (H800)" if s_q == 4096 else "")

    for t, fp8 in [(16384, True), (16384, False)]:
        def make_w(t=t, fp8=fp8):
            n_pages = 2 * t // PAGE
            cache = (torch.zeros(n_pages, PAGE, 656, dtype=torch.uint8, device="cuda") if fp8 else
                     torch.zeros(n_pages, PAGE, 576, dtype=torch.bfloat16, device="cuda"))
            slots = torch.randperm(n_pages * PAGE, device="cuda")[:t]
            return (torch.randn(t, 512, device="cuda", dtype=torch.bfloat16),
                    torch.randn(t, 64, device="cuda", dtype=torch.bfloat16), cache, slots)

        h.bench(f"mla_cache_write {'fp8' if fp8 else 'bf16'} T={t}",
                lambda c, p, cache, s: ops.mla_cache_write(c, p, cache, s, backend="triton"), make_w,
                bytes=t * (576 * 2 + 8 + (656 if fp8 else 1152)), roof="bf16",
                ref=lambda c, p, cache, s: naive.naive_mla_cache_write(c, p, cache, s))


# ------------------------------------------------ CUDA extension vs Triton (sparse MLA decode, fp8 and bf16 caches) ----
TAG = "bench_sparse_mla"


def run_cuda(h, backends=None):
    """The CUDA extension vs the Triton kernel, one row per (shape, backend) with the FACTS.md anchors
    (H800 ~ H100 SXM); `x torch ref` against the plain-PyTorch reference."""
    backends = cuda_vs_triton_backends(TAG) if backends is None else backends
    if not backends:
        return
    from deepseek_v32_plugin.ops import sparse_mla
    from deepseek_v32_plugin.ops.sparse_mla import naive as mla
    h.section("sparse MLA decode (CUDA ext vs Triton)")
    for fp8 in (True, False):
        for b, s_q, heads, topk in [(128, 2, 128, 2048), (64, 1, 128, 2048), (32, 1, 16, 2048)]:
            tokens = 65536

            def make(b=b, s_q=s_q, heads=heads, topk=topk, fp8=fp8):
                pages = tokens // 64
                if fp8:
                    cache = torch.randint(0, 120, (pages, 64, 656), dtype=torch.uint8, device="cuda")
                    cache[..., 512:528].view(torch.float32).fill_(0.01)
                    cache[..., 528:].view(torch.bfloat16).normal_()
                else:
                    cache = torch.randn(pages, 64, 576, device="cuda").to(torch.bfloat16)
                q = torch.randn(b, s_q, heads, 576, device="cuda").to(torch.bfloat16)
                idx = torch.randint(0, tokens, (b, s_q, topk), dtype=torch.int32, device="cuda")
                return q, cache, idx, 576 ** -0.5
            flops = 2.0 * b * s_q * heads * topk * (576 + 512)
            nbytes = b * s_q * topk * (656 if fp8 else 1152) + b * s_q * heads * (576 + 512) * 2
            for be in backends:
                try_bench(h, TAG, f"{'fp8' if fp8 else 'bf16'} b{b} sq{s_q} h{heads} k{topk}", be,
                          lambda *a, be=be: sparse_mla.sparse_mla_decode(*a, backend=be), make, flops=flops, bytes=nbytes,
                          ref=mla.naive_sparse_mla_decode if b * s_q <= 64 else None,
                          anchor="FlashMLA sparse fp8 410 TFLOPS (b128 h128 sq2)" if fp8 else "", roof="bf16")

    # prefill: "cuda" is the sm_90a wgmma kernel on Hopper (sm80 elsewhere); "cuda-sm80" forces the mma.sync
    # one there (DSV32_CUDA_MLA=sm80, read per call), so both kernels get a row on an H100.
    h.section("sparse MLA prefill (CUDA ext vs Triton)")
    pf_backends = list(backends)
    if "cuda" in backends and torch.cuda.get_device_capability() == (9, 0):
        pf_backends.insert(1, "cuda-sm80")
    for s_q, heads, topk, s_kv in [(4096, 128, 2048, 8192), (4096, 64, 2048, 8192), (4096, 16, 2048, 8192)]:
        def make_p(s_q=s_q, heads=heads, topk=topk, s_kv=s_kv):
            q = torch.randn(s_q, heads, 576, device="cuda").to(torch.bfloat16)
            kv = torch.randn(s_kv, 1, 576, device="cuda").to(torch.bfloat16)
            idx = torch.rand(s_q, s_kv, device="cuda").topk(topk, dim=-1).indices.int().view(s_q, 1, topk)
            return q, kv, idx, 576 ** -0.5
        flops = 2.0 * s_q * heads * topk * (576 + 512)
        nbytes = s_q * topk * 1152 + s_q * heads * (576 + 512) * 2
        for be in pf_backends:
            try_bench(h, TAG, f"prefill bf16 sq{s_q} h{heads} k{topk}", be,
                      lambda *a, be=be: _prefill_as(be, *a), make_p, flops=flops, bytes=nbytes,
                      anchor="FlashMLA sparse prefill 640 TFLOPS (H800, h128)" if heads == 128 else "", roof="bf16")


def _prefill_as(backend, *args):
    from deepseek_v32_plugin.ops import sparse_mla
    if backend != "cuda-sm80":
        return sparse_mla.sparse_mla_prefill(*args, backend=backend)
    prev = os.environ.get("DSV32_CUDA_MLA")
    os.environ["DSV32_CUDA_MLA"] = "sm80"
    try:
        return sparse_mla.sparse_mla_prefill(*args, backend="cuda")
    finally:
        if prev is None:
            del os.environ["DSV32_CUDA_MLA"]
        else:
            os.environ["DSV32_CUDA_MLA"] = prev


if __name__ == "__main__":
    harness = Harness()
    harness.section("sparse_mla")
    run(harness)
    run_cuda(harness)
    harness.print_table()
