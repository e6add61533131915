// Lightning-indexer launchers (semantics: deepseek_v32_plugin/ops/indexer/naive.py).
#pragma once

#include "common.h"

namespace dsv32 {

// Bound checks (common/bounds.cuh): n_slots / n_pages = the cache's capacity; out-of-range entries are
// treated as invalid and, when err (int32 [2]) is non-null, the first one is recorded there.

// q [B, next_n, H, 128] e4m3, kv_cache [n_pages, 64, 132] u8, weights [B*next_n, H] f32, context_lens [B],
// block_table [B, bt_stride] i32 -> out [B*next_n, out_stride >= max_context_len] f32.  H <= 128,
// max_context_len <= bt_stride * 64 (checked by the caller); a block_table entry outside [0, n_pages)
// gives -inf for its 64 positions.
cudaError_t launch_fp8_paged_indexer_logits(const uint8_t* q, const uint8_t* kv_cache, int64_t n_pages,
                                            const float* weights, const int32_t* context_lens,
                                            const int32_t* block_table, int64_t bt_stride, float* out,
                                            int64_t out_stride, int batch, int next_n, int heads,
                                            int max_context_len, int32_t* err, cudaStream_t stream);

// q [S, H, 128] e4m3, k [N, 128] e4m3, k_scale [N], weights [S, H], ks/ke [S] i32 -> out [S, N] f32.
cudaError_t launch_fp8_indexer_logits(const uint8_t* q, const uint8_t* k, const float* k_scale,
                                      const float* weights, const int32_t* ks, const int32_t* ke, float* out,
                                      int seq, int heads, int n_keys, cudaStream_t stream);

// logits [R, ld] f32 (first N columns used), ks/ke [R] i32 -> out [R, topk] i32 (topk <= 2048).
cudaError_t launch_indexer_topk(const float* logits, int64_t ld, const int32_t* ks, const int32_t* ke,
                                int32_t* out, int rows, int n, int topk, cudaStream_t stream);

}  // namespace dsv32

namespace dsv32 {

// k [T, 128] (f32 = 0 / bf16 = 1 / f16 = 2), rotate by the 128-point Hadamard (scale 128^-0.5) if `rotate`,
// ue8m0-quantize per row. Writes (k_fp8 [T,128], k_scale [T]) when those are non-null, and/or the paged
// cache rows at slot_mapping [T] (int32 or int64 by slot_is_i64; -1 skipped) when kv_cache is non-null.
// Slots >= n_slots (the cache's pages * 64) are skipped like -1.
cudaError_t launch_indexer_quant(const void* k, int kind, bool rotate, uint8_t* k_fp8, float* k_scale,
                                 uint8_t* kv_cache, const void* slot_mapping, bool slot_is_i64, int64_t tokens,
                                 int64_t n_slots, int32_t* err, cudaStream_t stream);
// Copy pre-quantized keys into the paged cache (slots >= n_slots skipped).
cudaError_t launch_indexer_cache_write(const uint8_t* k_fp8, const float* k_scale, uint8_t* kv_cache,
                                       const void* slot_mapping, bool slot_is_i64, int64_t tokens, int64_t n_slots,
                                       int32_t* err, cudaStream_t stream);
// Read keys back: (k_fp8 [T, 128], k_scale [T]) <- kv_cache rows at slots [T] (i32 or i64); slots outside
// [0, n_slots) read as zeros.
cudaError_t launch_indexer_cache_gather(const uint8_t* kv_cache, int64_t n_slots, const void* slots, bool slot_is_i64,
                                        int64_t tokens, uint8_t* k_fp8, float* k_scale, int32_t* err,
                                        cudaStream_t stream);
// indices [R, K] i32 positions (-1 kept) -> slots [R, K] i32 through block_table [R, bt_stride] i32;
// positions past the table (pos / page_size >= bt_stride) give -1.
cudaError_t launch_indices_to_slots(const int32_t* indices, const int32_t* block_table, int64_t bt_stride,
                                    int32_t* slots, int rows, int k, int page_size, int32_t* err, cudaStream_t stream);

}  // namespace dsv32

namespace dsv32 {

// sm_90a wgmma (QGMMA) versions of the two logits launchers, same contracts; they return
// cudaErrorInvalidDeviceFunction when the extension was built without CuTe or without an sm_90a target.
bool indexer_logits_sm90_built();
cudaError_t launch_fp8_paged_indexer_logits_sm90(const uint8_t* q, const uint8_t* kv_cache, int64_t n_pages,
                                                 const float* weights, const int32_t* context_lens,
                                                 const int32_t* block_table, int64_t bt_stride, float* out,
                                                 int64_t out_stride, int batch, int next_n, int heads,
                                                 int max_context_len, int32_t* err, cudaStream_t stream);
cudaError_t launch_fp8_indexer_logits_sm90(const uint8_t* q, const uint8_t* k, const float* k_scale,
                                           const float* weights, const int32_t* ks, const int32_t* ke, float* out,
                                           int seq, int heads, int n_keys, cudaStream_t stream);

}  // namespace dsv32
