// Latent MLA cache rows (see ops/sparse_mla/__init__.py): slot = page * 64 + offset, one row per slot.
//   bf16:       576 x bf16 (512 compressed kv | 64 rope)
//   fp8_ds_mla: 656 B = 512 x e4m3 (4 groups of 128) | 4 x fp32 scales | 64 x bf16 rope
#pragma once

#include "../../common/fp8.h"

namespace dsv32 {
namespace mla {

constexpr int kPage = 64;
constexpr int kKvLora = 512;
constexpr int kRope = 64;
constexpr int kHead = kKvLora + kRope;          // 576
constexpr int kGroup = 128;
constexpr int kFp8RowBytes = kKvLora + 4 * 4 + kRope * 2;  // 656
constexpr int kFp8ScaleOffset = kKvLora;        // 512
constexpr int kFp8RopeOffset = kKvLora + 16;    // 528
constexpr int kBf16RowBytes = kHead * 2;        // 1152

DSV32_HD int64_t fp8_row_offset(int64_t slot) { return slot * kFp8RowBytes; }
DSV32_HD int64_t bf16_row_offset(int64_t slot) { return slot * kBf16RowBytes; }

// Dequantized element d (0..575) of an fp8_ds_mla row given as bytes.
DSV32_HD float fp8_row_element(const uint8_t* row, int d) {
  if (d < kKvLora) {
    float s;
    memcpy(&s, row + kFp8ScaleOffset + 4 * (d / kGroup), 4);
    return e4m3_to_f32(row[d]) * s;
  }
  uint16_t b;
  memcpy(&b, row + kFp8RopeOffset + 2 * (d - kKvLora), 2);
  return bf16_bits_to_f32(b);
}

// Encode one token into an fp8_ds_mla row (the writer the GPU cache-write kernel mirrors).
DSV32_HD void fp8_row_encode(const float* kv_c, const float* k_pe, uint8_t* row) {
  for (int g = 0; g < 4; ++g) {
    float amax = 0.f;
    for (int i = 0; i < kGroup; ++i) {
      const float a = kv_c[g * kGroup + i] < 0 ? -kv_c[g * kGroup + i] : kv_c[g * kGroup + i];
      amax = a > amax ? a : amax;
    }
    const float s = ue8m0_scale(amax);
    for (int i = 0; i < kGroup; ++i) row[g * kGroup + i] = f32_to_e4m3(kv_c[g * kGroup + i] / s);
    memcpy(row + kFp8ScaleOffset + 4 * g, &s, 4);
  }
  for (int i = 0; i < kRope; ++i) {
    const uint16_t b = f32_to_bf16_bits(k_pe[i]);
    memcpy(row + kFp8RopeOffset + 2 * i, &b, 2);
  }
}

}  // namespace mla
}  // namespace dsv32
