// Indexer key cache (DeepGEMM paged layout) and paged row ranges; see ops/indexer/__init__.py.
//   kv_cache [num_pages, 64, 132] uint8; inside page p: 64 x 128 e4m3 keys (token-major), then 64 fp32.
#pragma once

#include "../../common/hd.h"

namespace dsv32 {
namespace indexer {

constexpr int kPage = 64;
constexpr int kHeadDim = 128;
constexpr int kBytesPerToken = kHeadDim + 4;           // 132
constexpr int kPageBytes = kPage * kBytesPerToken;     // 8448
constexpr int kPageValueBytes = kPage * kHeadDim;      // 8192: scales start here

DSV32_HD int64_t page_of(int64_t slot) { return slot / kPage; }
DSV32_HD int offset_in_page(int64_t slot) { return int(slot % kPage); }

// Byte offset of token `slot`'s 128 key bytes / its fp32 scale from the start of the cache.
DSV32_HD int64_t key_byte_offset(int64_t slot) {
  return page_of(slot) * kPageBytes + int64_t(offset_in_page(slot)) * kHeadDim;
}
DSV32_HD int64_t scale_byte_offset(int64_t slot) {
  return page_of(slot) * kPageBytes + kPageValueBytes + int64_t(offset_in_page(slot)) * 4;
}

// Slot of sequence position `pos` through a block table row: block_table[pos / 64] * 64 + pos % 64.
DSV32_HD int64_t position_to_slot(const int32_t* block_table_row, int64_t pos) {
  return int64_t(block_table_row[pos / kPage]) * kPage + pos % kPage;
}

// Paged logits (decode / MTP verify): query row j of next_n for a sequence holding context_len
// tokens (the next_n new ones included) sees positions [0, end) with end = context_len - next_n + j + 1.
DSV32_HD int paged_row_end(int context_len, int next_n, int j) {
  const int e = context_len - next_n + j + 1;
  return e < 0 ? 0 : (e > context_len ? context_len : e);
}

}  // namespace indexer
}  // namespace dsv32
