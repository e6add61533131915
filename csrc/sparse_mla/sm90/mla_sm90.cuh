// Device helpers shared by the sm_90a sparse MLA kernels (decode and prefill): the 1024-byte-aligned
// dynamic shared-memory view (SW128 wgmma tiles need it), bf16x2 packing, the 16-byte vector address in a
// K-major SW128 tile, the online-softmax steps on a wgmma S fragment and the epilogue. Included only with
// CuTe (DSV32_WITH_CUTE).
#pragma once

#include <cuda_bf16.h>

#include "config.h"

// the wgmma bodies exist only in the sm_90a object (the sm_80 pass of a fat build compiles empty kernels)
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DSV32_SM90A_DEVICE 1
#endif

namespace dsv32 {
namespace sm90 {
namespace mla_util {

// The dynamic smem base rounded up to 1024 B (the launchers allocate sizeof(T) + 1024).
template <class T>
__device__ __forceinline__ T& aligned_smem() {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t mis = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) & 1023u;
  return *reinterpret_cast<T*>(smem_raw + ((1024u - mis) & 1023u));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// 16-byte vector c (8 bf16: dims 8c..8c+7) of row r of a K-major SW128 bf16 tile
template <class Layout>
__device__ __forceinline__ uint4* vec_at(cutlass::bfloat16_t* base, int r, int c) {
  return reinterpret_cast<uint4*>(base + tile_offset<Layout>(r, c * 8));
}

// acc (= or +=) A B over all k-steps of the fragments, issued as one wgmma batch and waited for.
template <class Mma, class TA, class TB, class Acc>
__device__ __forceinline__ void wgmma_sync(Mma& mma, const TA& tA, const TB& tB, Acc& acc, bool zero_init) {
  cute::warpgroup_fence_operand(acc);
  cute::warpgroup_arrive();
  mma.accumulate_ = zero_init ? cute::GMMA::ScaleOut::Zero : cute::GMMA::ScaleOut::One;
#pragma unroll
  for (int kk = 0; kk < cute::size<2>(tA); ++kk) {
    cute::gemm(mma, tA(cute::_, cute::_, kk), tB(cute::_, cute::_, kk), acc);
    mma.accumulate_ = cute::GMMA::ScaleOut::One;
  }
  cute::warpgroup_commit_batch();
  cute::warpgroup_wait<0>();
  cute::warpgroup_fence_operand(acc);
}

// Online-softmax pieces on a wgmma S fragment (rows r0 and r0 + 8 of this thread, a row's columns spread
// over the 4 lanes sharing lane / 4; adjacent fragment entries i, i + 1 are adjacent columns of one row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// S *= scale_log2 where the column's index (idx[col]) is valid, -inf elsewhere; mx = the two rows' maxima.
template <class Acc, class Coord>
__device__ __forceinline__ void mask_scale_rowmax(Acc& acc_s, const Coord& coord_s, int r0, const int32_t* idx,
                                                  float scale_log2, float (&mx)[2]) {
  mx[0] = mx[1] = -INFINITY;
#pragma unroll
  for (int i = 0; i < cute::size(acc_s); ++i) {
    const int hr = cute::get<0>(coord_s(i)) == r0 ? 0 : 1;
    const float v = idx[cute::get<1>(coord_s(i))] >= 0 ? acc_s(i) * scale_log2 : -INFINITY;
    acc_s(i) = v;
    mx[hr] = fmaxf(mx[hr], v);
  }
  mx[0] = quad_max(mx[0]);
  mx[1] = quad_max(mx[1]);
}

// P = exp2(S - m) as bf16 into sP(row, col0 + col) (0 for a row still at -inf); sum = the rows' sums of P.
template <class Acc, class Coord, class TensorP>
__device__ __forceinline__ void exp_to_p(const Acc& acc_s, const Coord& coord_s, int r0, const float (&m)[2],
                                         TensorP& sP, int col0, float (&sum)[2]) {
  sum[0] = sum[1] = 0.f;
#pragma unroll
  for (int i = 0; i < cute::size(acc_s); i += 2) {
    const int hr = cute::get<0>(coord_s(i)) == r0 ? 0 : 1;
    const float p0 = m[hr] == -INFINITY ? 0.f : exp2f(acc_s(i) - m[hr]);
    const float p1 = m[hr] == -INFINITY ? 0.f : exp2f(acc_s(i + 1) - m[hr]);
    sum[hr] += p0 + p1;
    *reinterpret_cast<uint32_t*>(&sP(cute::get<0>(coord_s(i)), col0 + cute::get<1>(coord_s(i)))) = pack_bf16x2(p0, p1);
  }
  sum[0] = quad_sum(sum[0]);
  sum[1] = quad_sum(sum[1]);
}

// Epilogue: O / l (l = 0: zeros) as bf16 into out_rows[r * 512 + col0 + col] for fragment rows r < nh, where
// out_rows points at the CTA's first head of its query row.
template <class Acc, class Coord>
__device__ __forceinline__ void store_o(const Acc& acc_o, const Coord& coord_o, int r0, float l0, float l1,
                                        cutlass::bfloat16_t* out_rows, int nh, int col0) {
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  // one 64-bit base for this thread's row r0 and first column; the per-entry offsets fold to immediates
  const int c0 = cute::get<1>(coord_o(0));
  cutlass::bfloat16_t* base = out_rows + int64_t(r0) * mla_decode::kDV + col0 + c0;
#pragma unroll
  for (int i = 0; i < cute::size(acc_o); i += 2) {
    const int r = cute::get<0>(coord_o(i));
    if (r >= nh) continue;
    const bool lo = r == r0;
    *reinterpret_cast<uint32_t*>(base + (lo ? 0 : 8 * mla_decode::kDV) + (cute::get<1>(coord_o(i)) - c0)) =
        pack_bf16x2(acc_o(i) * (lo ? inv0 : inv1), acc_o(i + 1) * (lo ? inv0 : inv1));
  }
}

// ln(sum exp(scores)) from the log2-domain running max and the denominator; -inf when nothing was valid.
__device__ __forceinline__ float lse_of(float m_log2, float l) {
  return l > 0.f ? (m_log2 + log2f(l)) * 0.69314718055994531f : -INFINITY;
}

}  // namespace mla_util
}  // namespace sm90
}  // namespace dsv32
