// Sparse MLA prefill, sm_80+ (mma.sync bf16, fp32 online softmax), over kv [s_kv, 576] bf16 rows.
// One CTA = 16 * G heads of one query row, G head groups of 4 warps (G = 4 for > 32 heads where the
// 126 KB of shared memory fit, 2 for 17..32 heads or on 99 KB parts, 1 for <= 16). The row's top-k kv rows
// are gathered 32 at a time into shared memory once for all the CTA's heads (the decode kernel, 16 heads
// per CTA, gathers each key heads / 16 times); each group then runs the decode kernel's math on its 16
// heads: S = Q K^T (warp w of the group: keys 8w..8w+7, K = 576), online softmax over the chunk (-1 and
// out-of-range indices masked), O += P V (warp w: output columns 128w..128w+127). A chunk with no valid
// index is skipped (early causal rows hold mostly -1). out = O / l, lse = ln(sum exp(scores)); a row with
// no valid index gives out = 0, lse = -inf.
#include "../../api/sparse_mla.h"
#include "../../common/mma_sm80.cuh"
#include "../../common/bounds.cuh"
#include "../common/cache_layout.h"

namespace dsv32 {
namespace sm80 {
namespace {

constexpr int kPfKeys = 32;           // keys per chunk
constexpr int kPfD = mla::kHead;      // 576
constexpr int kPfDV = mla::kKvLora;   // 512
constexpr int kPfPitch = kPfD + 8;    // bf16 per smem row: 1168 B, 16-B aligned, ldmatrix conflict-free
constexpr int kPfPPitch = kPfKeys + 8;

template <int G>
struct PrefillSmem {
  __nv_bfloat16 q[16 * G][kPfPitch];
  __nv_bfloat16 kv[kPfKeys][kPfPitch];
  __nv_bfloat16 p[16 * G][kPfPPitch];
  float s[16 * G][kPfKeys + 1];
  float alpha[16 * G];
  float m[16 * G];
  float l[16 * G];
  int32_t idx[kPfKeys];
};

// benchmarks/work_model.py (_prefill_smem) models the launcher's choice with these sizes
static_assert(sizeof(PrefillSmem<1>) == 59776 && sizeof(PrefillSmem<2>) == 82048 && sizeof(PrefillSmem<4>) == 126592,
              "update benchmarks/work_model.py _prefill_smem");

template <int G>
__global__ void __launch_bounds__(128 * G, 1) sparse_mla_prefill_kernel(
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ kv, const int32_t* __restrict__ indices,
    const int32_t* __restrict__ topk_length, __nv_bfloat16* __restrict__ out, float* __restrict__ lse, int heads, int topk, float scale_log2, int64_t s_kv,
    int32_t* err) {
  constexpr int kHeads = 16 * G, kThr = 128 * G;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  PrefillSmem<G>& sm = *reinterpret_cast<PrefillSmem<G>*>(smem_raw);
  const int n_hblocks = (heads + kHeads - 1) / kHeads;  // 1-D grid over (row, head block)
  const int row = int(blockIdx.x / n_hblocks), h0 = int(blockIdx.x % n_hblocks) * kHeads;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int r0 = (warp >> 2) * 16, gw = warp & 3;  // the group's first head row, warp within the group
  const int nh = min(kHeads, heads - h0);

  // Q tile (rows past `heads` are zero)
  for (int c = tid; c < kHeads * (kPfD / 8); c += kThr) {
    const int r = c / (kPfD / 8), v = c % (kPfD / 8);
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r < nh) val = *reinterpret_cast<const uint4*>(q + (int64_t(row) * heads + h0 + r) * kPfD + v * 8);
    *reinterpret_cast<uint4*>(&sm.q[r][v * 8]) = val;
  }

