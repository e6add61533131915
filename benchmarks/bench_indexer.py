"""Time the Triton indexer kernels (a sweep beyond benchmarks/gpu_check's anchor rows; run alone: python benchmarks/bench_indexer.py).

Bytes/FLOPs counted up front (each input read once, each output written once):
  paged decode logits  bytes = B * ctx * 132 (the key cache: issue target >= 80% of copy bandwidth)
                       flops = 2 * B * next_n * ctx * H * 128
  prefill logits       flops = 2 * H * 128 * sum_rows(ke - ks)
  top-k                bytes = R * N * 4 (target: <= 20 us at 64 x 128K, topk 2048)
`run_cuda(h)`: the CUDA extension (ops/indexer/cuda.py) vs the Triton kernel, a row per backend (run alone:
both sweeps).
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Harness, cuda_vs_triton_backends, randn_fp8, try_bench  # noqa: E402

from deepseek_v32_plugin.ops import indexer as ops  # noqa: E402
from deepseek_v32_plugin.ops.indexer import naive  # noqa: E402

D, PAGE, H = 128, 64, 64
FP8 = torch.float8_e4m3fn


def _rand_fp8(*shape):
    return (torch.randn(*shape, device="cuda") * 40).clamp(-448, 448).to(FP8)


def bench_topk(h: Harness):
    for r, n, anchor in ((64, 131072, "target <= 20 us; vLLM 21.8 us @4x128K"),
                         (4, 131072, "vLLM 21.8 us"),
                         (64, 9295, "TRT-LLM 14.3 us (torch.topk 106 us)"),
                         (1, 163840, "")):
        def make(r=r, n=n):
            lg = torch.randn(r, n, device="cuda")
            return (lg, torch.zeros(r, dtype=torch.int32, device="cuda"), torch.full((r,), n, dtype=torch.int32, device="cuda"))
        h.bench(f"topk2048 R={r} N={n}", lambda lg, ks, ke: ops.indexer_topk(lg, 2048, ks, ke, backend="triton"), make,
                bytes=r * n * 4 + r * 2048 * 4, ref=lambda lg, ks, ke: torch.topk(lg, 2048, dim=-1), anchor=anchor,
                roof="bf16")


def bench_paged_logits(h: Harness):
    for b, ctx, next_n in ((64, 131072, 1), (64, 131072, 2), (32, 65536, 4), (128, 8192, 1)):
        pages = b * ctx // PAGE

        def make(b=b, ctx=ctx, next_n=next_n, pages=pages):
            cache = torch.randint(0, 256, (pages, PAGE, D + 4), dtype=torch.uint8, device="cuda")
            cache.view(pages, -1)[:, PAGE * D:].view(torch.float32).uniform_(1e-3, 1e-2)   # finite scales
            vals = cache.view(pages, -1)[:, :PAGE * D]
            vals.masked_fill_((vals & 0x7F) == 0x7F, 0x3C)                                   # no NaN codes
            bt = torch.randperm(pages, device="cuda").to(torch.int32).view(b, ctx // PAGE)
            cl = torch.full((b,), ctx, dtype=torch.int32, device="cuda")
            return (_rand_fp8(b, next_n, H, D), cache, torch.randn(b * next_n, H, device="cuda"), cl, bt)
        fn = lambda q, c, w, cl, bt, ctx=ctx: ops.fp8_paged_indexer_logits(q, c, w, cl, bt, ctx, backend="triton")  # noqa: E731
        ref = (lambda q, c, w, cl, bt, ctx=ctx: naive.naive_fp8_paged_indexer_logits(q, c, w, cl, bt, ctx)) \
            if b * ctx <= 64 * 131072 else None
        h.bench(f"paged logits B={b} ctx={ctx} next_n={next_n} H={H}", fn, make,
                flops=2.0 * b * next_n * ctx * H * D, bytes=b * ctx * (D + 4) + b * next_n * ctx * 4, ref=ref,
                anchor="target >= 80% copy BW; DeepGEMM next_n<=2", roof="fp8")


def bench_prefill_logits(h: Harness):
    for s, n in ((4096, 4096), (8192, 8192), (2048, 32768)):
        def make(s=s, n=n):
            ke = torch.arange(n - s + 1, n + 1, dtype=torch.int32, device="cuda")
            ks = torch.zeros(s, dtype=torch.int32, device="cuda")
            return (_rand_fp8(s, H, D), _rand_fp8(n, D), torch.rand(n, device="cuda") * 0.01,
                    torch.randn(s, H, device="cuda"), ks, ke)
        pairs = sum(range(n - s + 1, n + 1))
        h.bench(f"prefill logits S={s} N={n} causal H={H}",
                lambda *a: ops.fp8_indexer_logits(*a, backend="triton"), make,
                flops=2.0 * H * D * pairs, bytes=s * H * D + n * (D + 4) + s * n * 4,
                ref=(lambda *a: naive.naive_fp8_indexer_logits(*a)) if s * n * H * 4 <= (8 << 30) else None,  # [S,H,N] fp32
                anchor="DeepGEMM fp8_mqa_logits ~1.0-1.1 PFLOPS")


def bench_quant(h: Harness):
    for t in (4096, 16384):
        def make(t=t):
            return (torch.randn(t, H, D, device="cuda", dtype=torch.bfloat16),)
        h.bench(f"indexer_quant q T={t} H={H} (Hadamard+FP8)", lambda x: ops.indexer_quant(x, True, backend="triton"),
                make, flops=3 * 2.0 * t * H * D * D, bytes=t * H * (2 * D + D + 4),
                ref=lambda x: naive.naive_indexer_quant(x, True), roof="bf16")

    def make_k(t=16384, pages=16384 * 2 // PAGE):
        cache = torch.randint(0, 256, (pages, PAGE, D + 4), dtype=torch.uint8, device="cuda")
        return (torch.randn(t, D, device="cuda", dtype=torch.bfloat16), cache,
                torch.randperm(pages * PAGE, device="cuda")[:t].to(torch.int64))
    h.bench("k_quant_and_cache T=16384", lambda k, c, s: ops.indexer_k_quant_and_cache(k, c, s, backend="triton"), make_k,
            bytes=16384 * (2 * D + D + 4 + 8), ref=lambda k, c, s: naive.naive_indexer_k_quant_and_cache(k, c, s),
            roof="bf16")


def run(h: Harness):
    bench_topk(h)
    bench_paged_logits(h)
    bench_prefill_logits(h)
    bench_quant(h)


# ------------------------------------------------ CUDA extension vs Triton (paged / prefill logits and top-k 2048) ----
TAG = "bench_indexer"


def run_cuda(h, backends=None):
    """The CUDA extension vs the Triton kernel, one row per (shape, backend) with the FACTS.md anchors
    (H800 ~ H100 SXM); `x torch ref` against the plain-PyTorch reference."""
    backends = cuda_vs_triton_backends(TAG) if backends is None else backends
    if not backends:
        return
    from deepseek_v32_plugin.ops import indexer
    from deepseek_v32_plugin.ops.indexer import naive as ix
    h.section("indexer (CUDA ext vs Triton)")
    for b, next_n, ctx in [(64, 1, 32768), (128, 2, 8192), (8, 1, 131072)]:
        h_ = 64
        pages = b * ctx // 64

        def make(b=b, next_n=next_n, ctx=ctx, pages=pages):
            cache = torch.randint(0, 255, (pages, 64, 132), dtype=torch.uint8, device="cuda")
            cache.view(pages, -1)[:, 8192:].view(torch.float32).fill_(0.01)
            table = torch.randperm(pages, device="cuda").int().view(b, ctx // 64)
            q = randn_fp8((b, next_n, h_, 128))
            w = torch.randn(b * next_n, h_, device="cuda")
            lens = torch.full((b,), ctx, dtype=torch.int32, device="cuda")
            return q, cache, w, lens, table, ctx
        flops = 2.0 * b * next_n * h_ * 128 * ctx
        nbytes = b * ctx * 132 + b * next_n * ctx * 4
        for be in backends:
            try_bench(h, TAG, f"paged logits b{b} n{next_n} ctx{ctx}", be,
                      lambda *a, be=be: indexer.fp8_paged_indexer_logits(*a, backend=be), make, flops=flops, bytes=nbytes,
                      ref=ix.naive_fp8_paged_indexer_logits if b * ctx <= 2 ** 21 else None,
                      anchor="DeepGEMM paged ~1.0 PFLOPS", roof="fp8")
    for s, n in [(4096, 4096), (8192, 8192)]:
        def make(s=s, n=n):
            q = randn_fp8((s, 64, 128))
            k = randn_fp8((n, 128))
            ks_ = torch.zeros(s, dtype=torch.int32, device="cuda")
            ke_ = torch.arange(1, s + 1, dtype=torch.int32, device="cuda") * n // s
            return q, k, torch.rand(n, device="cuda"), torch.randn(s, 64, device="cuda"), ks_, ke_
        for be in backends:
            try_bench(h, TAG, f"prefill logits s{s} n{n} h64", be,
                      lambda *a, be=be: indexer.fp8_indexer_logits(*a, backend=be), make,
                      flops=2.0 * s * n * 64 * 128 / 2, bytes=n * 132 + s * n * 4,
                      anchor="DeepGEMM fp8_mqa_logits ~1.1 PFLOPS (causal half counted)", roof="fp8")
    for r, n in [(64, 9295), (4, 131072), (64, 131072), (1, 163840)]:
        def make(r=r, n=n):
            return (torch.randn(r, n, device="cuda"), 2048, torch.zeros(r, dtype=torch.int32, device="cuda"),
                    torch.full((r,), n, dtype=torch.int32, device="cuda"))
        anchor = {(64, 9295): "TRT-LLM 14.3 us", (4, 131072): "vLLM 21.8 us"}.get((r, n), "")
        for be in backends:
            try_bench(h, TAG, f"topk2048 r{r} n{n}", be, lambda x, k, a, b_, be=be: indexer.indexer_topk(x, k, a, b_, backend=be),
                      make, bytes=r * n * 4, ref=lambda x, k, a, b_: torch.topk(x, k, dim=-1), anchor=anchor, roof="bw")


if __name__ == "__main__":
    harness = Harness()
    harness.section("indexer")
    run(harness)
    run_cuda(harness)
    harness.print_table()
