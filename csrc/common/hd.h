// Shared by host (g++) and device (nvcc) code: qualifiers, bit casts, small integer helpers.
// Nothing here includes CUDA or ATen headers, so tests/cuda/test_host_headers.py compiles it with g++.
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define DSV32_HD __host__ __device__ __forceinline__
#else
#define DSV32_HD inline
#endif

namespace dsv32 {

DSV32_HD uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
#endif
}

DSV32_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  memcpy(&x, &u, 4);
  return x;
#endif
}

// PTX prmt (default mode): result byte i = byte sel_i of the 8-byte value {y:x} (x = bytes 0..3).
DSV32_HD uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t sel) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(x, y, sel);
#else
  uint64_t v = (uint64_t(y) << 32) | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= uint32_t((v >> (8 * ((sel >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
#endif
}

DSV32_HD int ceil_div(int a, int b) { return (a + b - 1) / b; }
DSV32_HD int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// bf16 bits of an fp32 value, round-to-nearest-even (NaN kept quiet).
DSV32_HD uint16_t f32_to_bf16_bits(float x) {
  uint32_t u = f32_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

DSV32_HD float bf16_bits_to_f32(uint16_t b) { return bits_f32(uint32_t(b) << 16); }

}  // namespace dsv32
