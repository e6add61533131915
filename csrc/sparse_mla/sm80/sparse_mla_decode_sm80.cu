// Sparse MLA decode, sm_80+ (mma.sync bf16, fp32 online softmax), over the bf16 or fp8_ds_mla cache.
// One CTA = 16 heads of one query row; it walks the row's top-k slots 32 at a time:
//   gather 32 latent rows into shared memory (fp8 rows dequantized to bf16 on the way: e4m3 -> fp16
//   by bit moves, times the group scale), S = Q K^T (warp w: keys 8w..8w+7, K = 576), online softmax
//   over the chunk (invalid slots -1 masked), O += P V (warp w: output columns 128w..128w+127).
// out = O / l, lse = ln(sum exp(scores)); a row with no valid slot gives out = 0, lse = -inf.
#include "../../api/sparse_mla.h"
#include "../../common/mma_sm80.cuh"
#include "../../common/bounds.cuh"
#include "../common/cache_layout.h"

namespace dsv32 {
namespace sm80 {
namespace {

constexpr int kThreads = 128;
constexpr int kHeadsPerCta = 16;
constexpr int kKeysPerChunk = 32;
constexpr int kD = mla::kHead;      // 576
constexpr int kDV = mla::kKvLora;   // 512
constexpr int kPitch = kD + 8;      // bf16 elements per smem row: 1168 B, 16-B aligned, ldmatrix conflict-free
constexpr int kPPitch = kKeysPerChunk + 8;

struct DecodeSmem {
  __nv_bfloat16 q[kHeadsPerCta][kPitch];
  __nv_bfloat16 kv[kKeysPerChunk][kPitch];
  __nv_bfloat16 p[kHeadsPerCta][kPPitch];
  float s[kHeadsPerCta][kKeysPerChunk + 1];
  float alpha[kHeadsPerCta];
  float m[kHeadsPerCta];
  float l[kHeadsPerCta];
  int32_t idx[kKeysPerChunk];
};

template <bool kFp8>
__device__ __forceinline__ void gather_chunk(DecodeSmem& sm, const uint8_t* __restrict__ cache) {
  if constexpr (!kFp8) {
    constexpr int kVecs = mla::kBf16RowBytes / 16;  // 72
    for (int c = threadIdx.x; c < kKeysPerChunk * kVecs; c += kThreads) {
      const int r = c / kVecs, v = c % kVecs;
      const int32_t slot = sm.idx[r];
      uint4 val = make_uint4(0, 0, 0, 0);
      if (slot >= 0) val = *reinterpret_cast<const uint4*>(cache + mla::bf16_row_offset(slot) + v * 16);
      *reinterpret_cast<uint4*>(&sm.kv[r][v * 8]) = val;
    }
  } else {
    constexpr int kVecs = mla::kKvLora / 16 + mla::kRope * 2 / 16;  // 32 fp8 vectors + 8 rope vectors
    for (int c = threadIdx.x; c < kKeysPerChunk * kVecs; c += kThreads) {
      const int r = c / kVecs, v = c % kVecs;
      const int32_t slot = sm.idx[r];
      const uint8_t* row = cache + mla::fp8_row_offset(slot < 0 ? 0 : slot);
      if (v < mla::kKvLora / 16) {  // 16 e4m3 -> 16 bf16
        uint4 lo = make_uint4(0, 0, 0, 0), hi = lo;
        if (slot >= 0) {
          const uint4 raw = *reinterpret_cast<const uint4*>(row + v * 16);
          const float scale = reinterpret_cast<const float*>(row + mla::kFp8ScaleOffset)[v * 16 / mla::kGroup] *
                              kF16OperandUnscale;
          uint32_t o[8];
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            uint32_t h01, h23;
            e4m3x4_to_f16x2_scaled(word(raw, j), h01, h23);
            const float2 f01 = __half22float2(*reinterpret_cast<__half2*>(&h01));
            const float2 f23 = __half22float2(*reinterpret_cast<__half2*>(&h23));
            o[2 * j] = pack_bf16x2(f01.x * scale, f01.y * scale);
            o[2 * j + 1] = pack_bf16x2(f23.x * scale, f23.y * scale);
          }
          lo = make_uint4(o[0], o[1], o[2], o[3]);
          hi = make_uint4(o[4], o[5], o[6], o[7]);
        }
        *reinterpret_cast<uint4*>(&sm.kv[r][v * 16]) = lo;
        *reinterpret_cast<uint4*>(&sm.kv[r][v * 16 + 8]) = hi;
      } else {  // rope: 8 bf16 per vector, copied
        const int rv = v - mla::kKvLora / 16;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (slot >= 0) val = *reinterpret_cast<const uint4*>(row + mla::kFp8RopeOffset + rv * 16);
        *reinterpret_cast<uint4*>(&sm.kv[r][mla::kKvLora + rv * 8]) = val;
      }
    }
  }
}

template <bool kFp8>
__global__ void __launch_bounds__(kThreads) sparse_mla_decode_kernel(
    const __nv_bfloat16* __restrict__ q, const uint8_t* __restrict__ cache, const int32_t* __restrict__ indices,
    const int32_t* __restrict__ topk_length, __nv_bfloat16* __restrict__ out, float* __restrict__ lse, int heads, int topk, float scale_log2,
    int64_t n_slots, int32_t* err) {
  extern __shared__ __align__(16) uint8_t smem_raw[];
  DecodeSmem& sm = *reinterpret_cast<DecodeSmem*>(smem_raw);
  // 1-D grid (row-major over (row, head block)): gridDim.x allows 2^31-1 CTAs, where a rows axis on y
  // would stop at 65535 query rows.
  const int n_hblocks = (heads + kHeadsPerCta - 1) / kHeadsPerCta;
  const int row = int(blockIdx.x / n_hblocks), h0 = int(blockIdx.x % n_hblocks) * kHeadsPerCta;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int nh = min(kHeadsPerCta, heads - h0);

  // Q tile (rows past `heads` are zero)
  for (int c = tid; c < kHeadsPerCta * (kD / 8); c += kThreads) {
    const int r = c / (kD / 8), v = c % (kD / 8);
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r < nh) val = *reinterpret_cast<const uint4*>(q + (int64_t(row) * heads + h0 + r) * kD + v * 8);
    *reinterpret_cast<uint4*>(&sm.q[r][v * 8]) = val;
  }

