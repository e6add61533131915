// Sparse MLA decode launchers (semantics: deepseek_v32_plugin/ops/sparse_mla/naive.py).
#pragma once

#include "common.h"

namespace dsv32 {

// q [b*s_q, h, 576] bf16 (contiguous), kv_cache [pages, 64, 656] u8 (fp8_ds_mla) or [pages, 64, 576]
// bf16, indices [b*s_q, topk] i32 slots (-1 = none) -> out [b*s_q, h, 512] bf16, lse [b*s_q, h] f32.
cudaError_t launch_sparse_mla_decode(const void* q, const void* kv_cache, bool fp8_cache, const int32_t* indices,
                                     void* out, float* lse, int rows, int heads, int topk, float sm_scale,
                                     cudaStream_t stream);

}  // namespace dsv32
