// Lightning-indexer logits, sm_90a: wgmma e4m3 x e4m3 -> fp32 (SASS QGMMA) via CuTe's SS atoms. One
// warpgroup per CTA; a tile of N keys (N = 64: one cache page for decode; N = 128 for ragged prefill) sits
// in 128-byte-swizzled shared memory, and each query row's heads (64 per wgmma M tile) stream through:
//   acc[h, key] = q[h] . k[key] (4 x k32 steps), keysum[key] += w[h] * relu(acc) over the thread's rows,
//   reduced over the 8 row groups by shuffles and over the 4 warps in shared memory, times k_scale.
// Same semantics and launch contract as indexer/sm80/fp8_indexer_logits_sm80.cu (which Hopper uses when this is not built).
#include "../../api/indexer.h"
#include "../../common/bounds.cuh"
#include "../common/cache_layout.h"

#if defined(DSV32_WITH_CUTE)
#include <cutlass/arch/barrier.h>

#include "config.h"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DSV32_SM90A_DEVICE 1
#endif

namespace dsv32 {
namespace sm90 {
namespace {

using namespace cute;
using namespace logits;

template <int N>
__device__ __forceinline__ typename Cfg<N>::Smem& smem() {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t mis = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) & 1023u;
  return *reinterpret_cast<typename Cfg<N>::Smem*>(smem_raw + ((1024u - mis) & 1023u));
}

// rows [0, valid) of a row-major [*, 128] byte matrix into a K-major SW128 tile of `rows` rows (zero past valid)
template <class Layout>
__device__ __forceinline__ void load_tile(uint8_t* dst, const uint8_t* src, int rows, int valid) {
  for (int c = threadIdx.x; c < rows * 8; c += kThreads) {
    const int r = c >> 3, ch = c & 7;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid) v = *reinterpret_cast<const uint4*>(src + int64_t(r) * 128 + ch * 16);
    *reinterpret_cast<uint4*>(dst + tile_offset<Layout>(r, ch * 16)) = v;
  }
}

template <int N>
__device__ __forceinline__ void load_query(typename Cfg<N>::Smem& s, const uint8_t* q, const float* w, int heads) {
  const int tiles = (heads + 63) / 64;
  for (int ht = 0; ht < tiles; ++ht)
    load_tile<typename Cfg<N>::LayoutQ>(s.q[ht], q + int64_t(ht) * 64 * 128, 64, heads - ht * 64);
  for (int h = threadIdx.x; h < kMaxHeads; h += kThreads) s.w[h] = h < heads ? w[h] : 0.f;
}

// Scores for the N keys in smem against the query row in smem -> s.red[warp][key] partial sums.
template <int N>
__device__ __forceinline__ void score_keys(typename Cfg<N>::Smem& s, int heads) {
#if defined(DSV32_SM90A_DEVICE)
  using C = Cfg<N>;
  typename C::Mma mma;
  auto thr = mma.get_slice(threadIdx.x);
  Tensor sK = make_tensor(make_smem_ptr(s.k), typename C::LayoutK{});
  Tensor tCrB = thr.make_fragment_B(thr.partition_B(sK));
  auto acc = partition_fragment_C(mma, Shape<_64, Int<N>>{});
  Tensor coord = thr.partition_C(make_identity_tensor(Shape<_64, Int<N>>{}));
  constexpr int kCols = N / 4;  // columns per thread: 2 per 8-wide group
  float keysum[kCols];
#pragma unroll
  for (int i = 0; i < kCols; ++i) keysum[i] = 0.f;
  const int tiles = (heads + 63) / 64;
  for (int ht = 0; ht < tiles; ++ht) {
    Tensor sQ = make_tensor(make_smem_ptr(s.q[ht]), typename C::LayoutQ{});
    Tensor tCrA = thr.make_fragment_A(thr.partition_A(sQ));
    warpgroup_fence_operand(acc);
    warpgroup_arrive();
    mma.accumulate_ = GMMA::ScaleOut::Zero;
#pragma unroll
    for (int kk = 0; kk < size<2>(tCrA); ++kk) {
      cute::gemm(mma, tCrA(_, _, kk), tCrB(_, _, kk), acc);
      mma.accumulate_ = GMMA::ScaleOut::One;
    }
    warpgroup_commit_batch();
    warpgroup_wait<0>();
    warpgroup_fence_operand(acc);
    const int r0 = get<0>(coord(0));
    const float w0 = s.w[ht * 64 + r0], w1 = s.w[ht * 64 + r0 + 8];
    const int c0 = get<1>(coord(0));
#pragma unroll
    for (int i = 0; i < size(acc); ++i) {
      const int dc = get<1>(coord(i)) - c0;  // 0, 1, 8, 9, 16, ...: compile-time after unrolling
      const float wv = get<0>(coord(i)) == r0 ? w0 : w1;
      keysum[(dc & 1) + 2 * (dc >> 3)] += fmaxf(acc(i), 0.f) * wv;
    }
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int i = 0; i < kCols; ++i) {
    float v = keysum[i];
    v += __shfl_xor_sync(0xffffffffu, v, 4);
    v += __shfl_xor_sync(0xffffffffu, v, 8);
    v += __shfl_xor_sync(0xffffffffu, v, 16);
    keysum[i] = v;
  }
  if ((lane >> 2) == 0) {
    const int c0 = get<1>(coord(0));
#pragma unroll
    for (int i = 0; i < kCols; ++i) s.red[warp][c0 + (i & 1) + 8 * (i >> 1)] = keysum[i];
  }
#endif
}

template <int N>
__device__ __forceinline__ float reduce_key(const typename Cfg<N>::Smem& s, int key) {
  return (s.red[0][key] + s.red[1][key] + s.red[2][key] + s.red[3][key]) * s.k_scale[key];
}

__global__ void __launch_bounds__(kThreads) paged_logits_kernel(
    const uint8_t* __restrict__ q, const uint8_t* __restrict__ kv_cache, int64_t n_pages, const float* __restrict__ weights,
    const int32_t* __restrict__ context_lens, const int32_t* __restrict__ block_table, int64_t bt_stride,
    float* __restrict__ out, int64_t out_stride, int next_n, int heads, int max_context_len, int32_t* err) {
#if defined(DSV32_SM90A_DEVICE)
  constexpr int N = indexer::kPage;
  auto& s = smem<N>();
  const int b = blockIdx.y, pos0 = blockIdx.x * N;
  const int ctx = context_lens[b];
  const int cols = min(N, max_context_len - pos0);
  if (pos0 >= ctx) {
    for (int i = threadIdx.x; i < next_n * cols; i += kThreads)
      out[int64_t(b * next_n + i / cols) * out_stride + pos0 + i % cols] = -INFINITY;
    return;
  }
  const int64_t page = block_table[int64_t(b) * bt_stride + blockIdx.x];
  if (page < 0 || page >= n_pages) {  // a bad block-table entry: no keys here (never an illegal address)
    if (threadIdx.x == 0) report_oob(err, kOobBlockTable, page);
    for (int i = threadIdx.x; i < next_n * cols; i += kThreads)
      out[int64_t(b * next_n + i / cols) * out_stride + pos0 + i % cols] = -INFINITY;
    return;
  }
  const uint8_t* base = kv_cache + page * indexer::kPageBytes;
  load_tile<Cfg<N>::LayoutK>(s.k, base, N, N);
  for (int i = threadIdx.x; i < N; i += kThreads)
    s.k_scale[i] = reinterpret_cast<const float*>(base + indexer::kPageValueBytes)[i];
  for (int j = 0; j < next_n; ++j) {
    const int row = b * next_n + j;
    load_query<N>(s, q + int64_t(row) * heads * 128, weights + int64_t(row) * heads, heads);
    cutlass::arch::fence_view_async_shared();
    __syncthreads();
    score_keys<N>(s, heads);
    __syncthreads();
    const int end = indexer::paged_row_end(ctx, next_n, j);
    for (int i = threadIdx.x; i < cols; i += kThreads)
      out[int64_t(row) * out_stride + pos0 + i] = pos0 + i < end ? reduce_key<N>(s, i) : -INFINITY;
    __syncthreads();
  }
#endif
}

__global__ void __launch_bounds__(kThreads) ragged_logits_kernel(
    const uint8_t* __restrict__ q, const uint8_t* __restrict__ k, const float* __restrict__ k_scale,
    const float* __restrict__ weights, const int32_t* __restrict__ ks, const int32_t* __restrict__ ke,
    float* __restrict__ out, int seq, int heads, int n_keys) {
#if defined(DSV32_SM90A_DEVICE)
  constexpr int N = 128;
  auto& s = smem<N>();
  const int n0 = blockIdx.x * N;
  const int cols = min(N, n_keys - n0);
  const int row0 = blockIdx.y * kRowsPerCta;
  bool loaded = false;
  for (int row = row0; row < min(row0 + kRowsPerCta, seq); ++row) {
    const int lo = ks[row], hi = ke[row];
    float* o = out + int64_t(row) * n_keys + n0;
    if (hi <= n0 || lo >= n0 + cols) {
      for (int i = threadIdx.x; i < cols; i += kThreads) o[i] = -INFINITY;
      continue;
    }
    if (!loaded) {
      load_tile<Cfg<N>::LayoutK>(s.k, k + int64_t(n0) * 128, N, cols);
      for (int i = threadIdx.x; i < N; i += kThreads) s.k_scale[i] = i < cols ? k_scale[n0 + i] : 0.f;
      loaded = true;
    }
    load_query<N>(s, q + int64_t(row) * heads * 128, weights + int64_t(row) * heads, heads);
    cutlass::arch::fence_view_async_shared();
    __syncthreads();
    score_keys<N>(s, heads);
    __syncthreads();
    for (int i = threadIdx.x; i < cols; i += kThreads) {
      const int n = n0 + i;
      o[i] = (n >= lo && n < hi) ? reduce_key<N>(s, i) : -INFINITY;
    }
    __syncthreads();
  }
#endif
}

}  // namespace
}  // namespace sm90

