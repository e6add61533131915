// Radix top-k selection: the integer side shared by the CUDA kernel (indexer/indexer_topk.cu) and the
// host unit test. fp32 logits map to uint32 keys whose unsigned order is the float order (-inf lowest
// of the non-NaN values); the k-th largest key is found 8 bits at a time from the top (4 passes of a
// 256-bin histogram over the candidates that still share the found prefix).
#pragma once

#include "../../common/hd.h"

namespace dsv32 {
namespace topk {

constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kPasses = 32 / kRadixBits;
constexpr int kMaxTopK = 2048;  // selected keys are sorted in shared memory

DSV32_HD uint32_t ordered_key(float x) {
  const uint32_t u = f32_bits(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
DSV32_HD float key_to_float(uint32_t k) {
  return bits_f32((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Digit of pass p (p = 0 is the most significant byte) and the mask of the bits already fixed.
DSV32_HD uint32_t digit(uint32_t key, int pass) { return (key >> (32 - kRadixBits * (pass + 1))) & (kRadixBins - 1); }
DSV32_HD uint32_t prefix_mask(int pass) { return pass == 0 ? 0u : ~0u << (32 - kRadixBits * pass); }

// Given the histogram of digits among candidates matching the prefix and how many of the largest
// are still wanted (1 <= want <= sum(hist)), return the bin holding the want-th largest and set
// `want` to how many are wanted inside that bin (the bins above it are all taken).
DSV32_HD int select_bin(const uint32_t* hist, uint32_t& want) {
  for (int b = kRadixBins - 1; b >= 0; --b) {
    if (hist[b] >= want) return b;
    want -= hist[b];
  }
  return 0;  // unreachable when want <= sum(hist)
}

// Host/reference form of the whole selection over keys[0, n) (used by the unit test; the kernel runs
// the same passes with a block-wide histogram). Returns the threshold key T and sets `take_equal` to
// how many keys equal to T belong to the top k: the top k = {key > T} + take_equal of {key == T}.
DSV32_HD uint32_t radix_threshold(const uint32_t* keys, int n, uint32_t k, uint32_t& take_equal) {
  uint32_t prefix = 0, want = k;
  for (int pass = 0; pass < kPasses; ++pass) {
    uint32_t hist[kRadixBins];
    for (int b = 0; b < kRadixBins; ++b) hist[b] = 0;
    const uint32_t mask = prefix_mask(pass);
    for (int i = 0; i < n; ++i)
      if ((keys[i] & mask) == prefix) ++hist[digit(keys[i], pass)];
    const int b = select_bin(hist, want);
    prefix |= uint32_t(b) << (32 - kRadixBits * (pass + 1));
  }
  take_equal = want;
  return prefix;
}

// Multi-CTA top-k (indexer/indexer_topk.cu, split path): few long rows are split over several CTAs
// per row, one kBlock-key chunk each at least; 1 = the one-CTA-per-row kernel. Host-known shapes only.
constexpr int kSplitBlock = 4096;   // min keys per CTA
constexpr int kMinSplits = 4;       // fewer: the one-CTA kernel
constexpr int kFineBits = 9;        // the adaptive fine histogram (2^9 bins)
constexpr int kSplitCap = 2048;     // candidates (keys in the threshold's fine bin) resolved by the final kernel
// per-row workspace words (uint32): hist8 [256], fine [512], tie hists [256] x 2, counters [gt, cand, eq, -],
// key range [kmax, ~kmin] (0 is the identity of both atomicMax), then the candidate positions [kSplitCap]
constexpr int kWsH8 = 0, kWsH9 = 256, kWsHA = 256 + (1 << kFineBits), kWsHB = kWsHA + 256, kWsCnt = kWsHB + 256,
              kWsMM = kWsCnt + 4, kWsCand = kWsMM + 4, kWsWords = kWsCand + kSplitCap;
DSV32_HD int split_count(int rows, int n, int num_sms) {
  if (rows <= 0) return 1;
  const int by_keys = (n + kSplitBlock - 1) / kSplitBlock, by_sms = (num_sms + rows - 1) / rows;
  const int s = by_keys < by_sms ? by_keys : by_sms;
  return s >= kMinSplits ? s : 1;
}
// The smallest shift with (hi >> shift) - (lo >> shift) < 2^kFineBits: the fine histogram's bin width.
DSV32_HD uint32_t fine_shift(uint32_t lo, uint32_t hi) {
  uint32_t shift = 0;
  while ((hi >> shift) - (lo >> shift) >= (1u << kFineBits)) ++shift;
  return shift;
}

DSV32_HD int next_pow2(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

}  // namespace topk
}  // namespace dsv32
