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
#include "../api/indexer.h"
#include "../common/mma_sm80.cuh"
#include "common/radix_select.h"

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

// Sort s.key/pos [0, kk) by descending key (bitonic, padded to a power of two with keys below every real
// one) and store the positions to o [0, k), -1 padded. Call after a __syncthreads().
__device__ void bitonic_sort_store(TopkSmem& s, int kk, int k, int32_t* o) {
  const int tid = threadIdx.x;
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
  for (int i = tid; i < k; i += kThreads) o[i] = i < kk ? s.pos[i] : -1;
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
  bitonic_sort_store(s, kk, k, out + int64_t(row) * k);
}

// ----------------------------------------------------------------------------------------------------------
// Split path (few long rows): each row's window over S CTAs. The passes become launches of split_kernel
// (steps 1..5) whose per-chunk shared histograms are merged by atomics in a per-row global workspace; every
// CTA re-derives the radix state from the merged histograms of the previous launches (split_state), so the
// grid is static and nothing syncs with the host. The same algorithm as the Triton split path
// (triton_kernels/indexer.py): 1 top-byte histogram + key range; 2 a 2^9-bin histogram of key >> shift,
// shift fitted to the threshold byte's key range; 3 compaction (keys above the threshold's fine bin -> out,
// keys in it -> <= kSplitCap candidates), 3 row passes in all; heavy ties (bin > kSplitCap): 3-5 take 1-2
// 8-bit passes over the bits below the bin, then a compaction. split_final_kernel (one CTA per row) resolves
// the candidates in shared memory and sorts. Output slots are reserved by warp-aggregated atomics.
using topk::kFineBits;
using topk::kSplitCap;
constexpr int kFineBins = 1 << kFineBits;

struct SplitState {
  uint32_t prefix, remaining, shift, base;  // after step 1 (prefix = threshold byte << 24)
  uint32_t thr_bin, c2;                     // after step 2 (remaining updated)
  uint32_t s1, thr;                         // heavy ties: after steps 3 / 4 (thr = tie prefix, then threshold)
};

// Warp-wide: the bin of hist [NB] holding the want-th largest (bins above it all taken); every lane returns
// (bin, want inside it, count in it).
template <int NB>
__device__ __forceinline__ void warp_find_bin(const uint32_t* hist, uint32_t want, uint32_t& bin,
                                              uint32_t& want_in, uint32_t& cnt) {
  constexpr int kPer = NB / 32;
  const int lane = threadIdx.x & 31;
  uint32_t h[kPer], total = 0;
#pragma unroll
  for (int i = 0; i < kPer; ++i) total += (h[i] = hist[lane * kPer + i]);
  uint32_t incl = total;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const uint32_t v = __shfl_down_sync(0xffffffffu, incl, off);
    if (lane + off < 32) incl += v;
  }
  const uint32_t above = incl - total;
  const bool mine = above < want && want <= incl;
  uint32_t b = 0, w = want - above, c = 0;
  bool found = !mine;
#pragma unroll
  for (int i = kPer - 1; i >= 0; --i) {  // constant indices: h stays in registers
    if (!found) {
      if (h[i] >= w || i == 0) {
        b = uint32_t(i);
        c = h[i];
        found = true;
      } else {
        w -= h[i];
      }
    }
  }
  const unsigned owner = __ballot_sync(0xffffffffu, mine);
  const int src = owner ? __ffs(owner) - 1 : 0;
  bin = __shfl_sync(0xffffffffu, uint32_t(lane * kPer) + b, src);
  want_in = __shfl_sync(0xffffffffu, w, src);
  cnt = __shfl_sync(0xffffffffu, c, src);
}

