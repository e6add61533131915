// Tile configuration of the sm_90a grouped FP8 GEMM (fp8_moe/sm90/fp8_grouped_gemm_sm90.cu).
#pragma once

#include "../../common/cute_smem.h"

namespace dsv32 {
namespace sm90 {
namespace gemm {

using namespace cute;
constexpr int kThreads = 256;
constexpr int kBM = 128, kBN = 128, kBK = 128, kStages = 4;
constexpr int kBand = 8;
using BM = Int<kBM>;
using BN = Int<kBN>;
using BK = Int<kBK>;
using SmemLayoutA = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<uint8_t>{}, make_shape(BM{}, BK{}, Int<kStages>{})));
using SmemLayoutB = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<uint8_t>{}, make_shape(BN{}, BK{}, Int<kStages>{})));
using TiledMma = decltype(make_tiled_mma(SM90_64x128x32_F32E4M3E4M3_SS_TN<>{}, Layout<Shape<_2, _1, _1>>{}));

}  // namespace gemm
}  // namespace sm90
}  // namespace dsv32
