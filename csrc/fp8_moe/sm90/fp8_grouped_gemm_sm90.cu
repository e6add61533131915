// Grouped FP8 GEMM (contiguous and masked), sm_90a: wgmma e4m3 x e4m3 -> fp32 (SASS QGMMA) through CuTe's
// SM90_64x128x32_F32E4M3E4M3_SS_TN atom, both operands from 128-byte-swizzled shared memory (GMMA K-major
// SW128 layout), a 4-stage cp.async pipeline, and DeepGEMM-style promotion: each 128-wide K block is one
// wgmma batch (4 x k32) into a fresh fp32 accumulator, added to the total times a_scale[row] * b_scale.
// CTA tile 128 x 128 x 128, 2 consumer warpgroups (64 rows each). Tiling as the sm80 kernel
// (fp8_moe/common/tile_scheduler.h). Built only with CuTe headers (DSV32_WITH_CUTE) and an sm_90a target.
#include "../../api/fp8_moe.h"
#include "../common/tile_scheduler.h"

#if defined(DSV32_WITH_CUTE)
#include <cuda_bf16.h>

#include <cute/arch/copy_sm80.hpp>
#include <cutlass/arch/barrier.h>

#include "config.h"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DSV32_SM90A_DEVICE 1
#endif

namespace dsv32 {
namespace sm90 {
namespace {

using namespace cute;
using namespace gemm;

struct Smem {
  alignas(1024) uint8_t a[cosize_v<SmemLayoutA>];
  alignas(1024) uint8_t b[cosize_v<SmemLayoutB>];
  int32_t ids[kBM];
  int32_t groups[kBM];
  int32_t n_groups;
};

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool pred) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(pred ? 16 : 0));
}

// Rows [0, a_rows) of A and [0, b_rows) of B, K block kb, into pipeline stage st (zero past the rows).
// The SW128 swizzle permutes 16-byte chunks within 128-byte rows, so one chunk is one cp.async.
__device__ __forceinline__ void load_stage(Smem& s, int st, const uint8_t* a, int a_rows, const uint8_t* b, int b_rows,
                                           int64_t k, int kb) {
  for (int c = threadIdx.x; c < kBM * 8; c += kThreads) {
    const int r = c >> 3, ch = c & 7;
    const bool ok = r < a_rows;
    cp_async_16(s.a + tile_offset<SmemLayoutA>(r, ch * 16, st), a + (ok ? r * k + int64_t(kb) * kBK + ch * 16 : 0), ok);
  }
  for (int c = threadIdx.x; c < kBN * 8; c += kThreads) {
    const int r = c >> 3, ch = c & 7;
    const bool ok = r < b_rows;
    cp_async_16(s.b + tile_offset<SmemLayoutB>(r, ch * 16, st), b + (ok ? r * k + int64_t(kb) * kBK + ch * 16 : 0), ok);
  }
}

// The SW128 layouts need 1024-byte-aligned operand tiles: align the dynamic buffer (1 KB slack).
__device__ __forceinline__ Smem& aligned_smem() {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t mis = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) & 1023u;
  return *reinterpret_cast<Smem*>(smem_raw + ((1024u - mis) & 1023u));
}

