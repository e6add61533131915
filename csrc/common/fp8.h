// FP8 e4m3 (OCP e4m3fn: bias 7, no inf, 0x7f/0xff NaN, max 448) encode/decode and ue8m0 scales,
// bit-exact with ops/fp8_quant/naive.py (clamp to +-448, round-to-nearest-even, subnormals kept).
//
// The tensor-core kernels do not decode e4m3 to fp32: `e4m3x4_to_f16x2_scaled` moves the 7 exponent+
// mantissa bits into an fp16 bit pattern, which is exactly the e4m3 value times 2^-8 (subnormals
// included, since fp16 reaches 2^-24). A product of two such operands carries 2^-16; kernels fold
// kF16ProductUnscale = 2^16 into the per-block scale they multiply by anyway (no per-element cost).
#pragma once

#include "hd.h"

namespace dsv32 {

constexpr float kFp8Max = 448.0f;
constexpr float kAmaxFloor = 1e-4f;
constexpr float kF16OperandUnscale = 256.0f;     // e4m3 value = fp16 pattern value * 2^8
constexpr float kF16ProductUnscale = 65536.0f;   // product of two such operands: * 2^16

// e4m3 byte -> fp32 (exact).
DSV32_HD float e4m3_to_f32(uint8_t b) {
  const uint32_t sign = uint32_t(b & 0x80u) << 24;
  const uint32_t e = (b >> 3) & 0xfu, m = b & 7u;
  if (e == 15u && m == 7u) return bits_f32(sign | 0x7fc00000u);
  if (e == 0u) {
    const float v = float(m) * 0.001953125f;  // m * 2^-9
    return sign ? -v : v;
  }
  return bits_f32(sign | ((e + 120u) << 23) | (m << 20));
}

// fp32 -> e4m3 byte: saturate to +-448 (inf too), round to nearest even, NaN -> 0x7f|sign.
DSV32_HD uint8_t f32_to_e4m3(float x) {
  const uint32_t u = f32_bits(x);
  const uint8_t sign = uint8_t((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint8_t(sign | 0x7fu);
  if (a >= 0x43e00000u) return uint8_t(sign | 0x7eu);  // >= 448
  if (a < 0x3c800000u) {                              // below 2^-6: subnormal grid of 2^-9
    const float t = bits_f32(a) * 512.0f;            // exact (power-of-two scaling), in [0, 8)
    uint32_t q = uint32_t(t);
    const float frac = t - float(q);
    if (frac > 0.5f || (frac == 0.5f && (q & 1u))) ++q;  // q == 8 is the smallest normal, 0x08
    return uint8_t(sign | q);
  }
  const uint32_t mant = a & 0x7fffffu;
  uint32_t r = (((a >> 23) - 120u) << 3) | (mant >> 20);
  const uint32_t rem = mant & 0xfffffu;
  if (rem > 0x80000u || (rem == 0x80000u && (r & 1u))) ++r;  // cannot pass 0x7e: a < 448 here
  return uint8_t(sign | r);
}

// ue8m0 power-of-two dequant scale: 2^ceil(log2(max(amax, 1e-4) / 448)), computed exactly from the
// bits of the fp32 quotient (the reference's log2+ceil agrees except within 1 ulp of a power of two).
DSV32_HD float ue8m0_scale(float amax) {
  const float x = (amax > kAmaxFloor ? amax : kAmaxFloor) / kFp8Max;  // normal, positive
  const uint32_t u = f32_bits(x);
  int e = int((u >> 23) & 0xffu);
  if (u & 0x7fffffu) ++e;
  return bits_f32(uint32_t(e) << 23);
}

// Exponent byte of a ue8m0 scale (the packed sm100 format), and back.
DSV32_HD uint8_t ue8m0_exponent(float scale) { return uint8_t((f32_bits(scale) >> 23) & 0xffu); }
DSV32_HD float ue8m0_from_exponent(uint8_t e) { return bits_f32(uint32_t(e) << 23); }

// 4 packed e4m3 bytes (byte i = element i) -> two fp16x2 bit patterns {e0,e1}, {e2,e3}, each fp16
// equal to the e4m3 value * 2^-8 exactly (the e4m3 NaN pattern decodes to 480 * 2^-8; saturating
// quantizers never emit it). Three integer ops per pair: prmt, and, shift+and (lop3 on the GPU).
DSV32_HD void e4m3x4_to_f16x2_scaled(uint32_t x, uint32_t& lo, uint32_t& hi) {
  const uint32_t r0 = byte_perm(x, 0u, 0x1404u);  // b1 << 24 | b0 << 8
  const uint32_t r1 = byte_perm(x, 0u, 0x3424u);  // b3 << 24 | b2 << 8
  lo = (r0 & 0x80008000u) | ((r0 >> 1) & 0x3f803f80u);
  hi = (r1 & 0x80008000u) | ((r1 >> 1) & 0x3f803f80u);
}

// fp16 bits -> fp32 (host-side check of the above; the GPU uses __half2float).
DSV32_HD float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0u) {
    const float v = float(m) * 5.9604644775390625e-08f;  // m * 2^-24
    return sign ? -v : v;
  }
  if (e == 31u) return bits_f32(sign | 0x7f800000u | (m << 13));
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

}  // namespace dsv32
