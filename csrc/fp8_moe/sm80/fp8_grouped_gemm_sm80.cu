// Grouped FP8 GEMM (contiguous and masked), sm_80+: mma.sync m16n8k16 fp16 on e4m3 bit-moved operands
// (exact products), two-stage cp.async pipeline, DeepGEMM-style promotion: each 128-wide K block is
// accumulated in fp32 from zero, then added to the total times a_scale[row, kb] * b_scale[g, n/128, kb].
// CTA tile 64 x 128 x 128, 8 warps as 2 (M) x 4 (N), each warp 32 x 32. Tiling: fp8_moe/common/tile_scheduler.h.
#include "../../api/fp8_moe.h"
#include "../../common/mma_sm80.cuh"
#include "../../common/swizzle.h"
#include "../common/tile_scheduler.h"

namespace dsv32 {
namespace sm80 {
namespace {

constexpr int kThreads = 256;
constexpr int kBM = 64, kBN = 128, kBK = 128, kStages = 2;
constexpr int kBand = 8;

struct GemmSmem {
  uint8_t a[kStages][kBM * kBK];
  uint8_t b[kStages][kBN * kBK];
  int32_t ids[kBM];
  int32_t groups[kBM];
  int32_t n_groups;
};

__device__ __forceinline__ void load_stage(GemmSmem& s, int stage, const uint8_t* a, int a_rows, const uint8_t* b,
                                           int b_rows, int64_t k, int kb) {
  for (int c = threadIdx.x; c < kBM * 8; c += kThreads) {
    const int r = c >> 3, ch = c & 7;
    const bool ok = r < a_rows;
    cp_async_16(s.a[stage] + swizzle128_offset(r, ch), a + (ok ? r * k + kb * kBK + ch * 16 : 0), ok);
  }
  for (int c = threadIdx.x; c < kBN * 8; c += kThreads) {
    const int r = c >> 3, ch = c & 7;
    const bool ok = r < b_rows;
    cp_async_16(s.b[stage] + swizzle128_offset(r, ch), b + (ok ? r * k + kb * kBK + ch * 16 : 0), ok);
  }
}

// One output tile (rows a[0, a_rows), B rows [n0, n0 + 128) of group g) into total[][][].
__device__ __forceinline__ void mainloop(GemmSmem& s, float (&total)[2][4][4], const uint8_t* a, const float* a_scale,
                                         int a_rows, const uint8_t* b, const float* b_scale, int b_rows, int n0,
                                         int n_blocks, int k) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wm = warp & 1, wn = warp >> 1;
  const int k_blocks = k / kBK;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) total[i][j][0] = total[i][j][1] = total[i][j][2] = total[i][j][3] = 0.f;

  load_stage(s, 0, a, a_rows, b, b_rows, k, 0);
  cp_async_commit();
  for (int kb = 0; kb < k_blocks; ++kb) {
    const int st = kb & 1;
    if (kb + 1 < k_blocks) load_stage(s, st ^ 1, a, a_rows, b, b_rows, k, kb + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    float part[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) part[i][j][0] = part[i][j][1] = part[i][j][2] = part[i][j][3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < 2; ++kc) {
      uint4 av[2][2], bv[4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          av[mt][h] = *reinterpret_cast<const uint4*>(s.a[st] + swizzle128_offset(wm * 32 + mt * 16 + h * 8 + g, 4 * kc + t));
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
        bv[nt] = *reinterpret_cast<const uint4*>(s.b[st] + swizzle128_offset(wn * 32 + nt * 8 + g, 4 * kc + t));
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t af[2][4], bf[4][2];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) fp8_frag_a(af[mt], word(av[mt][0], j), word(av[mt][1], j));
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) fp8_frag_b(bf[nt], word(bv[nt], j));
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) mma_f16(part[mt][nt], af[mt], bf[nt]);
      }
    }
    // promotion with the block scales (zero rows past a_rows read no scale)
    const float sb = b_scale[moe::b_scale_index(0, n0, kb, n_blocks, k_blocks)] * kF16ProductUnscale;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = wm * 32 + mt * 16 + h * 8 + g;
        const float sc = r < a_rows ? a_scale[moe::a_scale_index(r, kb, k_blocks)] * sb : 0.f;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          total[mt][nt][2 * h] += part[mt][nt][2 * h] * sc;
          total[mt][nt][2 * h + 1] += part[mt][nt][2 * h + 1] * sc;
        }
      }
    __syncthreads();  // this stage is overwritten by the next iteration's load
  }
}