  float acc[16][4];
#pragma unroll
  for (int i = 0; i < 16; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  // softmax state of row tid / 8, identical in the 8 threads that share the row
  const int srow = tid >> 3, ssub = tid & 7;
  float m_run = -INFINITY, l_run = 0.f;

  const int32_t* idx_row = indices + int64_t(row) * topk;
  // entries past the row's length are never read (ops.sparse_mla topk_length; nullptr: all topk)
  const int n_keys = topk_length ? min(max(topk_length[row], 0), topk) : topk;
  for (int k0 = 0; k0 < n_keys; k0 += kKeysPerChunk) {
    if (tid < kKeysPerChunk) {
      int32_t slot = (k0 + tid < n_keys) ? idx_row[k0 + tid] : -1;
      if (slot >= n_slots) {  // a slot past the cache: masked like -1 (never an illegal address)
        if (blockIdx.x % n_hblocks == 0) report_oob(err, kOobIndices, slot);
        slot = -1;
      }
      sm.idx[tid] = slot;
    }
    __syncthreads();
    gather_chunk<kFp8>(sm, cache);
    __syncthreads();

    // S = Q K^T for keys 8w..8w+7
    {
      float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
      for (int kk = 0; kk < kD; kk += 16) {
        uint32_t a[4], b[2];
        ldmatrix_x4(a, &sm.q[lane & 15][kk + 8 * (lane >> 4)]);
        ldmatrix_x2(b, &sm.kv[warp * 8 + (lane & 7)][kk + 8 * ((lane >> 3) & 1)]);
        mma_bf16(c, a, b);
      }
      const int col = warp * 8 + 2 * t;
      sm.s[g][col] = c[0] * scale_log2;
      sm.s[g][col + 1] = c[1] * scale_log2;
      sm.s[g + 8][col] = c[2] * scale_log2;
      sm.s[g + 8][col + 1] = c[3] * scale_log2;
    }
    __syncthreads();

    // online softmax, 8 threads per row, 4 keys each
    {
      float v[4], mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int col = ssub * 4 + i;
        v[i] = sm.idx[col] >= 0 ? sm.s[srow][col] : -INFINITY;
        mx = fmaxf(mx, v[i]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
      const float m_new = fmaxf(m_run, mx);
      float alpha = 1.f, sum = 0.f;
      if (m_new != -INFINITY) {
        alpha = exp2f(m_run - m_new);  // m_run = -inf -> 0
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          v[i] = exp2f(v[i] - m_new);
          sum += v[i];
        }
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) v[i] = 0.f;
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      sum += __shfl_xor_sync(0xffffffffu, sum, 4);
      l_run = l_run * alpha + sum;
      m_run = m_new;
      *reinterpret_cast<uint2*>(&sm.p[srow][ssub * 4]) = make_uint2(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]));
      if (ssub == 0) sm.alpha[srow] = alpha;
    }
    __syncthreads();

