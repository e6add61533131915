"""CUDA-extension kernels vs Triton, a sweep beyond benchmarks/gpu_check's anchor rows (run alone, or call run(h)).

One row per (op, shape, backend): the CUDA kernel, the Triton kernel where it exists (same op through
ops.<family>.<op>(..., backend="triton")), `x torch ref` against the plain-PyTorch reference. Anchors are
the published numbers from FACTS.md (H800 ~ H100 SXM). Standalone: python benchmarks/bench_cuda.py
"""
from __future__ import annotations

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def _fp8(shape, scale=1.0):
    return (torch.randn(shape, device="cuda") * scale).clamp(-448, 448).to(torch.float8_e4m3fn)


def _backends():
    from deepseek_v32_plugin.ops import _cuda
    out = []
    if _cuda.is_available():
        out.append("cuda")
    else:
        print(f"bench_cuda: CUDA extension unavailable: {_cuda.unavailable_reason()}", flush=True)
    try:
        import deepseek_v32_plugin.triton_kernels  # noqa: F401
        out.append("triton")
    except Exception:
        pass
    return out


def _try(h, label, backend, fn, make, **kw):
    try:
        h.bench(f"{label} [{backend}]", fn, make, **kw)
    except Exception as e:  # a missing Triton op or a failure must not stop the suite
        print(f"bench_cuda: {label} [{backend}] failed: {type(e).__name__}: {str(e)[:300]}", flush=True)


def bench_indexer(h, backends):
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
            q = _fp8((b, next_n, h_, 128))
            w = torch.randn(b * next_n, h_, device="cuda")
            lens = torch.full((b,), ctx, dtype=torch.int32, device="cuda")
            return q, cache, w, lens, table, ctx
        flops = 2.0 * b * next_n * h_ * 128 * ctx
        nbytes = b * ctx * 132 + b * next_n * ctx * 4
        for be in backends:
            _try(h, f"paged logits b{b} n{next_n} ctx{ctx}", be,
                 lambda *a, be=be: indexer.fp8_paged_indexer_logits(*a, backend=be), make, flops=flops, bytes=nbytes,
                 ref=ix.naive_fp8_paged_indexer_logits if b * ctx <= 2 ** 21 else None,
                 anchor="DeepGEMM paged ~1.0 PFLOPS", roof="fp8")
    for s, n in [(4096, 4096), (8192, 8192)]:
        def make(s=s, n=n):
            q = _fp8((s, 64, 128))
            k = _fp8((n, 128))
            ks_ = torch.zeros(s, dtype=torch.int32, device="cuda")
            ke_ = torch.arange(1, s + 1, dtype=torch.int32, device="cuda") * n // s
            return q, k, torch.rand(n, device="cuda"), torch.randn(s, 64, device="cuda"), ks_, ke_
        for be in backends:
            _try(h, f"prefill logits s{s} n{n} h64", be,
                 lambda *a, be=be: indexer.fp8_indexer_logits(*a, backend=be), make,
                 flops=2.0 * s * n * 64 * 128 / 2, bytes=n * 132 + s * n * 4,
                 anchor="DeepGEMM fp8_mqa_logits ~1.1 PFLOPS (causal half counted)", roof="fp8")
    for r, n in [(64, 9295), (4, 131072), (64, 131072), (1, 163840)]:
        def make(r=r, n=n):
            return (torch.randn(r, n, device="cuda"), 2048, torch.zeros(r, dtype=torch.int32, device="cuda"),
                    torch.full((r,), n, dtype=torch.int32, device="cuda"))
        anchor = {(64, 9295): "TRT-LLM 14.3 us", (4, 131072): "vLLM 21.8 us"}.get((r, n), "")
        for be in backends:
            _try(h, f"topk2048 r{r} n{n}", be, lambda x, k, a, b_, be=be: indexer.indexer_topk(x, k, a, b_, backend=be),
                 make, bytes=r * n * 4, ref=lambda x, k, a, b_: torch.topk(x, k, dim=-1), anchor=anchor, roof="bw")


def bench_sparse_mla(h, backends):
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
                _try(h, f"{'fp8' if fp8 else 'bf16'} b{b} sq{s_q} h{heads} k{topk}", be,
                     lambda *a, be=be: sparse_mla.sparse_mla_decode(*a, backend=be), make, flops=flops, bytes=nbytes,
                     ref=mla.naive_sparse_mla_decode if b * s_q <= 64 else None,
                     anchor="FlashMLA sparse fp8 410 TFLOPS (b128 h128 sq2)" if fp8 else "", roof="bf16")


def bench_fp8_moe(h, backends):
    from deepseek_v32_plugin.ops import fp8_moe
    h.section("grouped FP8 GEMM (CUDA ext vs Triton)")
    for g, m_per, n, k in [(4, 8192, 4096, 7168), (4, 8192, 7168, 2048), (8, 4096, 4096, 7168), (32, 256, 4096, 7168)]:
        def make(g=g, m_per=m_per, n=n, k=k):
            m = g * m_per
            a = _fp8((m, k))
            b = _fp8((g, n, k), 0.1)
            return (a, torch.rand(m, k // 128, device="cuda") + 0.5, b,
                    torch.rand(g, -(-n // 128), k // 128, device="cuda") + 0.5,
                    torch.arange(g, device="cuda", dtype=torch.int32).repeat_interleave(m_per))
        flops = 2.0 * g * m_per * n * k
        nbytes = g * m_per * k + g * n * k + g * m_per * n * 2
        for be in backends:
            _try(h, f"contiguous g{g} m{m_per} n{n} k{k}", be,
                 lambda *a, be=be: fp8_moe.fp8_grouped_gemm_nt_contiguous(*a, backend=be), make, flops=flops,
                 bytes=nbytes, anchor="DeepGEMM contiguous 1214-1346 TFLOPS", roof="fp8")
    for g, m, expected, n, k in [(16, 256, 128, 4096, 7168), (16, 256, 128, 7168, 2048), (32, 512, 256, 4096, 7168)]:
        def make(g=g, m=m, expected=expected, n=n, k=k):
            return (_fp8((g, m, k)), torch.rand(g, m, k // 128, device="cuda") + 0.5, _fp8((g, n, k), 0.1),
                    torch.rand(g, -(-n // 128), k // 128, device="cuda") + 0.5,
                    torch.full((g,), expected, dtype=torch.int32, device="cuda"))
        flops = 2.0 * g * expected * n * k
        nbytes = g * expected * k + g * n * k + g * expected * n * 2
        for be in backends:
            _try(h, f"masked g{g} m{expected}/{m} n{n} k{k}", be,
                 lambda *a, be=be: fp8_moe.fp8_grouped_gemm_nt_masked(*a, backend=be), make, flops=flops,
                 bytes=nbytes, anchor="DeepGEMM masked 815-1233 TFLOPS", roof="fp8")


def run(h) -> None:
    backends = _backends()
    if not backends:
        return
    bench_indexer(h, backends)
    bench_sparse_mla(h, backends)
    bench_fp8_moe(h, backends)


if __name__ == "__main__":
    from harness import Harness
    hh = Harness()
    run(hh)
    hh.print_table()
    print(hh.markdown())
