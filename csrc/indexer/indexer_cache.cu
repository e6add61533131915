// Indexer key quantization and paged-cache writes, sm_80+. One warp per token, 4 values per lane:
// Fast Walsh-Hadamard transform in Sylvester (natural) order = x @ H128 (strides 1, 2 inside a lane,
// 4..64 across lanes by shuffles), scale 128^-0.5, ue8m0 scale from the row amax, e4m3 encode
// (common/fp8.h), then 16-byte-aligned stores into the DeepGEMM page layout (indexer/common/cache_layout.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../api/indexer.h"
#include "../common/bounds.cuh"
#include "../common/load_float.cuh"
#include "../common/fp8.h"
#include "common/cache_layout.h"

namespace dsv32 {
namespace sm80 {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t slot_at(const void* sm, bool i64, int64_t t) {
  return i64 ? static_cast<const int64_t*>(sm)[t] : int64_t(static_cast<const int32_t*>(sm)[t]);
}

__device__ __forceinline__ void fwht128(float (&v)[4], int lane) {
  // strides 1 and 2: inside the lane
  float a = v[0] + v[1], b = v[0] - v[1], c = v[2] + v[3], d = v[2] - v[3];
  v[0] = a + c; v[1] = b + d; v[2] = a - c; v[3] = b - d;
#pragma unroll
  for (int lm = 1; lm < 32; lm <<= 1) {  // element stride 4 * lm: partner lane lane ^ lm
    const bool upper = lane & lm;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float o = __shfl_xor_sync(0xffffffffu, v[i], lm);
      v[i] = upper ? (o - v[i]) : (v[i] + o);
    }
  }
}

__global__ void __launch_bounds__(kThreads) indexer_quant_kernel(const void* __restrict__ k, int kind, bool rotate,
                                                                 uint8_t* __restrict__ k_fp8, float* __restrict__ k_scale,
                                                                 uint8_t* __restrict__ kv_cache, const void* slot_mapping,
                                                                 bool slot_is_i64, int64_t tokens,
                                                                 int64_t n_slots, int32_t* err) {
  const int64_t t = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  if (t >= tokens) return;
  const int lane = threadIdx.x & 31;
  float v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = load_any(k, kind, t * 128 + lane * 4 + i);
  if (rotate) {
    fwht128(v, lane);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] *= 0.08838834764831845f;  // 128^-0.5
  }
  float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  const float s = ue8m0_scale(amax);
  uint32_t q = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) q |= uint32_t(f32_to_e4m3(v[i] / s)) << (8 * i);
  if (k_fp8) {
    *reinterpret_cast<uint32_t*>(k_fp8 + t * 128 + lane * 4) = q;
    if (lane == 0) k_scale[t] = s;
  }
  if (kv_cache) {
    const int64_t slot = slot_at(slot_mapping, slot_is_i64, t);
    if (slot < 0) return;
    if (slot >= n_slots) {
      if (lane == 0) report_oob(err, kOobSlotMapping, slot);
      return;
    }
    *reinterpret_cast<uint32_t*>(kv_cache + indexer::key_byte_offset(slot) + lane * 4) = q;
    if (lane == 0) *reinterpret_cast<float*>(kv_cache + indexer::scale_byte_offset(slot)) = s;
  }
}

__global__ void __launch_bounds__(kThreads) cache_write_kernel(const uint8_t* __restrict__ k_fp8,
                                                               const float* __restrict__ k_scale,
                                                               uint8_t* __restrict__ kv_cache, const void* slot_mapping,
                                                               bool slot_is_i64, int64_t tokens, int64_t n_slots,
                                                               int32_t* err) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;  // 8 threads x 16 B per token
  const int64_t t = i >> 3;
  if (t >= tokens) return;
  const int64_t slot = slot_at(slot_mapping, slot_is_i64, t);
  if (slot < 0) return;
  const int c = int(i & 7);
  if (slot >= n_slots) {
    if (c == 0) report_oob(err, kOobSlotMapping, slot);
    return;
  }
  *reinterpret_cast<uint4*>(kv_cache + indexer::key_byte_offset(slot) + c * 16) =
      *reinterpret_cast<const uint4*>(k_fp8 + t * 128 + c * 16);
  if (c == 0) *reinterpret_cast<float*>(kv_cache + indexer::scale_byte_offset(slot)) = k_scale[t];
}

