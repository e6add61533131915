// Sparse MLA decode, sm_90a: wgmma bf16 (SASS HGMMA) via CuTe. One CTA = 64 heads of one query row,
// 2 warpgroups, keys in chunks of 64:
//   all 256 threads gather (and for fp8_ds_mla dequantize) 64 latent rows into a 128-byte-swizzled K-major
//   tile [64 keys x 576]; WG0: S = Q K^T (64 x 64, 36 k16 steps, Q resident in smem), online softmax in
//   registers, P (bf16) to smem; both WGs: O[:, 256w : 256w+256] = O * alpha + P V, with V read from the
//   same KV tile through its MN-major view (the K-major SW128 tile transposed is the MN-major SW128 tile).
// A 64-head tile shares each gathered/dequantized key across 64 heads (the sm80 kernel shares it across 16).
// Semantics as sparse_mla/sm80/sparse_mla_decode_sm80.cu. Built only with CuTe headers (DSV32_WITH_CUTE) and sm_90a.
#include "../../api/sparse_mla.h"
#include "../../common/bounds.cuh"
#include "../common/cache_layout.h"

#if defined(DSV32_WITH_CUTE)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cutlass/arch/barrier.h>

#include "config.h"
#include "mla_sm90.cuh"

namespace dsv32 {
namespace sm90 {
namespace {

using namespace cute;
using namespace mla_decode;

__device__ __forceinline__ Smem& smem() { return mla_util::aligned_smem<Smem>(); }
using mla_util::pack_bf16x2;
using mla_util::vec_at;

template <bool kFp8>
__device__ __forceinline__ void gather(Smem& s, const uint8_t* __restrict__ cache) {
  constexpr int kVecs = kD / 8;  // 72 bf16 vectors per row
  for (int i = threadIdx.x; i < kKeys * kVecs; i += kThreads) {
    const int r = i / kVecs, c = i % kVecs;
    const int32_t slot = s.idx[r];
    uint4 v = make_uint4(0, 0, 0, 0);
    if (slot >= 0) {
      if constexpr (!kFp8) {
        v = *reinterpret_cast<const uint4*>(cache + mla::bf16_row_offset(slot) + c * 16);
      } else {
        const uint8_t* row = cache + mla::fp8_row_offset(slot);
        if (c < kDV / 8) {  // 8 e4m3 -> 8 bf16, times the group scale
          const uint2 raw = *reinterpret_cast<const uint2*>(row + c * 8);
          const float sc = reinterpret_cast<const float*>(row + mla::kFp8ScaleOffset)[c * 8 / mla::kGroup] *
                           kF16OperandUnscale;
          uint32_t o[4];
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            uint32_t h01, h23;
            e4m3x4_to_f16x2_scaled(j == 0 ? raw.x : raw.y, h01, h23);
            const float2 f01 = __half22float2(*reinterpret_cast<__half2*>(&h01));
            const float2 f23 = __half22float2(*reinterpret_cast<__half2*>(&h23));
            o[2 * j] = pack_bf16x2(f01.x * sc, f01.y * sc);
            o[2 * j + 1] = pack_bf16x2(f23.x * sc, f23.y * sc);
          }
          v = make_uint4(o[0], o[1], o[2], o[3]);
        } else {
          v = *reinterpret_cast<const uint4*>(row + mla::kFp8RopeOffset + (c - kDV / 8) * 16);
        }
      }
    }
    *vec_at<LayoutKV>(s.kv, r, c) = v;
  }
}

template <bool kFp8>
__global__ void __launch_bounds__(kThreads, 1) sparse_mla_decode_kernel(
    const bf16* __restrict__ q, const uint8_t* __restrict__ cache, const int32_t* __restrict__ indices,
    const int32_t* __restrict__ topk_length, bf16* __restrict__ out, float* __restrict__ lse, int heads, int topk, float scale_log2,
    int64_t n_slots, int32_t* err) {
#if defined(DSV32_SM90A_DEVICE)
  Smem& s = smem();
  // 1-D grid (row-major over (row, head block)): gridDim.x allows 2^31-1 CTAs, where a rows axis on y
  // would stop at 65535 query rows.
  const int n_hblocks = (heads + kHeads - 1) / kHeads;
  const int row = int(blockIdx.x / n_hblocks), h0 = int(blockIdx.x % n_hblocks) * kHeads;
  const int nh = min(kHeads, heads - h0);
  const int tid = threadIdx.x, wg = tid / 128, wtid = tid % 128;

  for (int i = tid; i < kHeads * (kD / 8); i += kThreads) {
    const int r = i / (kD / 8), c = i % (kD / 8);
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < nh) v = *reinterpret_cast<const uint4*>(q + (int64_t(row) * heads + h0 + r) * kD + c * 8);
    *vec_at<LayoutQ>(s.q, r, c) = v;
  }

  MmaO mma_o;
  auto thr_o = mma_o.get_slice(wtid);
  Tensor sP = make_tensor(make_smem_ptr(s.p), LayoutP{});
  Tensor sV = make_tensor(make_smem_ptr(s.kv + wg * kVOffset), LayoutV{});
  Tensor tOrP = thr_o.make_fragment_A(thr_o.partition_A(sP));
  Tensor tOrV = thr_o.make_fragment_B(thr_o.partition_B(sV));
  auto acc_o = partition_fragment_C(mma_o, Shape<Int<kHeads>, Int<kDVPerWg>>{});
  Tensor coord_o = thr_o.partition_C(make_identity_tensor(Shape<Int<kHeads>, Int<kDVPerWg>>{}));
  clear(acc_o);