bool indexer_logits_sm90_built() {
#if defined(DSV32_SM90A)
  return true;
#else
  return false;
#endif
}

cudaError_t launch_fp8_paged_indexer_logits_sm90(const uint8_t* q, const uint8_t* kv_cache, int64_t n_pages,
                                                 const float* weights, const int32_t* context_lens,
                                                 const int32_t* block_table, int64_t bt_stride, float* out,
                                                 int64_t out_stride, int batch, int next_n, int heads,
                                                 int max_context_len, int32_t* err, cudaStream_t stream) {
  if (!indexer_logits_sm90_built()) return cudaErrorInvalidDeviceFunction;
  if (heads > sm90::logits::kMaxHeads || heads <= 0) return cudaErrorInvalidValue;
  if (batch == 0 || max_context_len == 0) return cudaSuccess;
  const int smem = int(sizeof(sm90::logits::Cfg<64>::Smem)) + 1024;
  cudaError_t e = cudaFuncSetAttribute(sm90::paged_logits_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  dim3 grid(ceil_div(max_context_len, indexer::kPage), batch);
  sm90::paged_logits_kernel<<<grid, sm90::logits::kThreads, smem, stream>>>(
      q, kv_cache, n_pages, weights, context_lens, block_table, bt_stride, out, out_stride, next_n, heads,
      max_context_len, err);
  return cudaGetLastError();
}

cudaError_t launch_fp8_indexer_logits_sm90(const uint8_t* q, const uint8_t* k, const float* k_scale,
                                           const float* weights, const int32_t* ks, const int32_t* ke, float* out,
                                           int seq, int heads, int n_keys, cudaStream_t stream) {
  if (!indexer_logits_sm90_built()) return cudaErrorInvalidDeviceFunction;
  if (heads > sm90::logits::kMaxHeads || heads <= 0) return cudaErrorInvalidValue;
  if (seq == 0 || n_keys == 0) return cudaSuccess;
  const int smem = int(sizeof(sm90::logits::Cfg<128>::Smem)) + 1024;
  cudaError_t e = cudaFuncSetAttribute(sm90::ragged_logits_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  dim3 grid(ceil_div(n_keys, 128), ceil_div(seq, sm90::logits::kRowsPerCta));
  sm90::ragged_logits_kernel<<<grid, sm90::logits::kThreads, smem, stream>>>(q, k, k_scale, weights, ks, ke, out, seq, heads,
                                                                     n_keys);
  return cudaGetLastError();
}

}  // namespace dsv32

#else  // no CuTe headers

namespace dsv32 {
bool indexer_logits_sm90_built() { return false; }
cudaError_t launch_fp8_paged_indexer_logits_sm90(const uint8_t*, const uint8_t*, int64_t, const float*, const int32_t*,
                                                 const int32_t*, int64_t, float*, int64_t, int, int, int, int,
                                                 int32_t*, cudaStream_t) {
  return cudaErrorInvalidDeviceFunction;
}
cudaError_t launch_fp8_indexer_logits_sm90(const uint8_t*, const uint8_t*, const float*, const float*, const int32_t*,
                                           const int32_t*, float*, int, int, int, cudaStream_t) {
  return cudaErrorInvalidDeviceFunction;
}
}  // namespace dsv32

#endif
