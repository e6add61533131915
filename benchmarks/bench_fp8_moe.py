"""Time the Triton grouped FP8 MoE kernels (a sweep beyond benchmarks/gpu_check's anchor rows; run alone: python benchmarks/bench_fp8_moe.py).

Grouped GEMM: flops = 2 * rows * N * K over the valid rows; bytes = rows*K + G*N*K (e4m3) + 2*rows*N (bf16)
+ scales. Shapes are DeepSeek-V3.2's experts (hidden 7168, moe_intermediate 2048): the gate/up GEMM
N x K = 4096 x 7168 and the down GEMM 7168 x 2048. SiLU-and-mul + quant: bytes = 2*M*2N (bf16 in) + M*N + scales.
Anchors (FACTS.md, H800): DeepGEMM contiguous 1214-1346 TFLOPS, masked 815-1233 TFLOPS.
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Harness  # noqa: E402

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


if __name__ == "__main__":
    harness = Harness()
    harness.section("fp8_moe")
    run(harness)
    harness.print_table()