// The reverse of cache_write_kernel: k_fp8 [T, 128] + k_scale [T] <- cache rows at slots [T]. Slots
// outside [0, n_slots) read as zeros (and are reported): the gather's callers pass no -1 slots.
__global__ void __launch_bounds__(kThreads) cache_gather_kernel(const uint8_t* __restrict__ kv_cache,
                                                                const void* slots, bool slot_is_i64, int64_t tokens,
                                                                int64_t n_slots, uint8_t* __restrict__ k_fp8,
                                                                float* __restrict__ k_scale, int32_t* err) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;  // 8 threads x 16 B per token
  const int64_t t = i >> 3;
  if (t >= tokens) return;
  const int64_t slot = slot_at(slots, slot_is_i64, t);
  const int c = int(i & 7);
  const bool ok = slot >= 0 && slot < n_slots;
  if (!ok && c == 0) report_oob(err, kOobSlots, slot);
  *reinterpret_cast<uint4*>(k_fp8 + t * 128 + c * 16) =
      ok ? *reinterpret_cast<const uint4*>(kv_cache + indexer::key_byte_offset(slot) + c * 16) : make_uint4(0, 0, 0, 0);
  if (c == 0) k_scale[t] = ok ? *reinterpret_cast<const float*>(kv_cache + indexer::scale_byte_offset(slot)) : 0.f;
}

// Positions past the block table (pos // page >= bt_stride) give -1, as in the Triton kernel.
__global__ void indices_to_slots_kernel(const int32_t* __restrict__ indices, const int32_t* __restrict__ table,
                                        int64_t bt_stride, int32_t* __restrict__ slots, int64_t total, int k,
                                        int page, int32_t* err) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int32_t pos = indices[i];
  const int64_t r = i / k;
  if (pos < 0) {
    slots[i] = -1;
  } else if (pos / page >= bt_stride) {
    report_oob(err, kOobPositions, pos);
    slots[i] = -1;
  } else {
    slots[i] = table[r * bt_stride + pos / page] * page + pos % page;
  }
}

}  // namespace
}  // namespace sm80

cudaError_t launch_indexer_quant(const void* k, int kind, bool rotate, uint8_t* k_fp8, float* k_scale,
                                 uint8_t* kv_cache, const void* slot_mapping, bool slot_is_i64, int64_t tokens,
                                 int64_t n_slots, int32_t* err, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  sm80::indexer_quant_kernel<<<ceil_div64(tokens * 32, sm80::kThreads), sm80::kThreads, 0, stream>>>(
      k, kind, rotate, k_fp8, k_scale, kv_cache, slot_mapping, slot_is_i64, tokens, n_slots, err);
  return cudaGetLastError();
}

cudaError_t launch_indexer_cache_write(const uint8_t* k_fp8, const float* k_scale, uint8_t* kv_cache,
                                       const void* slot_mapping, bool slot_is_i64, int64_t tokens, int64_t n_slots,
                                       int32_t* err, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  sm80::cache_write_kernel<<<ceil_div64(tokens * 8, sm80::kThreads), sm80::kThreads, 0, stream>>>(
      k_fp8, k_scale, kv_cache, slot_mapping, slot_is_i64, tokens, n_slots, err);
  return cudaGetLastError();
}

cudaError_t launch_indexer_cache_gather(const uint8_t* kv_cache, int64_t n_slots, const void* slots, bool slot_is_i64,
                                        int64_t tokens, uint8_t* k_fp8, float* k_scale, int32_t* err,
                                        cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  sm80::cache_gather_kernel<<<ceil_div64(tokens * 8, sm80::kThreads), sm80::kThreads, 0, stream>>>(
      kv_cache, slots, slot_is_i64, tokens, n_slots, k_fp8, k_scale, err);
  return cudaGetLastError();
}

cudaError_t launch_indices_to_slots(const int32_t* indices, const int32_t* block_table, int64_t bt_stride,
                                    int32_t* slots, int rows, int k, int page_size, int32_t* err, cudaStream_t stream) {
  const int64_t total = int64_t(rows) * k;
  if (total == 0) return cudaSuccess;
  if (page_size <= 0) return cudaErrorInvalidValue;
  sm80::indices_to_slots_kernel<<<ceil_div64(total, 256), 256, 0, stream>>>(indices, block_table, bt_stride, slots,
                                                                            total, k, page_size, err);
  return cudaGetLastError();
}

}  // namespace dsv32
