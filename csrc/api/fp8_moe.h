// Grouped FP8 GEMM launchers (semantics: deepseek_v32_plugin/ops/fp8_moe/naive.py).
// a [rows, K] e4m3 (masked: [G, M, K]), a_scale [rows, K/128] f32, b [G, N, K] e4m3,
// b_scale [G, ceil(N/128), K/128] f32; contiguous: m_indices [M] i32 (-1 rows -> 0);
// masked: masked_m [G] i32 (rows >= masked_m[g] -> 0). out bf16 (out_fp32 = false) or fp32.
#pragma once

#include "common.h"

namespace dsv32 {

struct GroupedGemmArgs {
  const uint8_t* a;
  const float* a_scale;
  const uint8_t* b;
  const float* b_scale;
  const int32_t* m_indices;  // contiguous mode, else nullptr
  const int32_t* masked_m;   // masked mode, else nullptr
  void* out;
  bool out_fp32;
  int groups, m, n, k;       // masked: m = rows per group
};

cudaError_t launch_fp8_grouped_gemm_sm80(const GroupedGemmArgs& args, cudaStream_t stream);
// sm_90a wgmma (QGMMA) kernel; returns cudaErrorInvalidDeviceFunction when built without sm_90a.
cudaError_t launch_fp8_grouped_gemm_sm90(const GroupedGemmArgs& args, cudaStream_t stream);
bool fp8_grouped_gemm_sm90_built();

}  // namespace dsv32