  float acc[16][4];
#pragma unroll
  for (int i = 0; i < 16; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  // softmax state of head row srow, identical in the 8 threads (of one warp) that share it
  const int srow = r0 + ((tid & 127) >> 3), ssub = tid & 7;
  float m_run = -INFINITY, l_run = 0.f;

  const int32_t* idx_row = indices + int64_t(row) * topk;
  // entries past the row's length are never read (ops.sparse_mla topk_length; nullptr: all topk)
  const int n_keys = topk_length ? min(max(topk_length[row], 0), topk) : topk;
  for (int k0 = 0; k0 < n_keys; k0 += kPfKeys) {
    int32_t slot = -1;
    if (tid < kPfKeys) {
      slot = (k0 + tid < n_keys) ? idx_row[k0 + tid] : -1;
      if (slot >= s_kv) {  // a row past kv: masked like -1 (never an illegal address)
        if (blockIdx.x % n_hblocks == 0) report_oob(err, kOobIndices, slot);
        slot = -1;
      }
      sm.idx[tid] = slot;
    }
    if (!__syncthreads_or(slot >= 0)) continue;  // nothing valid in this chunk: the state is unchanged

    constexpr int kVecs = kPfD / 8;  // 72 x 16 B per row
    for (int c = tid; c < kPfKeys * kVecs; c += kThr) {
      const int r = c / kVecs, v = c % kVecs;
      const int32_t sl = sm.idx[r];
      uint4 val = make_uint4(0, 0, 0, 0);
      if (sl >= 0) val = *reinterpret_cast<const uint4*>(kv + int64_t(sl) * kPfD + v * 8);
      *reinterpret_cast<uint4*>(&sm.kv[r][v * 8]) = val;
    }
    __syncthreads();

    // S = Q K^T: the group's 16 heads x keys 8gw..8gw+7
    {
      float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
      for (int kk = 0; kk < kPfD; kk += 16) {
        uint32_t a[4], b[2];
        ldmatrix_x4(a, &sm.q[r0 + (lane & 15)][kk + 8 * (lane >> 4)]);
        ldmatrix_x2(b, &sm.kv[gw * 8 + (lane & 7)][kk + 8 * ((lane >> 3) & 1)]);
        mma_bf16(c, a, b);
      }
      const int col = gw * 8 + 2 * t;
      sm.s[r0 + g][col] = c[0] * scale_log2;
      sm.s[r0 + g][col + 1] = c[1] * scale_log2;
      sm.s[r0 + g + 8][col] = c[2] * scale_log2;
      sm.s[r0 + g + 8][col + 1] = c[3] * scale_log2;
    }
    __syncthreads();

    // online softmax, 8 threads per head row, 4 keys each
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

    // O = O * alpha + P V: the group's 16 heads x output columns 128gw..128gw+127
    {
      const float a0 = sm.alpha[r0 + g], a1 = sm.alpha[r0 + g + 8];
#pragma unroll
      for (int nt = 0; nt < 16; ++nt) {
        acc[nt][0] *= a0;
        acc[nt][1] *= a0;
        acc[nt][2] *= a1;
        acc[nt][3] *= a1;
      }
#pragma unroll
      for (int kk = 0; kk < kPfKeys; kk += 16) {
        uint32_t a[4];
        ldmatrix_x4(a, &sm.p[r0 + (lane & 15)][kk + 8 * (lane >> 4)]);
#pragma unroll
        for (int nt = 0; nt < 16; ++nt) {
          uint32_t b[2];
          ldmatrix_x2_trans(b, &sm.kv[kk + (lane & 15)][gw * 128 + nt * 8]);
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
  const float l0 = sm.l[r0 + g], l1 = sm.l[r0 + g + 8];
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
#pragma unroll
  for (int nt = 0; nt < 16; ++nt) {
    const int col = gw * 128 + nt * 8 + 2 * t;
    if (r0 + g < nh)
      *reinterpret_cast<uint32_t*>(out + (int64_t(row) * heads + h0 + r0 + g) * kPfDV + col) =
          pack_bf16x2(acc[nt][0] * inv0, acc[nt][1] * inv0);
    if (r0 + g + 8 < nh)
      *reinterpret_cast<uint32_t*>(out + (int64_t(row) * heads + h0 + r0 + g + 8) * kPfDV + col) =
          pack_bf16x2(acc[nt][2] * inv1, acc[nt][3] * inv1);
  }
  if (tid < nh) {
    const float l = sm.l[tid];
    lse[int64_t(row) * heads + h0 + tid] = l > 0.f ? (sm.m[tid] + log2f(l)) * 0.69314718055994531f : -INFINITY;
  }
}

template <int G>
cudaError_t launch_prefill(const void* q, const void* kv, const int32_t* indices, const int32_t* topk_length, void* out, float* lse, int rows,
                           int heads, int topk, float sm_scale, int64_t s_kv, int32_t* err, cudaStream_t stream) {
  const int smem = sizeof(PrefillSmem<G>);
  const int64_t ctas = int64_t((heads + 16 * G - 1) / (16 * G)) * rows;
  if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
  cudaError_t e = cudaFuncSetAttribute(sparse_mla_prefill_kernel<G>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  sparse_mla_prefill_kernel<G><<<dim3(unsigned(ctas)), 128 * G, smem, stream>>>(
      static_cast<const __nv_bfloat16*>(q), static_cast<const __nv_bfloat16*>(kv), indices, topk_length,
      static_cast<__nv_bfloat16*>(out), lse, heads, topk, sm_scale * 1.4426950408889634f, s_kv, err);
  return cudaGetLastError();
}

}  // namespace
}  // namespace sm80

int sparse_mla_prefill_heads_per_cta(int heads, int smem_optin) {
  if (heads <= 16) return 16;
  if (heads <= 32 || int(sizeof(sm80::PrefillSmem<4>)) > smem_optin) return 32;
  return 64;
}

cudaError_t launch_sparse_mla_prefill(const void* q, const void* kv, const int32_t* indices, const int32_t* topk_length,
                                      void* out, float* lse,
                                      int rows, int heads, int topk, float sm_scale, int64_t s_kv, int32_t* err,
                                      cudaStream_t stream) {
  if (rows == 0 || heads == 0) return cudaSuccess;
  int dev = 0, optin = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e != cudaSuccess) return e;
  switch (sparse_mla_prefill_heads_per_cta(heads, optin)) {
    case 16: return sm80::launch_prefill<1>(q, kv, indices, topk_length, out, lse, rows, heads, topk, sm_scale, s_kv, err, stream);
    case 32: return sm80::launch_prefill<2>(q, kv, indices, topk_length, out, lse, rows, heads, topk, sm_scale, s_kv, err, stream);
    default: return sm80::launch_prefill<4>(q, kv, indices, topk_length, out, lse, rows, heads, topk, sm_scale, s_kv, err, stream);
  }
}

}  // namespace dsv32
