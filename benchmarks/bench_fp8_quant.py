"""Time the Triton fp8_quant kernels (a sweep beyond benchmarks/gpu_check's anchor rows; run alone: python benchmarks/bench_fp8_quant.py).

fp8_gemm_nt: flops = 2 M N K; bytes = M K + N K (e4m3) + 2 M N (bf16 out) + scales.
fp8_quant_act: bytes = 2 M K (bf16 in) + M K (e4m3 out) + 4 M K / 128 (scales).
Shapes: DeepSeek-V3.2 dense linears (q_a+kv_a fused 2112x7168, q_b 24576x1536, o_proj 7168x16384,
dense MLP 18432/7168) at prefill (M=4096) and decode (M=1..128) sizes.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Harness  # noqa: E402

from deepseek_v32_plugin.ops import fp8_quant as ops  # noqa: E402
from deepseek_v32_plugin.ops.fp8_quant import naive  # noqa: E402

SHAPES = [(4096, 2112, 7168), (4096, 24576, 1536), (4096, 7168, 16384), (4096, 36864, 7168), (4096, 7168, 18432),
          (128, 7168, 2048), (64, 24576, 1536), (1, 2112, 7168)]


def run(h: Harness):
    for m, n, k in SHAPES:
        def make(m=m, n=n, k=k):
            a, a_s = naive.naive_fp8_quant_act(torch.randn(m, k, device="cuda"))
            b, b_s = naive.naive_fp8_quant_weight(torch.randn(n, k, device="cuda") * 0.05)
            return (a, a_s, b, b_s)
        h.bench(f"fp8_gemm_nt M={m} N={n} K={k}", lambda a, a_s, b, b_s: ops.fp8_gemm_nt(a, a_s, b, b_s, backend="triton"),
                make, flops=2.0 * m * n * k, bytes=m * k + n * k + 2 * m * n + 4 * (m * k + n * k // 128) // 128,
                ref=lambda a, a_s, b, b_s: naive.naive_fp8_gemm_nt(a, a_s, b, b_s), roof="fp8",
                anchor="DeepGEMM grouped 1214-1346 TFLOPS (H800)" if m >= 4096 else "")
    for m, k in ((4096, 7168), (16384, 7168), (1, 7168)):
        def make_x(m=m, k=k):
            return (torch.randn(m, k, device="cuda", dtype=torch.bfloat16),)
        h.bench(f"fp8_quant_act M={m} K={k}", lambda x: ops.fp8_quant_act(x, backend="triton"), make_x,
                bytes=3 * m * k + 4 * m * k // 128, ref=lambda x: naive.naive_fp8_quant_act(x), roof="bf16")


if __name__ == "__main__":
    harness = Harness()
    harness.section("fp8_quant")
    run(harness)
    harness.print_table()
