// Host driver for the __host__ __device__ headers in csrc/: tests/cuda/test_host_headers.py compiles it
// with g++ (and nvcc host-only) and feeds raw little-endian arrays on stdin; results go to stdout as raw
// arrays, checked in Python against the torch references (ops/*/naive.py).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/fp8.h"
#include "common/swizzle.h"
#include "fp8_moe/common/tile_scheduler.h"
#include "indexer/common/cache_layout.h"
#include "indexer/common/radix_select.h"
#include "sparse_mla/common/cache_layout.h"

using namespace dsv32;

static std::vector<char> read_stdin() {
  std::vector<char> buf;
  char tmp[1 << 16];
  size_t n;
  while ((n = fread(tmp, 1, sizeof(tmp), stdin)) > 0) buf.insert(buf.end(), tmp, tmp + n);
  return buf;
}
template <class T> static std::vector<T> as(const std::vector<char>& b) {
  std::vector<T> v(b.size() / sizeof(T));
  memcpy(v.data(), b.data(), v.size() * sizeof(T));
  return v;
}
template <class T> static void emit(const std::vector<T>& v) { fwrite(v.data(), sizeof(T), v.size(), stdout); }

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string mode = argv[1];
  const std::vector<char> in = read_stdin();
  if (mode == "e4m3_decode") {  // stdin: nothing -> 256 fp32
    std::vector<float> out(256);
    for (int b = 0; b < 256; ++b) out[b] = e4m3_to_f32(uint8_t(b));
    emit(out);
  } else if (mode == "e4m3_encode") {  // stdin fp32[n] -> uint8[n]
    auto x = as<float>(in);
    std::vector<uint8_t> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = f32_to_e4m3(x[i]);
    emit(out);
  } else if (mode == "ue8m0") {  // stdin fp32 amax[n] -> fp32 scale[n], uint8 exponent[n]
    auto x = as<float>(in);
    std::vector<float> s(x.size());
    std::vector<uint8_t> e(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      s[i] = ue8m0_scale(x[i]);
      e[i] = ue8m0_exponent(s[i]);
      if (ue8m0_from_exponent(e[i]) != s[i]) return 3;
    }
    emit(s);
    emit(e);
  } else if (mode == "f16x2") {  // stdin uint32 words[n] -> fp32[4n]: decoded fp16 pattern * 256
    auto w = as<uint32_t>(in);
    std::vector<float> out;
    for (uint32_t x : w) {
      uint32_t lo, hi;
      e4m3x4_to_f16x2_scaled(x, lo, hi);
      out.push_back(f16_bits_to_f32(uint16_t(lo)) * kF16OperandUnscale);
      out.push_back(f16_bits_to_f32(uint16_t(lo >> 16)) * kF16OperandUnscale);
      out.push_back(f16_bits_to_f32(uint16_t(hi)) * kF16OperandUnscale);
      out.push_back(f16_bits_to_f32(uint16_t(hi >> 16)) * kF16OperandUnscale);
    }
    emit(out);
  } else if (mode == "bf16") {  // stdin fp32[n] -> uint16[n]
    auto x = as<float>(in);
    std::vector<uint16_t> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = f32_to_bf16_bits(x[i]);
    emit(out);
  } else if (mode == "topk") {  // argv: rows n k; stdin fp32[rows*n] -> int32[rows*k] (-1 pad), sorted desc
    const int rows = atoi(argv[2]), n = atoi(argv[3]), k = atoi(argv[4]);
    auto x = as<float>(in);
    std::vector<int32_t> out(size_t(rows) * k, -1);
    std::vector<uint32_t> keys(n);
    for (int r = 0; r < rows; ++r) {
      for (int i = 0; i < n; ++i) keys[i] = topk::ordered_key(x[size_t(r) * n + i]);
      for (int i = 0; i < n; ++i)
        if (topk::key_to_float(keys[i]) != x[size_t(r) * n + i] && x[size_t(r) * n + i] == x[size_t(r) * n + i]) return 4;
      const int kk = k < n ? k : n;
      uint32_t take_eq = 0;
      const uint32_t t = topk::radix_threshold(keys.data(), n, uint32_t(kk), take_eq);
      std::vector<int32_t> sel;
      for (int i = 0; i < n; ++i) {
        if (keys[i] > t) sel.push_back(i);
        else if (keys[i] == t && take_eq > 0) { sel.push_back(i); --take_eq; }
      }
      if (int(sel.size()) != kk) return 5;
      // insertion sort by key, descending (the kernel sorts with a bitonic network)
      for (size_t i = 1; i < sel.size(); ++i)
        for (size_t j = i; j > 0 && keys[sel[j]] > keys[sel[j - 1]]; --j) std::swap(sel[j], sel[j - 1]);
      for (int i = 0; i < kk; ++i) out[size_t(r) * k + i] = sel[i];
    }
    emit(out);
  } else if (mode == "split_count") {  // stdin int32 triples (rows, n, num_sms) -> int32 splits
    auto v = as<int32_t>(in);
    std::vector<int32_t> out;
    for (size_t i = 0; i + 2 < v.size(); i += 3) out.push_back(topk::split_count(v[i], v[i + 1], v[i + 2]));
    emit(out);
  } else if (mode == "topk_split") {  // argv: rows n k splits cap; stdin fp32[rows*n] -> int32[rows*k]
    // Serial model of indexer_topk.cu's split path (steps 1-5 over `splits` chunks, histograms merged as the
    // atomics do, then the final candidate resolution), on the header's constants and helpers.
    const int rows = atoi(argv[2]), n = atoi(argv[3]), k = atoi(argv[4]), splits = atoi(argv[5]);
    const uint32_t cap = uint32_t(atoi(argv[6]));
    auto x = as<float>(in);
    std::vector<int32_t> out(size_t(rows) * k, -1);
    for (int r = 0; r < rows; ++r) {
      std::vector<uint32_t> key(n);
      for (int i = 0; i < n; ++i) key[i] = topk::ordered_key(x[size_t(r) * n + i]);
      std::vector<int32_t> sel;
      if (n <= k) {
        for (int i = 0; i < n; ++i) sel.push_back(i);
      } else {
        const int chunk = ((n + splits - 1) / splits + 511) / 512 * 512;
        auto for_keys = [&](auto&& f) {  // chunk by chunk, as the CTAs of one step
          for (int c = 0; c < splits; ++c)
            for (int i = c * chunk; i < n && i < (c + 1) * chunk; ++i) f(i, key[i]);
        };
        uint32_t h8[256] = {}, h9[1 << topk::kFineBits] = {}, kmax = 0, kmin_inv = 0;
        for_keys([&](int, uint32_t kk) { ++h8[kk >> 24]; kmax = kmax > kk ? kmax : kk; kmin_inv = kmin_inv > ~kk ? kmin_inv : ~kk; });
        uint32_t rem = uint32_t(k);
        const uint32_t prefix = uint32_t(topk::select_bin(h8, rem)) << 24, kmin = ~kmin_inv;
        const uint32_t lo = kmin > prefix ? kmin : prefix, hi = kmax < (prefix | 0xFFFFFFu) ? kmax : (prefix | 0xFFFFFFu);
        const uint32_t shift = topk::fine_shift(lo, hi), base = lo >> shift;
        for_keys([&](int, uint32_t kk) { if ((kk >> 24) == (prefix >> 24)) ++h9[(kk >> shift) - base]; });
        uint32_t d2 = 0, c2 = 0;  // select_bin over 2^kFineBits bins
        for (int b = (1 << topk::kFineBits) - 1; b >= 0; --b) {
          if (h9[b] >= rem) { d2 = uint32_t(b); break; }
          rem -= h9[b];
        }
        c2 = h9[d2];
        const uint32_t thr_bin = base + d2, s1 = shift > 8 ? shift - 8 : 0;
        uint32_t thr = 0;
        if (c2 <= cap) {  // step 3 compaction + final resolution of bits [0, 16) over the candidates
          std::vector<int32_t> cand;
          for_keys([&](int i, uint32_t kk) { if ((kk >> shift) > thr_bin) sel.push_back(i); else if ((kk >> shift) == thr_bin) cand.push_back(i); });
          uint32_t p = (thr_bin << shift) & 0xFFFF0000u;
          for (int pass = 2; pass < topk::kPasses; ++pass) {
            uint32_t h[256] = {};
            for (int i : cand) if ((key[i] & topk::prefix_mask(pass)) == p) ++h[topk::digit(key[i], pass)];
            p |= uint32_t(topk::select_bin(h, rem)) << (32 - 8 * (pass + 1));
          }
          thr = p;
          for (int i : cand) if (key[i] > thr) sel.push_back(i);
          for (int i : cand) if (key[i] == thr && rem) { sel.push_back(i); --rem; }
        } else {  // heavy ties: bits [s1, shift), then [0, s1), then compaction
          uint32_t ha[256] = {};
          for_keys([&](int, uint32_t kk) { if ((kk >> shift) == thr_bin) ++ha[(kk >> s1) & ((1u << (shift - s1)) - 1)]; });
          thr = (thr_bin << shift) | (uint32_t(topk::select_bin(ha, rem)) << s1);
          if (s1 > 0) {
            uint32_t hb[256] = {};
            for_keys([&](int, uint32_t kk) { if ((kk >> s1) == (thr >> s1)) ++hb[kk & ((1u << s1) - 1)]; });
            thr |= uint32_t(topk::select_bin(hb, rem));
          }
          for_keys([&](int i, uint32_t kk) { if (kk > thr) sel.push_back(i); });
          for_keys([&](int i, uint32_t kk) { if (kk == thr && rem) { sel.push_back(i); --rem; } });
        }
      }
      const int kk = n < k ? n : k;
      if (int(sel.size()) != kk) return 6;
      for (size_t i = 1; i < sel.size(); ++i)
        for (size_t j = i; j > 0 && key[sel[j]] > key[sel[j - 1]]; --j) std::swap(sel[j], sel[j - 1]);
      for (int i = 0; i < kk; ++i) out[size_t(r) * k + i] = sel[i];
    }
    emit(out);
  } else if (mode == "indexer_offsets") {  // stdin int64 slots[n] -> int64 key_off[n], scale_off[n]
    auto s = as<int64_t>(in);
    std::vector<int64_t> ko(s.size()), so(s.size());
    for (size_t i = 0; i < s.size(); ++i) { ko[i] = indexer::key_byte_offset(s[i]); so[i] = indexer::scale_byte_offset(s[i]); }
    emit(ko);
    emit(so);
  } else if (mode == "paged_slots") {  // argv: max_pages; stdin int32 table[max_pages] then int32 pos[n]
    const int mp = atoi(argv[2]);
    auto v = as<int32_t>(in);
    std::vector<int32_t> out;
    for (size_t i = mp; i < v.size(); ++i) out.push_back(int32_t(indexer::position_to_slot(v.data(), v[i])));
    emit(out);
  } else if (mode == "paged_row_end") {  // stdin int32 triples (ctx, next_n, j) -> int32
    auto v = as<int32_t>(in);
    std::vector<int32_t> out;
    for (size_t i = 0; i + 2 < v.size(); i += 3) out.push_back(indexer::paged_row_end(v[i], v[i + 1], v[i + 2]));
    emit(out);
  } else if (mode == "mla_encode") {  // stdin fp32 [n, 576] -> uint8 [n, 656] then fp32 [n, 576] decoded
    auto x = as<float>(in);
    const size_t n = x.size() / mla::kHead;
    std::vector<uint8_t> rows(n * mla::kFp8RowBytes);
    std::vector<float> dec(n * mla::kHead);
    for (size_t t = 0; t < n; ++t) {
      uint8_t* row = rows.data() + mla::fp8_row_offset(t);
      mla::fp8_row_encode(&x[t * mla::kHead], &x[t * mla::kHead + mla::kKvLora], row);
      for (int d = 0; d < mla::kHead; ++d) dec[t * mla::kHead + d] = mla::fp8_row_element(row, d);
    }
    emit(rows);
    emit(dec);
  } else if (mode == "collect_groups") {  // argv: rows_per_tile num_groups; stdin int32 ids -> per tile: count, groups[rows]
    const int bm = atoi(argv[2]), ng = atoi(argv[3]);
    auto ids = as<int32_t>(in);
    std::vector<int32_t> out;
    for (size_t m0 = 0; m0 < ids.size(); m0 += bm) {
      const int rows = int(ids.size() - m0) < bm ? int(ids.size() - m0) : bm;
      std::vector<int32_t> g(bm, -1);
      const int c = moe::collect_groups(&ids[m0], rows, ng, g.data(), bm);
      out.push_back(c);
      out.insert(out.end(), g.begin(), g.end());
    }
    emit(out);
  } else if (mode == "tile_coords") {  // argv: m_tiles n_tiles band -> int32 pairs
    const int mt = atoi(argv[2]), nt = atoi(argv[3]), band = atoi(argv[4]);
    std::vector<int32_t> out;
    for (int i = 0; i < mt * nt; ++i) {
      int a, b;
      moe::tile_coords(i, mt, nt, band, a, b);
      out.push_back(a);
      out.push_back(b);
    }
    emit(out);
  } else if (mode == "masked_rows") {  // stdin int32 quads (m0, bm, m, masked_m) -> int32
    auto v = as<int32_t>(in);
    std::vector<int32_t> out;
    for (size_t i = 0; i + 3 < v.size(); i += 4) out.push_back(moe::masked_rows_in_tile(v[i], v[i + 1], v[i + 2], v[i + 3]));
    emit(out);
  } else if (mode == "swizzle") {  // -> int32 offsets of (row 0..63, chunk 0..7)
    std::vector<int32_t> out;
    for (int r = 0; r < 64; ++r)
      for (int c = 0; c < 8; ++c) out.push_back(swizzle128_offset(r, c));
    emit(out);
  } else {
    return 2;
  }
  return 0;
}
