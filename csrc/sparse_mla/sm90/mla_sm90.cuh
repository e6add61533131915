// Device helpers shared by the sm_90a sparse MLA kernels (decode and prefill): the 1024-byte-aligned
// dynamic shared-memory view (SW128 wgmma tiles need it), bf16x2 packing and the 16-byte vector address in
// a K-major SW128 tile. Included only with CuTe (DSV32_WITH_CUTE).
#pragma once

#include <cuda_bf16.h>

#include "config.h"

namespace dsv32 {
namespace sm90 {
namespace mla_util {

// The dynamic smem base rounded up to 1024 B (the launchers allocate sizeof(T) + 1024).
template <class T>
__device__ __forceinline__ T& aligned_smem() {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t mis = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) & 1023u;
  return *reinterpret_cast<T*>(smem_raw + ((1024u - mis) & 1023u));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// 16-byte vector c (8 bf16: dims 8c..8c+7) of row r of a K-major SW128 bf16 tile
template <class Layout>
__device__ __forceinline__ uint4* vec_at(cutlass::bfloat16_t* base, int r, int c) {
  return reinterpret_cast<uint4*>(base + tile_offset<Layout>(r, c * 8));
}

}  // namespace mla_util
}  // namespace sm90
}  // namespace dsv32
