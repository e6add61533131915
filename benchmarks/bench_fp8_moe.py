"""Time the Triton grouped FP8 MoE kernels (a sweep beyond benchmarks/gpu_check's anchor rows; run alone: python benchmarks/bench_fp8_moe.py).

Grouped GEMM: flops = 2 * rows * N * K over the valid rows; bytes = rows*K + G*N*K (e4m3) + 2*rows*N (bf16)
+ scales. Shapes are DeepSeek-V3.2's experts (hidden 7168, moe_intermediate 2048): the gate/up GEMM
N x K = 4096 x 7168 and the down GEMM 7168 x 2048. SiLU-and-mul + quant: bytes = 2*M*2N (bf16 in) + M*N + scales.
Anchors (FACTS.md, H800): DeepGEMM contiguous 1214-1346 TFLOPS, masked 815-1233 TFLOPS.
`run_cuda(h)`: the CUDA extension (ops/fp8_moe/cuda.py) vs the Triton kernel, a row per backend (run alone:
both sweeps).
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Harness, cuda_vs_triton_backends, randn_fp8, try_bench  # noqa: E402

from deepseek_v32_plugin.ops import fp8_moe as ops  # noqa: E402
from deepseek_v32_plugin.ops.fp8_moe import naive  # noqa: E402
from deepseek_v32_plugin.ops.fp8_quant.naive import naive_fp8_quant_act, naive_fp8_quant_weight  # noqa: E402


def _weights(g, n, k):
    ws, ss = zip(*(naive_fp8_quant_weight(torch.randn(n, k, device="cuda") * 0.02) for _ in range(g)))
    return torch.stack(ws), torch.stack(ss)


# DSV32_BENCH_SWEEP=1: also time candidate launch configs of the headline shape (via DSV32_MOE_GEMM_CONFIG)
SWEEP = [dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3),
         dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=5),
         dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=4),
         dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=4),
         dict(BLOCK_M=256, BLOCK_N=128, num_warps=8, num_stages=3), dict(GROUP_M=16), dict(GROUP_M=1)]


def _sweep(h: Harness):
    g, rows, n, k = 8, 4096, 7168, 2048
    m = g * rows

    def make_c():
        a, a_s = naive_fp8_quant_act(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
        b, b_s = _weights(g, n, k)
        return a, a_s, b, b_s, torch.arange(g, device="cuda", dtype=torch.int32).repeat_interleave(rows)

    for cfg in SWEEP:
        os.environ["DSV32_MOE_GEMM_CONFIG"] = json.dumps(cfg)
        try:
            h.bench(f"sweep contiguous G={g}x{rows} N={n} K={k}",
                    lambda a, a_s, b, b_s, mi: ops.fp8_grouped_gemm_nt_contiguous(a, a_s, b, b_s, mi, backend="triton"),
                    make_c, flops=2.0 * m * n * k, roof="fp8", note=json.dumps(cfg))
        except Exception as e:  # a config that does not compile (e.g. out of shared memory) is reported, not fatal
            print(f"sweep {cfg}: {type(e).__name__}: {str(e)[:200]}", flush=True)
        finally:
            os.environ.pop("DSV32_MOE_GEMM_CONFIG", None)


def run(h: Harness):
    if os.environ.get("DSV32_BENCH_SWEEP"):
        _sweep(h)
    for g, rows, n, k in [(8, 4096, 7168, 2048), (8, 4096, 4096, 7168), (32, 256, 7168, 2048)]:
        m = g * rows

        def make_c(g=g, rows=rows, n=n, k=k):
            a, a_s = naive_fp8_quant_act(torch.randn(g * rows, k, device="cuda", dtype=torch.bfloat16))
            b, b_s = _weights(g, n, k)
            m_idx = torch.arange(g, device="cuda", dtype=torch.int32).repeat_interleave(rows)
            return a, a_s, b, b_s, m_idx

        h.bench(f"grouped contiguous G={g}x{rows} N={n} K={k}",
                lambda a, a_s, b, b_s, mi: ops.fp8_grouped_gemm_nt_contiguous(a, a_s, b, b_s, mi, backend="triton"),
                make_c, flops=2.0 * m * n * k, bytes=m * k + g * n * k + 2 * m * n + 4 * m * k // 128, roof="fp8",
                ref=(lambda a, a_s, b, b_s, mi: naive.naive_fp8_grouped_gemm_nt_contiguous(a, a_s, b, b_s, mi))
                if m * n <= 32768 * 7168 else None,
                anchor="DeepGEMM contiguous 1214-1346 TFLOPS (H800)" if (rows, n, k) == (4096, 7168, 2048) else "")

    for g, m, expect, n, k in [(8, 1024, 768, 4096, 7168), (8, 1024, 768, 7168, 2048), (32, 256, 192, 7168, 2048)]:
        def make_m(g=g, m=m, expect=expect, n=n, k=k):
            a, a_s = naive_fp8_quant_act(torch.randn(g, m, k, device="cuda", dtype=torch.bfloat16))
            b, b_s = _weights(g, n, k)
            mm = torch.randint(expect // 2, min(m, expect * 3 // 2) + 1, (g,), device="cuda", dtype=torch.int32)
            return a, a_s, b, b_s, mm

        # the FLOPs are counted at the expected fill (rows beyond masked_m are only zero-filled)
        h.bench(f"grouped masked G={g} M={m} ~m={expect} N={n} K={k}",
                lambda a, a_s, b, b_s, mm: ops.fp8_grouped_gemm_nt_masked(a, a_s, b, b_s, mm, backend="triton"),
                make_m, flops=2.0 * g * expect * n * k, bytes=g * (expect * k + n * k + 2 * m * n), roof="fp8",
                ref=lambda a, a_s, b, b_s, mm: naive.naive_fp8_grouped_gemm_nt_masked(a, a_s, b, b_s, mm),
                anchor="DeepGEMM masked 815-1233 TFLOPS (H800)")

    for m, n in [(32768, 2048), (256, 2048)]:
        def make_s(m=m, n=n):
            return (torch.randn(m, 2 * n, device="cuda", dtype=torch.bfloat16),)

        h.bench(f"silu_and_mul_fp8_quant M={m} N={n}", lambda x: ops.silu_and_mul_fp8_quant(x, backend="triton"),
                make_s, bytes=4 * m * n + m * n + 4 * m * n // 128, roof="bf16",
                ref=lambda x: naive.naive_silu_and_mul_fp8_quant(x))


# ------------------------------------------------ CUDA extension vs Triton (grouped FP8 GEMM, contiguous and masked) ----
TAG = "bench_fp8_moe"


def run_cuda(h, backends=None):
    """The CUDA extension vs the Triton kernel, one row per (shape, backend) with the FACTS.md anchors
    (H800 ~ H100 SXM); `x torch ref` against the plain-PyTorch reference."""
    backends = cuda_vs_triton_backends(TAG) if backends is None else backends
    if not backends:
        return
    from deepseek_v32_plugin.ops import fp8_moe
    h.section("grouped FP8 GEMM (CUDA ext vs Triton)")
    for g, m_per, n, k in [(4, 8192, 4096, 7168), (4, 8192, 7168, 2048), (8, 4096, 4096, 7168), (32, 256, 4096, 7168)]:
        def make(g=g, m_per=m_per, n=n, k=k):
            m = g * m_per
            a = randn_fp8((m, k))
            b = randn_fp8((g, n, k), 0.1)
            return (a, torch.rand(m, k // 128, device="cuda") + 0.5, b,
                    torch.rand(g, -(-n // 128), k // 128, device="cuda") + 0.5,
                    torch.arange(g, device="cuda", dtype=torch.int32).repeat_interleave(m_per))
        flops = 2.0 * g * m_per * n * k
        nbytes = g * m_per * k + g * n * k + g * m_per * n * 2
        for be in backends:
            try_bench(h, TAG, f"contiguous g{g} m{m_per} n{n} k{k}", be,
                      lambda *a, be=be: fp8_moe.fp8_grouped_gemm_nt_contiguous(*a, backend=be), make, flops=flops,
                      bytes=nbytes, anchor="DeepGEMM contiguous 1214-1346 TFLOPS", roof="fp8")
    for g, m, expected, n, k in [(16, 256, 128, 4096, 7168), (16, 256, 128, 7168, 2048), (32, 512, 256, 4096, 7168)]:
        def make(g=g, m=m, expected=expected, n=n, k=k):
            return (randn_fp8((g, m, k)), torch.rand(g, m, k // 128, device="cuda") + 0.5, randn_fp8((g, n, k), 0.1),
                    torch.rand(g, -(-n // 128), k // 128, device="cuda") + 0.5,
                    torch.full((g,), expected, dtype=torch.int32, device="cuda"))
        flops = 2.0 * g * expected * n * k
        nbytes = g * expected * k + g * n * k + g * expected * n * 2
        for be in backends:
            try_bench(h, TAG, f"masked g{g} m{expected}/{m} n{n} k{k}", be,
                      lambda *a, be=be: fp8_moe.fp8_grouped_gemm_nt_masked(*a, backend=be), make, flops=flops,
                      bytes=nbytes, anchor="DeepGEMM masked 815-1233 TFLOPS", roof="fp8")


if __name__ == "__main__":
    harness = Harness()
    harness.section("fp8_moe")
    run(harness)
    run_cuda(harness)
    harness.print_table()
