// Lightning-indexer logits, sm_80+ (mma.sync m16n8k16 fp16 on e4m3 bit-moved operands, exact products,
// fp32 sums). One CTA scores 64 keys (one cache page / one key tile) against a few query rows:
//   logit[row, key] = k_scale[key] * sum_h w[row, h] * relu(q[row, h] . k[key])
// Warp w takes head tiles w, w+4, ... (16 heads each); the 64 keys are 8 n-tiles of the mma.
#include "../../api/indexer.h"
#include "../../common/bounds.cuh"
#include "../../common/mma_sm80.cuh"
#include "../../common/swizzle.h"
#include "../common/cache_layout.h"

namespace dsv32 {
namespace sm80 {
namespace {

constexpr int kThreads = 128;
constexpr int kKeys = 64;
constexpr int kMaxHeads = 128;
constexpr int kRowsPerCta = 4;  // ragged prefill: query rows sharing one key tile

struct Smem {
  uint8_t k[kKeys * 128];      // swizzled 128-B rows
  uint8_t q[kMaxHeads * 128];  // swizzled 128-B rows
  float k_scale[kKeys];
  float w[kMaxHeads];
  float red[kThreads / 32][kKeys];
};

// 16-byte chunks of `rows` 128-byte rows from global (row stride 128 B) into swizzled smem; rows past
// `valid` are zero.
__device__ __forceinline__ void load_rows(uint8_t* dst, const uint8_t* src, int rows, int valid) {
  for (int c = threadIdx.x; c < rows * 8; c += kThreads) {
    const int r = c >> 3, ch = c & 7;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid) v = *reinterpret_cast<const uint4*>(src + r * 128 + ch * 16);
    *reinterpret_cast<uint4*>(dst + swizzle128_offset(r, ch)) = v;
  }
}

// Weighted relu-sum over all heads for the 64 keys in smem; result in s.red summed by the caller.
// Returns nothing; thread (warp w, lane < 4) wrote red[w][key] for its keys.
__device__ __forceinline__ void score_keys(Smem& s, int heads) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float keysum[8][2];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) keysum[nt][0] = keysum[nt][1] = 0.f;
  const int head_tiles = (heads + 15) >> 4;
  for (int ht = warp; ht < head_tiles; ht += kThreads / 32) {
    float c[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) c[nt][0] = c[nt][1] = c[nt][2] = c[nt][3] = 0.f;
    const int r0 = ht * 16 + g;
#pragma unroll
    for (int kc = 0; kc < 2; ++kc) {
      const uint4 qa = *reinterpret_cast<const uint4*>(s.q + swizzle128_offset(r0, 4 * kc + t));
      const uint4 qb = *reinterpret_cast<const uint4*>(s.q + swizzle128_offset(r0 + 8, 4 * kc + t));
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const uint4 kv = *reinterpret_cast<const uint4*>(s.k + swizzle128_offset(nt * 8 + g, 4 * kc + t));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          uint32_t a[4], b[2];
          fp8_frag_a(a, word(qa, j), word(qb, j));
          fp8_frag_b(b, word(kv, j));
          mma_f16(c[nt], a, b);
        }
      }
    }
    const float w0 = s.w[r0], w1 = s.w[r0 + 8];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      keysum[nt][0] += fmaxf(c[nt][0], 0.f) * w0 + fmaxf(c[nt][2], 0.f) * w1;
      keysum[nt][1] += fmaxf(c[nt][1], 0.f) * w0 + fmaxf(c[nt][3], 0.f) * w1;
    }
  }
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float v = keysum[nt][i];
      v += __shfl_xor_sync(0xffffffffu, v, 4);
      v += __shfl_xor_sync(0xffffffffu, v, 8);
      v += __shfl_xor_sync(0xffffffffu, v, 16);
      keysum[nt][i] = v;
    }
  if (g == 0) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      s.red[warp][nt * 8 + 2 * t] = keysum[nt][0];
      s.red[warp][nt * 8 + 2 * t + 1] = keysum[nt][1];
    }
  }
}

__device__ __forceinline__ void load_query(Smem& s, const uint8_t* q, const float* w, int heads) {
  load_rows(s.q, q, (heads + 15) & ~15, heads);
  for (int h = threadIdx.x; h < kMaxHeads; h += kThreads) s.w[h] = h < heads ? w[h] : 0.f;
}

__device__ __forceinline__ float reduce_key(const Smem& s, int key) {
  float v = 0.f;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) v += s.red[w][key];
  return v * s.k_scale[key] * kF16ProductUnscale;
}

