// Tile configuration of the sm_90a indexer logits (indexer/sm90/fp8_indexer_logits_sm90.cu).
#pragma once

#include <type_traits>

#include "../../common/cute_smem.h"

namespace dsv32 {
namespace sm90 {
namespace logits {

using namespace cute;
constexpr int kThreads = 128;
constexpr int kMaxHeads = 128;
constexpr int kRowsPerCta = 4;

template <int N>  // keys per tile: 64 (paged decode, one page) or 128 (ragged prefill)
struct Cfg {
  using LayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<uint8_t>{}, Shape<_64, _128>{}));
  using LayoutK = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<uint8_t>{}, Shape<Int<N>, _128>{}));
  using Atom = std::conditional_t<N == 64, SM90_64x64x32_F32E4M3E4M3_SS_TN<>, SM90_64x128x32_F32E4M3E4M3_SS_TN<>>;
  using Mma = decltype(make_tiled_mma(Atom{}));
  struct Smem {
    alignas(1024) uint8_t q[kMaxHeads / 64][cosize_v<LayoutQ>];
    alignas(1024) uint8_t k[cosize_v<LayoutK>];
    float k_scale[N];
    float w[kMaxHeads];
    float red[4][N];
  };
};

}  // namespace logits
}  // namespace sm90
}  // namespace dsv32
