// Sparse MLA prefill, sm_90a: wgmma bf16 (SASS HGMMA) via CuTe, over kv [s_kv, 576] bf16 rows.
// NOT GPU-verified yet (compile-checked for sm_90a, SASS/ptxas reviewed): the wrapper keeps it opt-in.
// One CTA = 64 heads of one query row (h = 128: two CTAs per row), 2 warpgroups, keys in chunks of 64:
//   gather: each thread cp.async-copies 18 of the 72 16-byte vectors of one of the chunk's 64 kv rows into a
//     128-byte-swizzled K-major tile (-1 / masked rows: zero-filled, nothing read); two tile buffers, so
//     chunk c + 1 is in flight while chunk c is computed;
//   S: warpgroup w computes Q K^T for keys 32w..32w+31 (64 x 32, 36 k16 steps, Q resident in smem); the
//     two halves' row maxima are exchanged through smem, so both warpgroups hold the same running max and
//     rescale factor; each keeps the softmax denominator of its own keys (summed once at the end);
//   O: warpgroup w: O[:, 256w : 256w + 256] = O * alpha + P V over all 64 keys, V read from the same KV
//     tile through its MN-major view (as in the decode kernel, whose tiles and P V atom this reuses).
// A chunk with no valid index (early causal rows hold mostly -1) skips the math. out = O / l,
// lse = ln(sum exp(scores)); a row with no valid index gives out = 0, lse = -inf. Contract: the sm80
// prefill's (api/sparse_mla.h). Built only with CuTe headers (DSV32_WITH_CUTE) and for sm_90a.
#include "../../api/sparse_mla.h"
#include "../../common/bounds.cuh"
#include "../common/cache_layout.h"

#if defined(DSV32_WITH_CUTE)
#include <cuda_bf16.h>

#include <cutlass/arch/barrier.h>

#include "../../common/mma_sm80.cuh"
#include "config.h"
#include "mla_sm90.cuh"

