// Tile configurations of the sm_90a sparse MLA kernels (sparse_mla/sm90/sparse_mla_{decode,prefill}_sm90.cu).
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

// Prefill (bf16 kv [s_kv, 576]): the decode kernel's Q / KV / V / P tiles and P V atom, two KV buffers
// (the gather of chunk c + 1 runs under the math of chunk c), and S split by keys: warpgroup w computes
// S[:, 32w : 32w + 32] (64 heads x 32 keys), so neither warpgroup idles during Q K^T.
namespace mla_prefill {

using namespace cute;
using mla_decode::bf16;
using mla_decode::kD;
using mla_decode::kDV;
using mla_decode::kDVPerWg;
using mla_decode::kHeads;
using mla_decode::kKeys;
using mla_decode::kThreads;
using mla_decode::kVOffset;
using mla_decode::LayoutKV;
using mla_decode::LayoutP;
using mla_decode::LayoutQ;
using mla_decode::LayoutV;
using mla_decode::MmaO;
constexpr int kKeysPerWg = kKeys / 2;  // 32
using MmaS = decltype(make_tiled_mma(SM90_64x32x16_F32BF16BF16_SS<GMMA::Major::K, GMMA::Major::K>{}));

struct Smem {
  alignas(1024) bf16 q[cosize_v<LayoutQ>];
  alignas(1024) bf16 kv[2][cosize_v<LayoutKV>];
  alignas(1024) bf16 p[cosize_v<LayoutP>];
  float mx[2][kHeads];  // chunk row maxima of each warpgroup's 32 keys
  float l[2][kHeads];   // each warpgroup's softmax denominators (its keys only), summed at the end
  float m[kHeads];
  int32_t idx[2][kKeys];
};
// 227 KB opt-in on sm_90 (232448 B) less the 1024 B alignment slack the launcher adds: exactly full
static_assert(sizeof(Smem) + 1024 <= 232448, "sm90 prefill smem over the 227 KB opt-in limit");
static_assert(sizeof(Smem) == 231424, "update benchmarks/work_model.py SM90_PREFILL");

}  // namespace mla_prefill
}  // namespace sm90
}  // namespace dsv32
