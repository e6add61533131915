// Lightning-indexer launchers (semantics: deepseek_v32_plugin/ops/indexer/naive.py).
#pragma once

#include "common.h"

namespace dsv32 {

// q [B, next_n, H, 128] e4m3, kv_cache [pages, 64, 132] u8, weights [B*next_n, H] f32, context_lens [B],
// block_table [B, bt_stride] i32 -> out [B*next_n, out_stride >= max_context_len] f32.  H <= 128.
cudaError_t launch_fp8_paged_indexer_logits(const uint8_t* q, const uint8_t* kv_cache, const float* weights,
                                            const int32_t* context_lens, const int32_t* block_table,
                                            int64_t bt_stride, float* out, int64_t out_stride, int batch,
                                            int next_n, int heads, int max_context_len, cudaStream_t stream);

// q [S, H, 128] e4m3, k [N, 128] e4m3, k_scale [N], weights [S, H], ks/ke [S] i32 -> out [S, N] f32.
cudaError_t launch_fp8_indexer_logits(const uint8_t* q, const uint8_t* k, const float* k_scale,
                                      const float* weights, const int32_t* ks, const int32_t* ke, float* out,
                                      int seq, int heads, int n_keys, cudaStream_t stream);

// logits [R, ld] f32 (first N columns used), ks/ke [R] i32 -> out [R, topk] i32 (topk <= 2048).
cudaError_t launch_indexer_topk(const float* logits, int64_t ld, const int32_t* ks, const int32_t* ke,
                                int32_t* out, int rows, int n, int topk, cudaStream_t stream);

}  // namespace dsv32
