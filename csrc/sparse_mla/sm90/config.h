// Tile configuration of the sm_90a sparse MLA decode (sparse_mla/sm90/sparse_mla_decode_sm90.cu).
#pragma once

#include "../../common/cute_smem.h"
#include "../common/cache_layout.h"

namespace dsv32 {
namespace sm90 {
namespace mla_decode {

using namespace cute;
using bf16 = cutlass::bfloat16_t;
constexpr int kThreads = 256;
constexpr int kHeads = 64;
constexpr int kKeys = 64;
constexpr int kD = mla::kHead;     // 576
constexpr int kDV = mla::kKvLora;  // 512
constexpr int kDVPerWg = kDV / 2;  // 256 output columns per warpgroup

using LayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<bf16>{}, Shape<Int<kHeads>, Int<kD>>{}));
using LayoutKV = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<bf16>{}, Shape<Int<kKeys>, Int<kD>>{}));
// V half of warpgroup w: (256 dims, 64 keys) MN-major view of the same bytes, key atoms innermost so its
// strides match LayoutKV's; it starts kVOffset * w elements into the KV tile.
using LayoutV = decltype(tile_to_shape(GMMA::Layout_MN_SW128_Atom<bf16>{}, Shape<Int<kDVPerWg>, Int<kKeys>>{},
                                       Step<_2, _1>{}));
constexpr int kVOffset = (kDVPerWg / 64) * (cosize_v<LayoutKV> / (kD / 64));
using LayoutP = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<bf16>{}, Shape<Int<kHeads>, Int<kKeys>>{}));
using MmaS = decltype(make_tiled_mma(SM90_64x64x16_F32BF16BF16_SS<GMMA::Major::K, GMMA::Major::K>{}));
using MmaO = decltype(make_tiled_mma(SM90_64x256x16_F32BF16BF16_SS<GMMA::Major::K, GMMA::Major::MN>{}));

struct Smem {
  alignas(1024) bf16 q[cosize_v<LayoutQ>];
  alignas(1024) bf16 kv[cosize_v<LayoutKV>];
  alignas(1024) bf16 p[cosize_v<LayoutP>];
  float alpha[kHeads];
  float m[kHeads];
  float l[kHeads];
  int32_t idx[kKeys];
};

}  // namespace mla_decode
}  // namespace sm90
}  // namespace dsv32