namespace dsv32 {
namespace sm90 {
namespace {

using namespace cute;
using namespace mla_prefill;
using mla_util::vec_at;

constexpr int kVecs = kD / 8;                   // 72 x 16 B per 576-wide bf16 row
constexpr int kThrPerRow = kThreads / kKeys;    // 4 gather threads per key row
constexpr int kVecsPerThr = kVecs / kThrPerRow;  // 18
static_assert(kThreads % kKeys == 0 && kVecs % kThrPerRow == 0, "gather mapping");

// Issue the cp.async gather of key chunk k0 into buffer b: thread -> (row tid / 4, vectors tid % 4 + 4j).
// Returns this thread's slot (-1: none / masked), also published in s.idx[b] for the score mask.
__device__ __forceinline__ int32_t issue_gather(Smem& s, int b, const bf16* __restrict__ kv, const int32_t* idx_row,
                                                int k0, int n_keys, int64_t s_kv, bool report, int32_t* err) {
  const int r = threadIdx.x / kThrPerRow, sub = threadIdx.x % kThrPerRow;
  int32_t slot = (k0 + r < n_keys) ? idx_row[k0 + r] : -1;
  if (slot >= s_kv) {  // a row past kv: masked like -1 (never an illegal address)
    if (report && sub == 0) report_oob(err, kOobIndices, slot);
    slot = -1;
  }
  if (sub == 0) s.idx[b][r] = slot;
  const bf16* src = kv + (slot >= 0 ? int64_t(slot) * kD : 0);
#pragma unroll
  for (int j = 0; j < kVecsPerThr; ++j) {
    const int c = sub + kThrPerRow * j;
    sm80::cp_async_16(vec_at<LayoutKV>(s.kv[b], r, c), src + c * 8, slot >= 0);
  }
  return slot;
}

__global__ void __launch_bounds__(kThreads, 1) sparse_mla_prefill_kernel(
    const bf16* __restrict__ q, const bf16* __restrict__ kv, const int32_t* __restrict__ indices,
    const int32_t* __restrict__ topk_length, bf16* __restrict__ out, float* __restrict__ lse, int heads, int topk,
    float scale_log2, int64_t s_kv, int32_t* err) {
#if defined(DSV32_SM90A_DEVICE)
  Smem& s = mla_util::aligned_smem<Smem>();
  // 1-D grid (row-major over (row, head block)): no 65535 limit on query rows
  const int n_hblocks = (heads + kHeads - 1) / kHeads;
  const int row = int(blockIdx.x / n_hblocks), h0 = int(blockIdx.x % n_hblocks) * kHeads;
  const bool report = blockIdx.x % n_hblocks == 0;  // one head block reports bad indices
  const int nh = min(kHeads, heads - h0);
  const int tid = threadIdx.x, wg = tid / 128, wtid = tid % 128;

  // Q tile (rows past `heads` zero-filled): cp.async, in the same group as key chunk 0
  for (int i = tid; i < kHeads * kVecs; i += kThreads) {
    const int r = i / kVecs, c = i % kVecs;
    const bf16* src = q + (int64_t(row) * heads + h0 + min(r, nh - 1)) * kD + c * 8;
    sm80::cp_async_16(vec_at<LayoutQ>(s.q, r, c), src, r < nh);
  }

  const int32_t* idx_row = indices + int64_t(row) * topk;
  // entries past the row's length are never read (ops.sparse_mla topk_length; nullptr: all topk)
  const int n_keys = topk_length ? min(max(topk_length[row], 0), topk) : topk;
  const int n_chunks = (n_keys + kKeys - 1) / kKeys;
  int32_t my_slot = n_chunks > 0 ? issue_gather(s, 0, kv, idx_row, 0, n_keys, s_kv, report, err) : -1;
  sm80::cp_async_commit();

  MmaO mma_o;
  auto thr_o = mma_o.get_slice(wtid);
  auto acc_o = partition_fragment_C(mma_o, Shape<Int<kHeads>, Int<kDVPerWg>>{});
  Tensor coord_o = thr_o.partition_C(make_identity_tensor(Shape<Int<kHeads>, Int<kDVPerWg>>{}));
  Tensor sP = make_tensor(make_smem_ptr(s.p), LayoutP{});
  Tensor tOrP = thr_o.make_fragment_A(thr_o.partition_A(sP));
  clear(acc_o);

  MmaS mma_s;
  auto thr_s = mma_s.get_slice(wtid);
  Tensor sQ = make_tensor(make_smem_ptr(s.q), LayoutQ{});
  Tensor tSrQ = thr_s.make_fragment_A(thr_s.partition_A(sQ));
  auto acc_s = partition_fragment_C(mma_s, Shape<Int<kHeads>, Int<kKeysPerWg>>{});
  Tensor coord_s = thr_s.partition_C(make_identity_tensor(Shape<Int<kHeads>, Int<kKeysPerWg>>{}));
  // this thread's head rows: r0, r0 + 8 (the same in both atoms and both warpgroups)
  const int r0 = get<0>(coord_s(0));
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  for (int ch = 0; ch < n_chunks; ++ch) {
    const int b = ch & 1;
    sm80::cp_async_wait<0>();
    cutlass::arch::fence_view_async_shared();  // cp.async (generic proxy) writes, read by wgmma (async proxy)
    // chunk ch landed; every thread is past chunk ch - 1, so buffer b ^ 1 may be refilled
    const bool any = __syncthreads_or(my_slot >= 0);
    if (ch + 1 < n_chunks)
      my_slot = issue_gather(s, b ^ 1, kv, idx_row, (ch + 1) * kKeys, n_keys, s_kv, report, err);
    sm80::cp_async_commit();
    if (!any) continue;  // nothing valid in this chunk: the state is unchanged

    // S = Q K^T over this warpgroup's 32 keys
    Tensor sK = make_tensor(make_smem_ptr(s.kv[b]), LayoutKV{});
    Tensor sKw = local_tile(sK, Shape<Int<kKeysPerWg>, Int<kD>>{}, make_coord(wg, 0));
    Tensor tSrK = thr_s.make_fragment_B(thr_s.partition_B(sKw));
    mla_util::wgmma_sync(mma_s, tSrQ, tSrK, acc_s, true);

    // online softmax; a row's 32 columns live in the 4 lanes sharing lane / 4, its 64 in both warpgroups
    float mx[2], alpha[2], sum[2];
    mla_util::mask_scale_rowmax(acc_s, coord_s, r0, s.idx[b] + wg * kKeysPerWg, scale_log2, mx);
    if ((wtid & 3) == 0) {
      s.mx[wg][r0] = mx[0];
      s.mx[wg][r0 + 8] = mx[1];
    }
    __syncthreads();
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int r = r0 + 8 * hr;
      const float m_new = fmaxf(m_run[hr], fmaxf(s.mx[0][r], s.mx[1][r]));
      alpha[hr] = m_new == -INFINITY ? 1.f : exp2f(m_run[hr] - m_new);
      m_run[hr] = m_new;
    }
    mla_util::exp_to_p(acc_s, coord_s, r0, m_run, sP, wg * kKeysPerWg, sum);
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) l_run[hr] = l_run[hr] * alpha[hr] + sum[hr];
    cutlass::arch::fence_view_async_shared();  // P written by generic stores, read by wgmma
    __syncthreads();                           // both halves of P written

