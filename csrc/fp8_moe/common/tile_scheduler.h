// Grouped FP8 GEMM tiling (shared by the sm80 and sm90 kernels, unit-tested on the host).
//   contiguous: a [M, K], m_indices [M] (group of each row, -1 padding); one CTA per (M tile, N tile).
//               A tile's rows may span several groups (unaligned input): the CTA runs its main loop once
//               per distinct valid group in the tile and each epilogue stores only that group's rows.
//   masked:     a [G, M, K], masked_m [G]; one CTA per (group, M tile, N tile); tiles past masked_m
//               exit at once. Padding rows (-1 / rows >= masked_m) are never written (no zero-fill).
// Scales: a_scale [rows, K/128] fp32 (row-major), b_scale [G, ceil(N/128), K/128] fp32.
#pragma once

#include "../../common/hd.h"

namespace dsv32 {
namespace moe {

constexpr int kQuantBlock = 128;

// Distinct valid groups (0 <= id < num_groups) among ids[0, rows), in order of first appearance.
DSV32_HD int collect_groups(const int32_t* ids, int rows, int num_groups, int32_t* out, int max_out) {
  int count = 0;
  for (int r = 0; r < rows; ++r) {
    const int32_t g = ids[r];
    if (g < 0 || g >= num_groups) continue;
    bool seen = false;
    for (int i = 0; i < count; ++i) seen = seen || (out[i] == g);
    if (!seen && count < max_out) out[count++] = g;
  }
  return count;
}

DSV32_HD int64_t a_scale_index(int64_t row, int kb, int k_blocks) { return row * k_blocks + kb; }
DSV32_HD int64_t b_scale_index(int64_t group, int n, int kb, int n_blocks, int k_blocks) {
  return (group * n_blocks + n / kQuantBlock) * k_blocks + kb;
}

// Rows of an M tile that hold data in masked mode (the rest are stored as zeros).
DSV32_HD int masked_rows_in_tile(int m0, int block_m, int m, int masked_m) {
  const int lim = masked_m < m ? masked_m : m;
  const int r = lim - m0;
  return r < 0 ? 0 : (r > block_m ? block_m : r);
}

// Linear CTA index -> (m_tile, n_tile), walking `band` M tiles at a time down each N column so that
// CTAs running together share B tiles (experts' weights) and A rows in L2. A bijection on the grid.
DSV32_HD void tile_coords(int linear, int m_tiles, int n_tiles, int band, int& mt, int& nt) {
  const int per_band = band * n_tiles;
  const int b = linear / per_band;
  const int first_m = b * band;
  const int rows = (m_tiles - first_m) < band ? (m_tiles - first_m) : band;
  const int in_band = linear - b * per_band;
  mt = first_m + in_band % rows;
  nt = in_band / rows;
}

}  // namespace moe
}  // namespace dsv32