    // O = O * alpha + P V for output columns 128w..128w+127
    {
      const float a0 = sm.alpha[g], a1 = sm.alpha[g + 8];
#pragma unroll
      for (int nt = 0; nt < 16; ++nt) {
        acc[nt][0] *= a0;
        acc[nt][1] *= a0;
        acc[nt][2] *= a1;
        acc[nt][3] *= a1;
      }
#pragma unroll
      for (int kk = 0; kk < kKeysPerChunk; kk += 16) {
        uint32_t a[4];
        ldmatrix_x4(a, &sm.p[lane & 15][kk + 8 * (lane >> 4)]);
#pragma unroll
        for (int nt = 0; nt < 16; ++nt) {
          uint32_t b[2];
          ldmatrix_x2_trans(b, &sm.kv[kk + (lane & 15)][warp * 128 + nt * 8]);
          mma_bf16(acc[nt], a, b);
        }
      }
    }
    __syncthreads();
  }

  if (ssub == 0) {
    sm.m[srow] = m_run;
    sm.l[srow] = l_run;
  }
  __syncthreads();
  const float l0 = sm.l[g], l1 = sm.l[g + 8];
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
#pragma unroll
  for (int nt = 0; nt < 16; ++nt) {
    const int col = warp * 128 + nt * 8 + 2 * t;
    if (g < nh)
      *reinterpret_cast<uint32_t*>(out + (int64_t(row) * heads + h0 + g) * kDV + col) =
          pack_bf16x2(acc[nt][0] * inv0, acc[nt][1] * inv0);
    if (g + 8 < nh)
      *reinterpret_cast<uint32_t*>(out + (int64_t(row) * heads + h0 + g + 8) * kDV + col) =
          pack_bf16x2(acc[nt][2] * inv1, acc[nt][3] * inv1);
  }
  if (tid < nh) {
    const float l = sm.l[tid];
    lse[int64_t(row) * heads + h0 + tid] = l > 0.f ? (sm.m[tid] + log2f(l)) * 0.69314718055994531f : -INFINITY;
  }
}

}  // namespace
}  // namespace sm80

cudaError_t launch_sparse_mla_decode(const void* q, const void* kv_cache, bool fp8_cache, const int32_t* indices,
                                     const int32_t* topk_length, void* out, float* lse, int rows, int heads, int topk, float sm_scale,
                                     int64_t n_slots, int32_t* err, cudaStream_t stream) {
  if (rows == 0 || heads == 0) return cudaSuccess;
  const int smem = sizeof(sm80::DecodeSmem);
  const int64_t ctas = int64_t(ceil_div(heads, sm80::kHeadsPerCta)) * rows;
  if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(ctas));
  const float scale_log2 = sm_scale * 1.4426950408889634f;
  auto* qp = static_cast<const __nv_bfloat16*>(q);
  auto* cp = static_cast<const uint8_t*>(kv_cache);
  auto* op = static_cast<__nv_bfloat16*>(out);
  auto kernel = fp8_cache ? sm80::sparse_mla_decode_kernel<true> : sm80::sparse_mla_decode_kernel<false>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  kernel<<<grid, sm80::kThreads, smem, stream>>>(qp, cp, indices, topk_length, op, lse, heads, topk, scale_log2, n_slots,
                                                  err);
  return cudaGetLastError();
}

}  // namespace dsv32
