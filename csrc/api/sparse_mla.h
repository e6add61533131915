// Sparse MLA decode launchers (semantics: deepseek_v32_plugin/ops/sparse_mla/naive.py).
#pragma once

#include "common.h"

namespace dsv32 {

// q [b*s_q, h, 576] bf16 (contiguous), kv_cache [pages, 64, 656] u8 (fp8_ds_mla) or [pages, 64, 576]
// bf16, indices [b*s_q, topk] i32 slots (-1 = none) -> out [b*s_q, h, 512] bf16, lse [b*s_q, h] f32.
// topk_length [b*s_q] i32 or nullptr: row r reads only its first min(topk_length[r], topk) entries (the rest
// are never loaded: rows whose context fits in top-k cost their context). Slots >= n_slots (pages * 64) are masked like -1 and, when err is non-null, recorded (common/bounds.cuh).
// One CTA per (row, head block) on a 1-D grid: any number of rows up to 2^31-1 CTAs.
cudaError_t launch_sparse_mla_decode(const void* q, const void* kv_cache, bool fp8_cache, const int32_t* indices,
                                     const int32_t* topk_length, void* out, float* lse, int rows, int heads, int topk, float sm_scale,
                                     int64_t n_slots, int32_t* err, cudaStream_t stream);

// q [s_q, h, 576] bf16, kv [s_kv, 576] bf16 (both contiguous), indices [s_q, topk] i32 rows of kv (-1 = none)
// and topk_length [s_q] i32 or nullptr (as for decode) -> out [s_q, h, 512] bf16, lse [s_q, h] f32. Indices >= s_kv are masked like -1 and, when err is non-null,
// recorded. One CTA per (query row, block of sparse_mla_prefill_heads_per_cta(h, smem opt-in) heads).
int sparse_mla_prefill_heads_per_cta(int heads, int smem_optin);
cudaError_t launch_sparse_mla_prefill(const void* q, const void* kv, const int32_t* indices, const int32_t* topk_length,
                                      void* out, float* lse,
                                      int rows, int heads, int topk, float sm_scale, int64_t s_kv, int32_t* err,
                                      cudaStream_t stream);

}  // namespace dsv32

namespace dsv32 {

// kv_c [T, 512], k_pe [T, 64] (f32 = 0 / bf16 = 1 / f16 = 2) -> latent cache rows at slot_mapping [T]
// (i32 or i64; -1 and slots >= n_slots skipped): fp8_ds_mla 656-byte rows (fp8_cache) or bf16 576-wide rows.
cudaError_t launch_mla_cache_write(const void* kv_c, const void* k_pe, int kind, void* kv_cache, bool fp8_cache,
                                   const void* slot_mapping, bool slot_is_i64, int64_t tokens, int64_t n_slots,
                                   int32_t* err, cudaStream_t stream);

}  // namespace dsv32

namespace dsv32 {

// sm_90a wgmma (HGMMA) decode: 64 heads per CTA; same contract as launch_sparse_mla_decode. Returns
// cudaErrorInvalidDeviceFunction when built without CuTe or without an sm_90a target.
bool sparse_mla_decode_sm90_built();
cudaError_t launch_sparse_mla_decode_sm90(const void* q, const void* kv_cache, bool fp8_cache, const int32_t* indices,
                                          const int32_t* topk_length, void* out, float* lse, int rows, int heads, int topk, float sm_scale,
                                          int64_t n_slots, int32_t* err, cudaStream_t stream);

}  // namespace dsv32

namespace dsv32 {

// sm_90a wgmma (HGMMA) prefill: 64 heads per CTA, cp.async double-buffered key gathers; same contract as
// launch_sparse_mla_prefill. Returns cudaErrorInvalidDeviceFunction when built without CuTe or sm_90a.
bool sparse_mla_prefill_sm90_built();
cudaError_t launch_sparse_mla_prefill_sm90(const void* q, const void* kv, const int32_t* indices,
                                           const int32_t* topk_length, void* out, float* lse, int rows, int heads,
                                           int topk, float sm_scale, int64_t s_kv, int32_t* err, cudaStream_t stream);

}  // namespace dsv32
