// Indexer top-k, sm_80+ (arch-agnostic CUDA): one CTA per row, radix select then a bitonic sort.
//   1. Over the row's window [ks, ke): a 256-bin shared-memory histogram of the top byte of the ordered
//      uint32 keys (radix_select.h) picks the byte b0 holding the k-th largest key; one split pass keeps
//      every key above b0 and copies the keys in b0 (candidates) to shared memory (re-read from the row
//      only if more than 4096 share b0).
//   2. Three more 8-bit passes over the candidates find the k-th largest key T and how many keys equal
//      to T to take; a last candidate pass gathers {key > T} and the first `take_equal` of {key == T}.
//   3. A bitonic network sorts the <= 2048 selected (key, position) pairs by descending key.
// Two reads of the row in the common case (vs five for a plain 4-pass radix select).
// Rows whose window holds <= topk keys skip step 1. Output positions are relative to ks, -1 padded.
#include "../../api/indexer.h"
#include "../../common/mma_sm80.cuh"
#include "../common/radix_select.h"

namespace dsv32 {
namespace sm80 {
namespace {

constexpr int kThreads = 512;
using topk::kMaxTopK;
using topk::kRadixBins;

constexpr int kCandidates = 4096;  // keys sharing the threshold's top byte, kept in shared memory

struct TopkSmem {
  uint32_t hist[kRadixBins];
  uint32_t key[kMaxTopK];
  int32_t pos[kMaxTopK];
  uint32_t cand_key[kCandidates];
  int32_t cand_pos[kCandidates];
  uint32_t bin, want, n_gt, n_eq, n_cand;
};

// Warp 0: the bin holding the want-th largest candidate (lane l owns bins 8l..8l+7).
__device__ __forceinline__ void find_bin(TopkSmem& s) {
  const int lane = threadIdx.x & 31;
  const uint32_t want = s.want;  // read before any lane of this warp can overwrite it below
  uint32_t h[8], total = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) total += (h[i] = s.hist[lane * 8 + i]);
  uint32_t incl = total;  // count in bins >= 8 * lane (suffix sum over lanes >= lane)
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const uint32_t v = __shfl_down_sync(0xffffffffu, incl, off);
    if (lane + off < 32) incl += v;
  }
  const uint32_t above = incl - total;
  if (above < want && want <= incl) {
    uint32_t w = want - above;
    int b = 7;
    for (; b > 0; --b) {
      if (h[b] >= w) break;
      w -= h[b];
    }
    s.bin = uint32_t(lane * 8 + b);
    s.want = w;
  }
}

__global__ void __launch_bounds__(kThreads) topk_kernel(const float* __restrict__ logits, int64_t ld,
                                                         const int32_t* __restrict__ ks_arr,
                                                         const int32_t* __restrict__ ke_arr,
                                                         int32_t* __restrict__ out, int n, int k) {
  extern __shared__ __align__(16) uint8_t smem_raw[];
  TopkSmem& s = *reinterpret_cast<TopkSmem*>(smem_raw);
  const int row = blockIdx.x, tid = threadIdx.x;
  const int ks = max(ks_arr[row], 0), ke = min(ke_arr[row], n);
  const int len = max(ke - ks, 0);
  const int kk = min(k, len);
  const float* x = logits + int64_t(row) * ld + ks;

  if (len <= k) {
    for (int i = tid; i < len; i += kThreads) {
      s.key[i] = topk::ordered_key(x[i]);
      s.pos[i] = i;
    }
  } else {
    // pass 0 over the row: histogram of the top byte, then one split pass: keys above the threshold
    // byte are selected outright, keys in it become candidates (kept in shared memory when they fit,
    // so passes 1-3 usually never touch global memory again).
    if (tid == 0) {
      s.want = uint32_t(kk);
      s.n_gt = s.n_cand = s.n_eq = 0;
    }
    for (int i = tid; i < kRadixBins; i += kThreads) s.hist[i] = 0;
    __syncthreads();
    for (int i = tid; i < len; i += kThreads) atomicAdd(&s.hist[topk::digit(topk::ordered_key(x[i]), 0)], 1u);
    __syncthreads();
    if (tid < 32) find_bin(s);
    __syncthreads();
    const uint32_t b0 = s.bin;
    for (int i = tid; i < len; i += kThreads) {
      const uint32_t key = topk::ordered_key(x[i]);
      const uint32_t d = topk::digit(key, 0);
      if (d > b0) {
        const uint32_t p = atomicAdd(&s.n_gt, 1u);
        s.key[p] = key;
        s.pos[p] = i;
      } else if (d == b0) {
        const uint32_t c = atomicAdd(&s.n_cand, 1u);
        if (c < kCandidates) {
          s.cand_key[c] = key;
          s.cand_pos[c] = i;
        }
      }
    }
    __syncthreads();
    const uint32_t n_cand = s.n_cand;
    const bool in_smem = n_cand <= uint32_t(kCandidates);
    // visit(key, pos) over the candidates: from shared memory, or (overflow) re-read from the row
    auto for_candidates = [&](auto&& visit) {
      if (in_smem) {
        for (uint32_t c = tid; c < n_cand; c += kThreads) visit(s.cand_key[c], s.cand_pos[c]);
      } else {
        for (int i = tid; i < len; i += kThreads) {
          const uint32_t key = topk::ordered_key(x[i]);
          if (topk::digit(key, 0) == b0) visit(key, i);
        }
      }
    };
    uint32_t prefix = b0 << (32 - topk::kRadixBits);
    for (int pass = 1; pass < topk::kPasses; ++pass) {
      for (int i = tid; i < kRadixBins; i += kThreads) s.hist[i] = 0;
      __syncthreads();
      const uint32_t mask = topk::prefix_mask(pass);
      for_candidates([&](uint32_t key, int) {
        if ((key & mask) == prefix) atomicAdd(&s.hist[topk::digit(key, pass)], 1u);
      });
      __syncthreads();
      if (tid < 32) find_bin(s);
      __syncthreads();
      prefix |= s.bin << (32 - topk::kRadixBits * (pass + 1));
    }
    // the top kk = every key > prefix (those above b0 are already in place) + take_eq keys == prefix
    const uint32_t take_eq = s.want;
    const uint32_t n_gt = uint32_t(kk) - take_eq;
    for_candidates([&](uint32_t key, int i) {
      if (key > prefix) {
        const uint32_t p = atomicAdd(&s.n_gt, 1u);
        s.key[p] = key;
        s.pos[p] = i;
      } else if (key == prefix) {
        const uint32_t e = atomicAdd(&s.n_eq, 1u);
        if (e < take_eq) {
          s.key[n_gt + e] = key;
          s.pos[n_gt + e] = i;
        }
      }
    });
    __syncthreads();
  }
  // pad to a power of two with keys below every real one, then sort descending
  const int p2 = topk::next_pow2(max(kk, 2));
  for (int i = kk + tid; i < p2; i += kThreads) {
    s.key[i] = 0u;
    s.pos[i] = -1;
  }
  __syncthreads();
  for (int size = 2; size <= p2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = tid; t < p2 / 2; t += kThreads) {
        const int i = 2 * stride * (t / stride) + (t % stride), j = i + stride;
        const bool desc = (i & size) == 0;  // final pass (size == p2): descending everywhere
        const uint32_t ki = s.key[i], kj = s.key[j];
        if (desc ? (ki < kj) : (ki > kj)) {
          s.key[i] = kj;
          s.key[j] = ki;
          const int32_t pi = s.pos[i];
          s.pos[i] = s.pos[j];
          s.pos[j] = pi;
        }
      }
      __syncthreads();
    }
  }
  int32_t* o = out + int64_t(row) * k;
  for (int i = tid; i < k; i += kThreads) o[i] = i < kk ? s.pos[i] : -1;
}

}  // namespace
}  // namespace sm80

cudaError_t launch_indexer_topk(const float* logits, int64_t ld, const int32_t* ks, const int32_t* ke,
                                int32_t* out, int rows, int n, int topk, cudaStream_t stream) {
  if (topk <= 0 || topk > topk::kMaxTopK) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const int smem = sizeof(sm80::TopkSmem);
  cudaError_t e = cudaFuncSetAttribute(sm80::topk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  sm80::topk_kernel<<<rows, sm80::kThreads, smem, stream>>>(logits, ld, ks, ke, out, n, topk);
  return cudaGetLastError();
}

}  // namespace dsv32