// Warp 0: the radix state of a row after `done` split steps, into st (shared).
__device__ void split_state(const uint32_t* w, uint32_t k, int done, SplitState& st) {
  uint32_t b0, rem, cnt;
  warp_find_bin<256>(w + topk::kWsH8, k, b0, rem, cnt);
  const uint32_t prefix = b0 << 24, kmax = w[topk::kWsMM], kmin = ~w[topk::kWsMM + 1];
  const uint32_t lo = kmin > prefix ? kmin : prefix, hi = kmax < (prefix | 0xFFFFFFu) ? kmax : (prefix | 0xFFFFFFu);
  const uint32_t shift = topk::fine_shift(lo, hi), base = lo >> shift;
  uint32_t thr_bin = 0, c2 = 0, s1 = 0, thr = 0;
  if (done >= 2) {
    uint32_t d2;
    warp_find_bin<kFineBins>(w + topk::kWsH9, rem, d2, rem, c2);
    thr_bin = base + d2;
    s1 = shift > 8 ? shift - 8 : 0;
    if (done >= 3 && c2 > uint32_t(kSplitCap)) {
      uint32_t d;
      warp_find_bin<256>(w + topk::kWsHA, rem, d, rem, cnt);
      thr = (thr_bin << shift) | (d << s1);
      if (done >= 4 && s1 > 0) {
        warp_find_bin<256>(w + topk::kWsHB, rem, d, rem, cnt);
        thr |= d;
      }
    }
  }
  if ((threadIdx.x & 31) == 0) st = SplitState{prefix, rem, shift, base, thr_bin, c2, s1, thr};
}

// Warp-aggregated append: lanes with pred write val at dst[counter++] (slots >= limit dropped). Every lane
// of the warp must call it.
__device__ __forceinline__ void warp_append(bool pred, uint32_t* counter, int32_t* dst, int32_t val,
                                            uint32_t limit) {
  const unsigned mask = __ballot_sync(0xffffffffu, pred);
  if (!mask) return;
  const int lane = threadIdx.x & 31, leader = __ffs(mask) - 1;
  uint32_t base = 0;
  if (lane == leader) base = atomicAdd(counter, uint32_t(__popc(mask)));
  base = __shfl_sync(0xffffffffu, base, leader);
  const uint32_t p = base + __popc(mask & ((1u << lane) - 1));
  if (pred && p < limit) dst[p] = val;
}

