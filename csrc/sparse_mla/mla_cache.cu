// Latent-cache writes, sm_80+. One warp per token. fp8_ds_mla: lane l quantizes elements 16l..16l+15 of
// the 512 (group of 128 = 8 lanes: amax by 3 shuffles, ue8m0 scale, e4m3 encode from common/fp8.h), one
// 16-byte store; lanes 0, 8, 16, 24 store the group scales; the rope is stored as bf16 (RNE).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../api/sparse_mla.h"
#include "../common/bounds.cuh"
#include "../common/load_float.cuh"
#include "common/cache_layout.h"

namespace dsv32 {
namespace sm80 {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) mla_cache_write_kernel(const void* __restrict__ kv_c,
                                                                   const void* __restrict__ k_pe, int kind,
                                                                   void* __restrict__ cache, bool fp8,
                                                                   const void* slot_mapping, bool i64, int64_t tokens,
                                                                   int64_t n_slots, int32_t* err) {
  const int64_t t = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  if (t >= tokens) return;
  const int lane = threadIdx.x & 31;
  const int64_t slot = i64 ? static_cast<const int64_t*>(slot_mapping)[t]
                           : int64_t(static_cast<const int32_t*>(slot_mapping)[t]);
  if (slot < 0) return;
  if (slot >= n_slots) {  // past the cache: skipped (never an illegal address), reported in debug mode
    if (lane == 0) report_oob(err, kOobSlotMapping, slot);
    return;
  }
  float v[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) v[i] = load_any(kv_c, kind, t * mla::kKvLora + lane * 16 + i);
  const float pe0 = load_any(k_pe, kind, t * mla::kRope + lane * 2), pe1 = load_any(k_pe, kind, t * mla::kRope + lane * 2 + 1);
  if (fp8) {
    uint8_t* row = static_cast<uint8_t*>(cache) + mla::fp8_row_offset(slot);
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 16; ++i) amax = fmaxf(amax, fabsf(v[i]));
#pragma unroll
    for (int off = 1; off < 8; off <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    const float s = ue8m0_scale(amax);
    uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int i = 0; i < 16; ++i) w[i / 4] |= uint32_t(f32_to_e4m3(v[i] / s)) << (8 * (i % 4));
    *reinterpret_cast<uint4*>(row + lane * 16) = make_uint4(w[0], w[1], w[2], w[3]);
    if ((lane & 7) == 0) *reinterpret_cast<float*>(row + mla::kFp8ScaleOffset + 4 * (lane / 8)) = s;
    *reinterpret_cast<uint32_t*>(row + mla::kFp8RopeOffset + lane * 4) =
        uint32_t(f32_to_bf16_bits(pe0)) | (uint32_t(f32_to_bf16_bits(pe1)) << 16);
  } else {
    uint16_t* row = static_cast<uint16_t*>(cache) + slot * mla::kHead;
    uint32_t w[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = uint32_t(f32_to_bf16_bits(v[2 * i])) | (uint32_t(f32_to_bf16_bits(v[2 * i + 1])) << 16);
    *reinterpret_cast<uint4*>(row + lane * 16) = make_uint4(w[0], w[1], w[2], w[3]);
    *reinterpret_cast<uint4*>(row + lane * 16 + 8) = make_uint4(w[4], w[5], w[6], w[7]);
    *reinterpret_cast<uint32_t*>(row + mla::kKvLora + lane * 2) =
        uint32_t(f32_to_bf16_bits(pe0)) | (uint32_t(f32_to_bf16_bits(pe1)) << 16);
  }
}

}  // namespace
}  // namespace sm80

cudaError_t launch_mla_cache_write(const void* kv_c, const void* k_pe, int kind, void* kv_cache, bool fp8_cache,
                                   const void* slot_mapping, bool slot_is_i64, int64_t tokens, int64_t n_slots,
                                   int32_t* err, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  sm80::mla_cache_write_kernel<<<ceil_div64(tokens * 32, sm80::kThreads), sm80::kThreads, 0, stream>>>(
      kv_c, k_pe, kind, kv_cache, fp8_cache, slot_mapping, slot_is_i64, tokens, n_slots, err);
  return cudaGetLastError();
}

}  // namespace dsv32
