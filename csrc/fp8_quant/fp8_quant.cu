// FP8 activation quantization, sm_80+ (no fp8 hardware needed: the e4m3 encoder of common/fp8.h, which
// tests/cuda/test_host_headers.py checks bit-exactly against torch). One warp per 128-element group,
// 4 elements per lane: amax by shuffles, ue8m0 (or plain amax/448) scale, saturating RNE encode.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../api/fp8_quant.h"
#include "../common/fp8.h"

namespace dsv32 {
namespace sm80 {
namespace {

constexpr int kThreads = 256;
constexpr int kGroup = 128;

template <FloatKind K>
__device__ __forceinline__ float load_f(const void* p, int64_t i) {
  if constexpr (K == FloatKind::kF32) return static_cast<const float*>(p)[i];
  if constexpr (K == FloatKind::kBF16) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  if constexpr (K == FloatKind::kF16) return __half2float(static_cast<const __half*>(p)[i]);
  return 0.f;
}

// quantize the 4 values v of this lane within its warp's group; returns packed bytes, writes the scale
__device__ __forceinline__ uint32_t quant_group(const float (&v)[4], bool ue8m0, float* scale_out) {
  float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  const float s = ue8m0 ? ue8m0_scale(amax) : fmaxf(amax, kAmaxFloor) / kFp8Max;
  if ((threadIdx.x & 31) == 0) *scale_out = s;
  uint32_t packed = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) packed |= uint32_t(f32_to_e4m3(v[i] / s)) << (8 * i);
  return packed;
}

template <FloatKind K>
__global__ void __launch_bounds__(kThreads) quant_act_kernel(const void* __restrict__ x, uint8_t* __restrict__ out,
                                                             float* __restrict__ scale, int64_t groups, bool ue8m0) {
  const int64_t grp = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  if (grp >= groups) return;
  const int lane = threadIdx.x & 31;
  const int64_t base = grp * kGroup + lane * 4;
  float v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = load_f<K>(x, base + i);
  const uint32_t q = quant_group(v, ue8m0, scale + grp);
  *reinterpret_cast<uint32_t*>(out + base) = q;
}

template <FloatKind K>
__global__ void __launch_bounds__(kThreads) silu_mul_quant_kernel(const void* __restrict__ x, uint8_t* __restrict__ out,
                                                                  float* __restrict__ scale, int64_t groups, int n,
                                                                  const int32_t* __restrict__ m_indices) {
  const int64_t grp = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  if (grp >= groups) return;
  const int lane = threadIdx.x & 31;
  const int gpr = n / kGroup;
  const int64_t row = grp / gpr;
  if (m_indices != nullptr && m_indices[row] < 0) return;   // padding row of the MoE layout: one 4-byte read
  const int col = int(grp % gpr) * kGroup + lane * 4;
  float v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float g = load_f<K>(x, row * 2 * n + col + i), u = load_f<K>(x, row * 2 * n + n + col + i);
    v[i] = g / (1.0f + expf(-g)) * u;
  }
  const uint32_t q = quant_group(v, true, scale + grp);
  *reinterpret_cast<uint32_t*>(out + row * n + col) = q;
}


}  // namespace
}  // namespace sm80

cudaError_t launch_fp8_quant_act(const void* x, FloatKind kind, uint8_t* out, float* scale, int64_t rows, int k,
                                 bool ue8m0, cudaStream_t stream) {
  if (k % sm80::kGroup) return cudaErrorInvalidValue;
  const int64_t groups = rows * (k / sm80::kGroup);
  if (groups == 0) return cudaSuccess;
  const int64_t blocks = ceil_div64(groups * 32, sm80::kThreads);
  switch (kind) {
    case FloatKind::kF32: sm80::quant_act_kernel<FloatKind::kF32><<<blocks, sm80::kThreads, 0, stream>>>(x, out, scale, groups, ue8m0); break;
    case FloatKind::kBF16: sm80::quant_act_kernel<FloatKind::kBF16><<<blocks, sm80::kThreads, 0, stream>>>(x, out, scale, groups, ue8m0); break;
    case FloatKind::kF16: sm80::quant_act_kernel<FloatKind::kF16><<<blocks, sm80::kThreads, 0, stream>>>(x, out, scale, groups, ue8m0); break;
  }
  return cudaGetLastError();
}

cudaError_t launch_silu_and_mul_fp8_quant(const void* x, FloatKind kind, uint8_t* out, float* scale, int64_t rows,
                                          int n, const int32_t* m_indices, cudaStream_t stream) {
  if (n % sm80::kGroup) return cudaErrorInvalidValue;
  const int64_t groups = rows * (n / sm80::kGroup);
  if (groups == 0) return cudaSuccess;
  const int64_t blocks = ceil_div64(groups * 32, sm80::kThreads);
  switch (kind) {
    case FloatKind::kF32: sm80::silu_mul_quant_kernel<FloatKind::kF32><<<blocks, sm80::kThreads, 0, stream>>>(x, out, scale, groups, n, m_indices); break;
    case FloatKind::kBF16: sm80::silu_mul_quant_kernel<FloatKind::kBF16><<<blocks, sm80::kThreads, 0, stream>>>(x, out, scale, groups, n, m_indices); break;
    case FloatKind::kF16: sm80::silu_mul_quant_kernel<FloatKind::kF16><<<blocks, sm80::kThreads, 0, stream>>>(x, out, scale, groups, n, m_indices); break;
  }
  return cudaGetLastError();
}

}  // namespace dsv32