__global__ void __launch_bounds__(kThreads, 1) split_kernel(const float* __restrict__ logits, int64_t ld,
                                                          const int32_t* __restrict__ ks_arr,
                                                          const int32_t* __restrict__ ke_arr,
                                                          int32_t* __restrict__ out, uint32_t* __restrict__ ws,
                                                          int n, int k, int splits, int step) {
  __shared__ uint32_t hist[kFineBins];
  __shared__ SplitState st;
  const int row = blockIdx.y, tid = threadIdx.x;
  const int ks = max(ks_arr[row], 0), ke = min(ke_arr[row], n);
  const int len = ke - ks;
  if (len <= k) return;  // everything selected: split_final_kernel
  uint32_t* w = ws + int64_t(row) * topk::kWsWords;
  // this CTA's chunk [c0, c1) of the window (kThreads-aligned lengths)
  const int chunk = ((len + splits - 1) / splits + kThreads - 1) / kThreads * kThreads;
  const int c0 = ks + blockIdx.x * chunk, c1 = min(c0 + chunk, ke);
  if (step >= 2) {
    if (tid < 32) split_state(w, uint32_t(k), step - 1, st);
    __syncthreads();
  }
  if (step >= 4 && st.c2 <= uint32_t(kSplitCap)) return;  // steps 4-5: heavy ties only
  if (step == 5 && st.s1 == 0) return;
  const float* x = logits + int64_t(row) * ld;
  const bool compact = (step == 3 && st.c2 <= uint32_t(kSplitCap)) || (step == 4 && st.s1 == 0) || step == 5;
  if (compact) {
    int32_t* o = out + int64_t(row) * k;
    if (step == 3) {  // fine bin above the threshold's -> out, in it -> candidates
      for (int b = c0; b < c1; b += kThreads) {
        const int i = b + tid;
        const uint32_t hi = i < c1 ? topk::ordered_key(x[i]) >> st.shift : 0u;
        const bool in = i < c1;
        warp_append(in && hi > st.thr_bin, w + topk::kWsCnt, o, i - ks, uint32_t(k));
        warp_append(in && hi == st.thr_bin, w + topk::kWsCnt + 1, reinterpret_cast<int32_t*>(w + topk::kWsCand),
                    i, uint32_t(kSplitCap));
      }
    } else {  // heavy ties: exact threshold thr, take `remaining` keys equal to it
      const uint32_t eq_base = uint32_t(k) - st.remaining;
      for (int b = c0; b < c1; b += kThreads) {
        const int i = b + tid;
        const uint32_t key = i < c1 ? topk::ordered_key(x[i]) : 0u;
        const bool in = i < c1;
        warp_append(in && key > st.thr, w + topk::kWsCnt, o, i - ks, eq_base);
        warp_append(in && key == st.thr, w + topk::kWsCnt + 2, o + eq_base, i - ks, st.remaining);
      }
    }
    return;
  }
  // a histogram step: 1 top byte (+ key range), 2 fine bins, 3 bits [s1, shift), 4 bits [0, s1)
  const int nb = step == 2 ? kFineBins : 256;
  for (int i = tid; i < nb; i += kThreads) hist[i] = 0;
  __syncthreads();
  uint32_t kmax = 0, kmin_inv = 0;
  for (int i = c0 + tid; i < c1; i += kThreads) {
    const uint32_t key = topk::ordered_key(x[i]);
    if (step == 1) {
      atomicAdd(&hist[key >> 24], 1u);
      kmax = max(kmax, key);
      kmin_inv = max(kmin_inv, ~key);
    } else if (step == 2) {
      if ((key >> 24) == (st.prefix >> 24)) atomicAdd(&hist[(key >> st.shift) - st.base], 1u);
    } else if (step == 3) {
      if ((key >> st.shift) == st.thr_bin) atomicAdd(&hist[(key >> st.s1) & ((1u << (st.shift - st.s1)) - 1)], 1u);
    } else {
      if ((key >> st.s1) == (st.thr >> st.s1)) atomicAdd(&hist[key & ((1u << st.s1) - 1)], 1u);
    }
  }
  if (step == 1) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      kmax = max(kmax, __shfl_xor_sync(0xffffffffu, kmax, off));
      kmin_inv = max(kmin_inv, __shfl_xor_sync(0xffffffffu, kmin_inv, off));
    }
    if ((tid & 31) == 0 && c1 > c0) {
      atomicMax(w + topk::kWsMM, kmax);
      atomicMax(w + topk::kWsMM + 1, kmin_inv);
    }
  }
  __syncthreads();
  uint32_t* g = w + (step == 1 ? topk::kWsH8 : step == 2 ? topk::kWsH9 : step == 3 ? topk::kWsHA : topk::kWsHB);
  for (int i = tid; i < nb; i += kThreads)
    if (hist[i]) atomicAdd(g + i, hist[i]);
}