template <class OutT>
__device__ __forceinline__ void store_pair(OutT* p, float x, float y, bool two) {
  if constexpr (sizeof(OutT) == 4) {
    p[0] = x;
    if (two) p[1] = y;
  } else {
    if (two) {
      *reinterpret_cast<uint32_t*>(p) = pack_bf16x2(x, y);
    } else {
      p[0] = __float2bfloat16_rn(x);
    }
  }
}

// Stores rows r of the tile where keep(r) (value) or zero(r) (zeros).
template <class OutT, class Keep, class Zero>
__device__ __forceinline__ void epilogue(const float (&total)[2][4][4], OutT* out, int rows, int n0, int n, Keep keep,
                                         Zero zero) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wm = warp & 1, wn = warp >> 1;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = wm * 32 + mt * 16 + h * 8 + g;
      if (r >= rows) continue;
      const bool kp = keep(r), zr = zero(r);
      if (!kp && !zr) continue;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int col = n0 + wn * 32 + nt * 8 + 2 * t;
        if (col >= n) continue;
        const float x = kp ? total[mt][nt][2 * h] : 0.f, y = kp ? total[mt][nt][2 * h + 1] : 0.f;
        store_pair(out + int64_t(r) * n + col, x, y, col + 1 < n);
      }
    }
}

template <class OutT>
__global__ void __launch_bounds__(kThreads) grouped_contiguous_kernel(GroupedGemmArgs p) {
  extern __shared__ __align__(16) uint8_t smem_raw[];
  GemmSmem& s = *reinterpret_cast<GemmSmem*>(smem_raw);
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
  float total[2][4][4];
  if (n_groups == 0) return;  // only padding rows: not written (no zero-fill)
  for (int gi = 0; gi < n_groups; ++gi) {
    const int grp = s.groups[gi];
    mainloop(s, total, p.a + int64_t(m0) * p.k, p.a_scale + int64_t(m0) * k_blocks, rows,
             p.b + (int64_t(grp) * p.n + n0) * p.k, p.b_scale + (int64_t(grp) * n_blocks + n0 / kBN) * k_blocks,
             b_rows, 0, n_blocks, p.k);
    epilogue(total, out, rows, n0, p.n, [&](int r) { return s.ids[r] == grp; },
             [](int) { return false; });  // padding rows are not written
  }
}

template <class OutT>
__global__ void __launch_bounds__(kThreads) grouped_masked_kernel(GroupedGemmArgs p) {
  extern __shared__ __align__(16) uint8_t smem_raw[];
  GemmSmem& s = *reinterpret_cast<GemmSmem*>(smem_raw);
  const int grp = blockIdx.z, m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int rows = min(kBM, p.m - m0), b_rows = min(kBN, p.n - n0);
  const int n_blocks = ceil_div(p.n, kBN), k_blocks = p.k / kBK;
  const int live = moe::masked_rows_in_tile(m0, kBM, p.m, p.masked_m[grp]);
  OutT* out = static_cast<OutT*>(p.out) + (int64_t(grp) * p.m + m0) * p.n;
  float total[2][4][4];
  if (live == 0) return;  // past masked_m: no work, no stores
  mainloop(s, total, p.a + (int64_t(grp) * p.m + m0) * p.k, p.a_scale + (int64_t(grp) * p.m + m0) * k_blocks, live,
           p.b + (int64_t(grp) * p.n + n0) * p.k, p.b_scale + (int64_t(grp) * n_blocks + n0 / kBN) * k_blocks,
           b_rows, 0, n_blocks, p.k);
  epilogue(total, out, rows, n0, p.n, [&](int r) { return r < live; }, [](int) { return false; });
}

template <class OutT>
cudaError_t launch_typed(const GroupedGemmArgs& p, cudaStream_t stream) {
  const int smem = sizeof(GemmSmem);
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
}  // namespace sm80

cudaError_t launch_fp8_grouped_gemm_sm80(const GroupedGemmArgs& args, cudaStream_t stream) {
  if (args.k % sm80::kBK != 0) return cudaErrorInvalidValue;
  if (args.m == 0 || args.n == 0 || args.groups == 0) return cudaSuccess;
  return args.out_fp32 ? sm80::launch_typed<float>(args, stream) : sm80::launch_typed<__nv_bfloat16>(args, stream);
}

}  // namespace dsv32
