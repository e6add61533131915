// Shared-memory layout for 128-byte operand rows (128 e4m3 values = one K block) read by mma.sync
// fragments. Fragment reads take 16 B per thread at chunk (4 * half + t) of rows g and g + 8, so the
// 8 threads of a quarter-warp touch rows r, r+1 with chunks {4h..4h+3}. XOR-ing the chunk index with
// 4 * (row & 1) puts rows r and r+1 in opposite 64-byte halves: conflict-free, no padding.
#pragma once

#include "hd.h"

namespace dsv32 {

constexpr int kRowBytes128 = 128;

DSV32_HD int swizzle128_chunk(int row, int chunk) { return chunk ^ ((row & 1) << 2); }
DSV32_HD int swizzle128_offset(int row, int chunk) { return row * kRowBytes128 + swizzle128_chunk(row, chunk) * 16; }

}  // namespace dsv32