    // O = O * alpha + P V over the chunk's 64 keys, this warpgroup's 256 output columns
    Tensor sV = make_tensor(make_smem_ptr(s.kv[b] + wg * kVOffset), LayoutV{});
    Tensor tOrV = thr_o.make_fragment_B(thr_o.partition_B(sV));
#pragma unroll
    for (int i = 0; i < size(acc_o); ++i) acc_o(i) *= (get<0>(coord_o(i)) == r0 ? alpha[0] : alpha[1]);
    mla_util::wgmma_sync(mma_o, tOrP, tOrV, acc_o, false);
    // the next iteration's first barrier orders these reads of P / KV buffer b before they are rewritten
  }
  sm80::cp_async_wait<0>();  // the Q group when there were no chunks

  if ((wtid & 3) == 0) {
    s.l[wg][r0] = l_run[0];
    s.l[wg][r0 + 8] = l_run[1];
    if (wg == 0) {
      s.m[r0] = m_run[0];
      s.m[r0 + 8] = m_run[1];
    }
  }
  __syncthreads();
  mla_util::store_o(acc_o, coord_o, r0, s.l[0][r0] + s.l[1][r0], s.l[0][r0 + 8] + s.l[1][r0 + 8],
                    out + (int64_t(row) * heads + h0) * kDV, nh, wg * kDVPerWg);
  if (tid < nh) lse[int64_t(row) * heads + h0 + tid] = mla_util::lse_of(s.m[tid], s.l[0][tid] + s.l[1][tid]);
#endif
}

}  // namespace
}  // namespace sm90

bool sparse_mla_prefill_sm90_built() {
#if defined(DSV32_SM90A)
  return true;
#else
  return false;
#endif
}

cudaError_t launch_sparse_mla_prefill_sm90(const void* q, const void* kv, const int32_t* indices,
                                           const int32_t* topk_length, void* out, float* lse, int rows, int heads,
                                           int topk, float sm_scale, int64_t s_kv, int32_t* err, cudaStream_t stream) {
  if (!sparse_mla_prefill_sm90_built()) return cudaErrorInvalidDeviceFunction;
  if (rows == 0 || heads == 0) return cudaSuccess;
  const int smem = int(sizeof(sm90::mla_prefill::Smem)) + 1024;
  const int64_t ctas = int64_t(ceil_div(heads, sm90::mla_prefill::kHeads)) * rows;
  if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
  cudaError_t e = cudaFuncSetAttribute(sm90::sparse_mla_prefill_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  sm90::sparse_mla_prefill_kernel<<<dim3(unsigned(ctas)), sm90::mla_prefill::kThreads, smem, stream>>>(
      static_cast<const sm90::mla_prefill::bf16*>(q), static_cast<const sm90::mla_prefill::bf16*>(kv), indices,
      topk_length, static_cast<sm90::mla_prefill::bf16*>(out), lse, heads, topk, sm_scale * 1.4426950408889634f, s_kv,
      err);
  return cudaGetLastError();
}

}  // namespace dsv32

#else  // no CuTe headers

// qualified definitions: a signature that drifts from api/sparse_mla.h is a compile error, not a new overload
bool dsv32::sparse_mla_prefill_sm90_built() { return false; }
cudaError_t dsv32::launch_sparse_mla_prefill_sm90(const void*, const void*, const int32_t*, const int32_t*, void*, float*, int,
                                           int, int, float, int64_t, int32_t*, cudaStream_t) {
  return cudaErrorInvalidDeviceFunction;
}

#endif
