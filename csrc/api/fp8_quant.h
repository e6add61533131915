// FP8 activation quantization launchers (semantics: deepseek_v32_plugin/ops/fp8_quant/naive.py and
// ops/fp8_moe/naive.py naive_silu_and_mul_fp8_quant). Groups of 128 along the last dim.
#pragma once

#include "common.h"

namespace dsv32 {

enum class FloatKind : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// x [rows, k] (k % 128 == 0) -> out [rows, k] e4m3 bytes, scale [rows, k/128] f32.
cudaError_t launch_fp8_quant_act(const void* x, FloatKind kind, uint8_t* out, float* scale, int64_t rows, int k,
                                 bool ue8m0, cudaStream_t stream);
// x [rows, 2n] -> silu(x[:, :n]) * x[:, n:] quantized: out [rows, n] e4m3, scale [rows, n/128] f32 (ue8m0).
// m_indices [rows] int32 or nullptr: rows with m_indices < 0 (MoE layout padding) are neither read nor written.
cudaError_t launch_silu_and_mul_fp8_quant(const void* x, FloatKind kind, uint8_t* out, float* scale, int64_t rows,
                                          int n, const int32_t* m_indices, cudaStream_t stream);

}  // namespace dsv32