__global__ void __launch_bounds__(kThreads, 2) paged_logits_kernel(
    const uint8_t* __restrict__ q, const uint8_t* __restrict__ kv_cache, int64_t n_pages, const float* __restrict__ weights,
    const int32_t* __restrict__ context_lens, const int32_t* __restrict__ block_table, int64_t bt_stride,
    float* __restrict__ out, int64_t out_stride, int next_n, int heads, int max_context_len, int32_t* err) {
  extern __shared__ __align__(16) uint8_t smem_raw[];
  Smem& s = *reinterpret_cast<Smem*>(smem_raw);
  const int b = blockIdx.y, page_idx = blockIdx.x;
  const int pos0 = page_idx * kKeys;
  const int ctx = context_lens[b];
  const int cols = min(kKeys, max_context_len - pos0);
  if (pos0 >= ctx) {  // the whole page is past this sequence
    for (int i = threadIdx.x; i < next_n * cols; i += kThreads)
      out[int64_t(b * next_n + i / cols) * out_stride + pos0 + i % cols] = -INFINITY;
    return;
  }
  const int64_t page = block_table[int64_t(b) * bt_stride + page_idx];
  if (page < 0 || page >= n_pages) {  // a bad block-table entry: no keys here (never an illegal address)
    if (threadIdx.x == 0) report_oob(err, kOobBlockTable, page);
    for (int i = threadIdx.x; i < next_n * cols; i += kThreads)
      out[int64_t(b * next_n + i / cols) * out_stride + pos0 + i % cols] = -INFINITY;
    return;
  }
  const uint8_t* base = kv_cache + page * indexer::kPageBytes;
  load_rows(s.k, base, kKeys, kKeys);
  for (int i = threadIdx.x; i < kKeys; i += kThreads)
    s.k_scale[i] = reinterpret_cast<const float*>(base + indexer::kPageValueBytes)[i];
  for (int j = 0; j < next_n; ++j) {
    const int row = b * next_n + j;
    load_query(s, q + int64_t(row) * heads * 128, weights + int64_t(row) * heads, heads);
    __syncthreads();
    score_keys(s, heads);
    __syncthreads();
    const int end = indexer::paged_row_end(ctx, next_n, j);
    for (int i = threadIdx.x; i < cols; i += kThreads) {
      const int pos = pos0 + i;
      out[int64_t(row) * out_stride + pos] = pos < end ? reduce_key(s, i) : -INFINITY;
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads, 2) ragged_logits_kernel(
    const uint8_t* __restrict__ q, const uint8_t* __restrict__ k, const float* __restrict__ k_scale,
    const float* __restrict__ weights, const int32_t* __restrict__ ks, const int32_t* __restrict__ ke,
    float* __restrict__ out, int seq, int heads, int n_keys) {
  extern __shared__ __align__(16) uint8_t smem_raw[];
  Smem& s = *reinterpret_cast<Smem*>(smem_raw);
  const int n0 = blockIdx.x * kKeys;
  const int cols = min(kKeys, n_keys - n0);
  const int row0 = blockIdx.y * kRowsPerCta;
  bool loaded = false;
  for (int row = row0; row < min(row0 + kRowsPerCta, seq); ++row) {
    const int lo = ks[row], hi = ke[row];
    float* o = out + int64_t(row) * n_keys + n0;
    if (hi <= n0 || lo >= n0 + cols) {  // key tile outside this row's window
      for (int i = threadIdx.x; i < cols; i += kThreads) o[i] = -INFINITY;
      continue;
    }
    if (!loaded) {
      load_rows(s.k, k + int64_t(n0) * 128, kKeys, cols);
      for (int i = threadIdx.x; i < kKeys; i += kThreads) s.k_scale[i] = i < cols ? k_scale[n0 + i] : 0.f;
      loaded = true;
    }
    load_query(s, q + int64_t(row) * heads * 128, weights + int64_t(row) * heads, heads);
    __syncthreads();
    score_keys(s, heads);
    __syncthreads();
    for (int i = threadIdx.x; i < cols; i += kThreads) {
      const int n = n0 + i;
      o[i] = (n >= lo && n < hi) ? reduce_key(s, i) : -INFINITY;
    }
    __syncthreads();
  }
}

}  // namespace
}  // namespace sm80

cudaError_t launch_fp8_paged_indexer_logits(const uint8_t* q, const uint8_t* kv_cache, int64_t n_pages,
                                            const float* weights, const int32_t* context_lens,
                                            const int32_t* block_table, int64_t bt_stride, float* out,
                                            int64_t out_stride, int batch, int next_n, int heads,
                                            int max_context_len, int32_t* err, cudaStream_t stream) {
  if (heads > sm80::kMaxHeads || heads <= 0) return cudaErrorInvalidValue;
  if (batch == 0 || max_context_len == 0) return cudaSuccess;
  const int smem = sizeof(sm80::Smem);
  cudaError_t e = cudaFuncSetAttribute(sm80::paged_logits_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  dim3 grid(ceil_div(max_context_len, sm80::kKeys), batch);
  sm80::paged_logits_kernel<<<grid, sm80::kThreads, smem, stream>>>(
      q, kv_cache, n_pages, weights, context_lens, block_table, bt_stride, out, out_stride, next_n, heads,
      max_context_len, err);
  return cudaGetLastError();
}

cudaError_t launch_fp8_indexer_logits(const uint8_t* q, const uint8_t* k, const float* k_scale,
                                      const float* weights, const int32_t* ks, const int32_t* ke, float* out,
                                      int seq, int heads, int n_keys, cudaStream_t stream) {
  if (heads > sm80::kMaxHeads || heads <= 0) return cudaErrorInvalidValue;
  if (seq == 0 || n_keys == 0) return cudaSuccess;
  const int smem = sizeof(sm80::Smem);
  cudaError_t e = cudaFuncSetAttribute(sm80::ragged_logits_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  dim3 grid(ceil_div(n_keys, sm80::kKeys), ceil_div(seq, sm80::kRowsPerCta));
  sm80::ragged_logits_kernel<<<grid, sm80::kThreads, smem, stream>>>(q, k, k_scale, weights, ks, ke, out, seq,
                                                                     heads, n_keys);
  return cudaGetLastError();
}

}  // namespace dsv32