template <class Accum>
__device__ __forceinline__ void mainloop(Smem& s, Accum& total, const uint8_t* a, const float* a_scale, int a_rows,
                                         const uint8_t* b, const float* b_scale, int b_rows, int k) {
#if defined(DSV32_SM90A_DEVICE)
  TiledMma mma;
  auto thr = mma.get_slice(threadIdx.x);
  Tensor sA = make_tensor(make_smem_ptr(s.a), SmemLayoutA{});
  Tensor sB = make_tensor(make_smem_ptr(s.b), SmemLayoutB{});
  Tensor tCsA = thr.partition_A(sA);  // (MMA, MMA_M, MMA_K, PIPE)
  Tensor tCsB = thr.partition_B(sB);
  Tensor tCrA = thr.make_fragment_A(tCsA);  // smem descriptors
  Tensor tCrB = thr.make_fragment_B(tCsB);
  Tensor part = partition_fragment_C(mma, Shape<BM, BN>{});
  Tensor coord = thr.partition_C(make_identity_tensor(Shape<BM, BN>{}));
  const int k_blocks = k / kBK;
  clear(total);

#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < k_blocks) load_stage(s, st, a, a_rows, b, b_rows, k, st);
    cp_async_fence();
  }
  for (int kb = 0; kb < k_blocks; ++kb) {
    const int st = kb % kStages;
    cp_async_wait<kStages - 2>();
    cutlass::arch::fence_view_async_shared();  // cp.async (generic proxy) writes -> wgmma (async proxy) reads
    __syncthreads();
    {  // refill the stage consumed last iteration (all warpgroups are past its wgmma: waited below)
      const int nk = kb + kStages - 1;
      if (nk < k_blocks) load_stage(s, nk % kStages, a, a_rows, b, b_rows, k, nk);
      cp_async_fence();
    }
    warpgroup_fence_operand(part);
    warpgroup_arrive();
    mma.accumulate_ = GMMA::ScaleOut::Zero;
#pragma unroll
    for (int kk = 0; kk < size<2>(tCrA); ++kk) {
      cute::gemm(mma, tCrA(_, _, kk, st), tCrB(_, _, kk, st), part);
      mma.accumulate_ = GMMA::ScaleOut::One;
    }
    warpgroup_commit_batch();
    warpgroup_wait<0>();
    warpgroup_fence_operand(part);
    // promotion: a thread's accumulator covers two rows (r0, r0 + 8) of its warpgroup's 64
    const float sb = b_scale[kb];
    const int r0 = get<0>(coord(0)), r1 = r0 + 8;
    const float s0 = r0 < a_rows ? a_scale[moe::a_scale_index(r0, kb, k_blocks)] * sb : 0.f;
    const float s1 = r1 < a_rows ? a_scale[moe::a_scale_index(r1, kb, k_blocks)] * sb : 0.f;
#pragma unroll
    for (int i = 0; i < size(part); ++i) total(i) += part(i) * (get<0>(coord(i)) == r0 ? s0 : s1);
  }
  cp_async_wait<0>();
  __syncthreads();
#endif
}

template <class OutT, class Accum, class Keep, class Zero>
__device__ __forceinline__ void epilogue(const Accum& total, OutT* out, int rows, int n0, int n, Keep keep, Zero zero) {
  TiledMma mma;
  auto thr = mma.get_slice(threadIdx.x);
  Tensor coord = thr.partition_C(make_identity_tensor(Shape<BM, BN>{}));
#pragma unroll
  for (int i = 0; i < size(total); i += 2) {
    const int r = get<0>(coord(i)), c = n0 + get<1>(coord(i));
    if (r >= rows) continue;
    const bool kp = keep(r);
    if (!kp && !zero(r)) continue;
    const float x = kp ? total(i) : 0.f, y = kp ? total(i + 1) : 0.f;
    OutT* p = out + int64_t(r) * n + c;
    // accumulator elements i, i+1 are columns c, c+1 of one row in the wgmma C layout
    if constexpr (sizeof(OutT) == 4) {
      if (c < n) p[0] = x;
      if (c + 1 < n) p[1] = y;
    } else {
      if (c + 1 < n) {
        *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y);
      } else if (c < n) {
        p[0] = __float2bfloat16_rn(x);
      }
    }
  }
}

template <class OutT>
__global__ void __launch_bounds__(kThreads, 1) grouped_contiguous_kernel(GroupedGemmArgs p) {
#if defined(DSV32_SM90A_DEVICE)
  Smem& s = aligned_smem();
  const int m_tiles = ceil_div(p.m, kBM), n_tiles = ceil_div(p.n, kBN);
  int mt, nt;
  moe::tile_coords(blockIdx.x, m_tiles, n_tiles, kBand, mt, nt);
  const int m0 = mt * kBM, n0 = nt * kBN;
  const int rows = min(kBM, p.m - m0), b_rows = min(kBN, p.n - n0);
  const int n_blocks = ceil_div(p.n, kBN), k_blocks = p.k / kBK;
  for (int i = threadIdx.x; i < kBM; i += kThreads) s.ids[i] = i < rows ? p.m_indices[m0 + i] : -1;
  __syncthreads();
  if (threadIdx.x == 0) s.n_groups = moe::collect_groups(s.ids, rows, p.groups, s.groups, kBM);
  __syncthreads();
  OutT* out = static_cast<OutT*>(p.out) + int64_t(m0) * p.n;
  const int n_groups = s.n_groups;
  auto total = partition_fragment_C(TiledMma{}, Shape<BM, BN>{});
  clear(total);
  if (n_groups == 0) return;  // only padding rows: not written (no zero-fill)
  for (int gi = 0; gi < n_groups; ++gi) {
    const int grp = s.groups[gi];
    mainloop(s, total, p.a + int64_t(m0) * p.k, p.a_scale + int64_t(m0) * k_blocks, rows,
             p.b + (int64_t(grp) * p.n + n0) * p.k, p.b_scale + (int64_t(grp) * n_blocks + n0 / kBN) * k_blocks,
             b_rows, p.k);
    epilogue(total, out, rows, n0, p.n, [&](int r) { return s.ids[r] == grp; },
             [](int) { return false; });  // padding rows are not written
  }
#endif
}