__global__ void __launch_bounds__(kThreads, 1) split_final_kernel(const float* __restrict__ logits, int64_t ld,
                                                                const int32_t* __restrict__ ks_arr,
                                                                const int32_t* __restrict__ ke_arr,
                                                                int32_t* __restrict__ out,
                                                                const uint32_t* __restrict__ ws, int n, int k) {
  extern __shared__ __align__(16) uint8_t smem_raw[];
  TopkSmem& s = *reinterpret_cast<TopkSmem*>(smem_raw);
  __shared__ SplitState st;
  const int row = blockIdx.x, tid = threadIdx.x;
  const int ks = max(ks_arr[row], 0), ke = min(ke_arr[row], n);
  const int len = max(ke - ks, 0);
  const int kk = min(k, len);
  const float* x = logits + int64_t(row) * ld + ks;
  int32_t* o = out + int64_t(row) * k;
  if (len <= k) {
    for (int i = tid; i < len; i += kThreads) {
      s.key[i] = topk::ordered_key(x[i]);
      s.pos[i] = i;
    }
  } else {
    const uint32_t* w = ws + int64_t(row) * topk::kWsWords;
    if (tid < 32) split_state(w, uint32_t(k), 2, st);
    __syncthreads();
    if (st.c2 > uint32_t(kSplitCap)) {  // heavy ties: all k positions are in out already
      for (int i = tid; i < k; i += kThreads) {
        s.pos[i] = o[i];
        s.key[i] = topk::ordered_key(x[s.pos[i]]);
      }
    } else {  // k - remaining positions in out + c2 candidates sharing key >> shift: resolve bits [0, 16)
      const uint32_t n_gt = uint32_t(k) - st.remaining, n_cand = st.c2;
      const int32_t* cand = reinterpret_cast<const int32_t*>(w + topk::kWsCand);
      for (uint32_t i = tid; i < n_gt; i += kThreads) {
        s.pos[i] = o[i];
        s.key[i] = topk::ordered_key(x[s.pos[i]]);
      }
      for (uint32_t c = tid; c < n_cand; c += kThreads) {
        s.cand_pos[c] = cand[c] - ks;
        s.cand_key[c] = topk::ordered_key(x[cand[c] - ks]);
      }
      if (tid == 0) {
        s.want = st.remaining;
        s.n_gt = n_gt;
        s.n_eq = 0;
      }
      uint32_t prefix = (st.thr_bin << st.shift) & 0xFFFF0000u;
      for (int pass = 2; pass < topk::kPasses; ++pass) {
        for (int i = tid; i < kRadixBins; i += kThreads) s.hist[i] = 0;
        __syncthreads();
        const uint32_t mask = topk::prefix_mask(pass);
        for (uint32_t c = tid; c < n_cand; c += kThreads)
          if ((s.cand_key[c] & mask) == prefix) atomicAdd(&s.hist[topk::digit(s.cand_key[c], pass)], 1u);
        __syncthreads();
        if (tid < 32) find_bin(s);
        __syncthreads();
        prefix |= s.bin << (32 - topk::kRadixBits * (pass + 1));
      }
      const uint32_t take_eq = s.want, n_above = uint32_t(k) - take_eq;
      for (uint32_t c = tid; c < n_cand; c += kThreads) {
        const uint32_t key = s.cand_key[c];
        if (key > prefix) {
          const uint32_t p = atomicAdd(&s.n_gt, 1u);
          s.key[p] = key;
          s.pos[p] = s.cand_pos[c];
        } else if (key == prefix) {
          const uint32_t e = atomicAdd(&s.n_eq, 1u);
          if (e < take_eq) {
            s.key[n_above + e] = key;
            s.pos[n_above + e] = s.cand_pos[c];
          }
        }
      }
    }
  }
  __syncthreads();
  bitonic_sort_store(s, kk, k, o);
}

}  // namespace
}  // namespace sm80

size_t indexer_topk_workspace_bytes(int rows, int n, int num_sms) {
  return topk::split_count(rows, n, num_sms) > 1 ? size_t(rows) * topk::kWsWords * sizeof(uint32_t) : 0;
}

cudaError_t launch_indexer_topk(const float* logits, int64_t ld, const int32_t* ks, const int32_t* ke,
                                int32_t* out, int rows, int n, int topk, void* workspace, int num_sms,
                                cudaStream_t stream) {
  if (topk <= 0 || topk > topk::kMaxTopK) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const int smem = sizeof(sm80::TopkSmem);
  const int splits = topk::split_count(rows, n, num_sms);
  if (splits == 1) {
    cudaError_t e = cudaFuncSetAttribute(sm80::topk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    sm80::topk_kernel<<<rows, sm80::kThreads, smem, stream>>>(logits, ld, ks, ke, out, n, topk);
    return cudaGetLastError();
  }
  if (workspace == nullptr) return cudaErrorInvalidValue;
  cudaError_t e = cudaFuncSetAttribute(sm80::split_final_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  e = cudaMemsetAsync(workspace, 0, indexer_topk_workspace_bytes(rows, n, num_sms), stream);
  if (e != cudaSuccess) return e;
  uint32_t* ws = static_cast<uint32_t*>(workspace);
  for (int step = 1; step <= 5; ++step) {
    sm80::split_kernel<<<dim3(splits, rows), sm80::kThreads, 0, stream>>>(logits, ld, ks, ke, out, ws, n, topk,
                                                                          splits, step);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
  }
  sm80::split_final_kernel<<<rows, sm80::kThreads, smem, stream>>>(logits, ld, ks, ke, out, ws, n, topk);
  return cudaGetLastError();
}

}  // namespace dsv32