  MmaS mma_s;
  auto thr_s = mma_s.get_slice(wtid);
  Tensor sQ = make_tensor(make_smem_ptr(s.q), LayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(s.kv), LayoutKV{});
  Tensor tSrQ = thr_s.make_fragment_A(thr_s.partition_A(sQ));
  Tensor tSrK = thr_s.make_fragment_B(thr_s.partition_B(sK));
  auto acc_s = partition_fragment_C(mma_s, Shape<Int<kHeads>, Int<kKeys>>{});
  Tensor coord_s = thr_s.partition_C(make_identity_tensor(Shape<Int<kHeads>, Int<kKeys>>{}));
  const int r0 = get<0>(coord_s(0));  // this thread's rows: r0, r0 + 8 (both warpgroups: same mapping)
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  const int32_t* idx_row = indices + int64_t(row) * topk;
  // entries past the row's length are never read (ops.sparse_mla topk_length; nullptr: all topk)
  const int n_keys = topk_length ? min(max(topk_length[row], 0), topk) : topk;
  for (int k0 = 0; k0 < n_keys; k0 += kKeys) {
    if (tid < kKeys) {
      int32_t slot = (k0 + tid < n_keys) ? idx_row[k0 + tid] : -1;
      if (slot >= n_slots) {  // a slot past the cache: masked like -1 (never an illegal address)
        if (blockIdx.x % n_hblocks == 0) report_oob(err, kOobIndices, slot);
        slot = -1;
      }
      s.idx[tid] = slot;
    }
    __syncthreads();
    gather<kFp8>(s, cache);
    cutlass::arch::fence_view_async_shared();
    __syncthreads();

    if (wg == 0) {
      mla_util::wgmma_sync(mma_s, tSrQ, tSrK, acc_s, true);
      // online softmax over this chunk; a row's 64 columns live in the 4 lanes sharing lane / 4
      float mx[2], alpha[2], sum[2];
      mla_util::mask_scale_rowmax(acc_s, coord_s, r0, s.idx, scale_log2, mx);
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const float m_new = fmaxf(m_run[hr], mx[hr]);
        alpha[hr] = m_new == -INFINITY ? 1.f : exp2f(m_run[hr] - m_new);
        m_run[hr] = m_new;
      }
      mla_util::exp_to_p(acc_s, coord_s, r0, m_run, sP, 0, sum);
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) l_run[hr] = l_run[hr] * alpha[hr] + sum[hr];
      if ((wtid & 3) == 0) {
        s.alpha[r0] = alpha[0];
        s.alpha[r0 + 8] = alpha[1];
      }
      cutlass::arch::fence_view_async_shared();  // P written by generic stores, read by wgmma
    }
    __syncthreads();

    {
      const float a0 = s.alpha[r0], a1 = s.alpha[r0 + 8];
#pragma unroll
      for (int i = 0; i < size(acc_o); ++i) acc_o(i) *= (get<0>(coord_o(i)) == r0 ? a0 : a1);
      mla_util::wgmma_sync(mma_o, tOrP, tOrV, acc_o, false);
    }
    __syncthreads();  // KV, P and alpha are rewritten next chunk
  }

  if (wg == 0 && (wtid & 3) == 0) {
    s.m[r0] = m_run[0];
    s.m[r0 + 8] = m_run[1];
    s.l[r0] = l_run[0];
    s.l[r0 + 8] = l_run[1];
  }
  __syncthreads();
  mla_util::store_o(acc_o, coord_o, r0, s.l[r0], s.l[r0 + 8], out + (int64_t(row) * heads + h0) * kDV, nh,
                    wg * kDVPerWg);
  if (tid < nh) lse[int64_t(row) * heads + h0 + tid] = mla_util::lse_of(s.m[tid], s.l[tid]);
#endif
}

}  // namespace
}  // namespace sm90

bool sparse_mla_decode_sm90_built() {
#if defined(DSV32_SM90A)
  return true;
#else
  return false;
#endif
}

cudaError_t launch_sparse_mla_decode_sm90(const void* q, const void* kv_cache, bool fp8_cache, const int32_t* indices,
                                          const int32_t* topk_length, void* out, float* lse, int rows, int heads, int topk, float sm_scale,
                                          int64_t n_slots, int32_t* err, cudaStream_t stream) {
  if (!sparse_mla_decode_sm90_built()) return cudaErrorInvalidDeviceFunction;
  if (rows == 0 || heads == 0) return cudaSuccess;
  const int smem = int(sizeof(sm90::mla_decode::Smem)) + 1024;
  const int64_t ctas = int64_t(ceil_div(heads, sm90::mla_decode::kHeads)) * rows;
  if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(ctas));
  const float scale_log2 = sm_scale * 1.4426950408889634f;
  auto kernel = fp8_cache ? sm90::sparse_mla_decode_kernel<true> : sm90::sparse_mla_decode_kernel<false>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  kernel<<<grid, sm90::mla_decode::kThreads, smem, stream>>>(static_cast<const sm90::mla_decode::bf16*>(q), static_cast<const uint8_t*>(kv_cache),
                                                 indices, topk_length, static_cast<sm90::mla_decode::bf16*>(out), lse, heads, topk, scale_log2,
                                                 n_slots, err);
  return cudaGetLastError();
}

}  // namespace dsv32

#else  // no CuTe headers

// qualified definitions: a signature that drifts from api/sparse_mla.h is a compile error, not a new overload
bool dsv32::sparse_mla_decode_sm90_built() { return false; }
cudaError_t dsv32::launch_sparse_mla_decode_sm90(const void*, const void*, bool, const int32_t*, const int32_t*, void*, float*, int,
                                          int, int, float, int64_t, int32_t*, cudaStream_t) {
  return cudaErrorInvalidDeviceFunction;
}

#endif