template <class OutT>
__global__ void __launch_bounds__(kThreads, 1) grouped_masked_kernel(GroupedGemmArgs p) {
#if defined(DSV32_SM90A_DEVICE)
  Smem& s = aligned_smem();
  const int grp = blockIdx.z, m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int rows = min(kBM, p.m - m0), b_rows = min(kBN, p.n - n0);
  const int n_blocks = ceil_div(p.n, kBN), k_blocks = p.k / kBK;
  const int live = moe::masked_rows_in_tile(m0, kBM, p.m, p.masked_m[grp]);
  OutT* out = static_cast<OutT*>(p.out) + (int64_t(grp) * p.m + m0) * p.n;
  auto total = partition_fragment_C(TiledMma{}, Shape<BM, BN>{});
  clear(total);
  if (live == 0) return;  // past masked_m: no work, no stores
  mainloop(s, total, p.a + (int64_t(grp) * p.m + m0) * p.k, p.a_scale + (int64_t(grp) * p.m + m0) * k_blocks, live,
           p.b + (int64_t(grp) * p.n + n0) * p.k, p.b_scale + (int64_t(grp) * n_blocks + n0 / kBN) * k_blocks,
           b_rows, p.k);
  epilogue(total, out, rows, n0, p.n, [&](int r) { return r < live; }, [](int) { return false; });
#endif
}

template <class OutT>
cudaError_t launch_typed(const GroupedGemmArgs& p, cudaStream_t stream) {
  const int smem = int(sizeof(Smem)) + 1024;  // + slack to realign the dynamic buffer if needed
  const int m_tiles = ceil_div(p.m, kBM), n_tiles = ceil_div(p.n, kBN);
  if (p.m_indices) {
    cudaError_t e = cudaFuncSetAttribute(grouped_contiguous_kernel<OutT>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    grouped_contiguous_kernel<OutT><<<m_tiles * n_tiles, kThreads, smem, stream>>>(p);
  } else {
    cudaError_t e = cudaFuncSetAttribute(grouped_masked_kernel<OutT>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    grouped_masked_kernel<OutT><<<dim3(n_tiles, m_tiles, p.groups), kThreads, smem, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace
}  // namespace sm90

bool fp8_grouped_gemm_sm90_built() {
#if defined(DSV32_SM90A)
  return true;
#else
  return false;
#endif
}

cudaError_t launch_fp8_grouped_gemm_sm90(const GroupedGemmArgs& args, cudaStream_t stream) {
  if (!fp8_grouped_gemm_sm90_built()) return cudaErrorInvalidDeviceFunction;
  if (args.k % sm90::gemm::kBK != 0) return cudaErrorInvalidValue;
  if (args.m == 0 || args.n == 0 || args.groups == 0) return cudaSuccess;
  return args.out_fp32 ? sm90::launch_typed<float>(args, stream) : sm90::launch_typed<__nv_bfloat16>(args, stream);
}

}  // namespace dsv32

#else  // no CuTe headers: the sm80 kernel serves Hopper too

namespace dsv32 {
bool fp8_grouped_gemm_sm90_built() { return false; }
cudaError_t launch_fp8_grouped_gemm_sm90(const GroupedGemmArgs&, cudaStream_t) { return cudaErrorInvalidDeviceFunction; }
}  // namespace dsv32

#endif
