// Torch dispatcher bindings for the dsv32 CUDA ops (namespace torch.ops.dsv32). The only translation
// unit that includes ATen; the kernels are reached through the plain launchers in api/*.h.
// Shape/dtype validation of user input happens in deepseek_v32_plugin/ops/<family>/__init__.py; the
// checks here guard the layout assumptions of the kernels (contiguity, int32 index tensors, limits).
// Fake (meta) implementations for torch.compile: deepseek_v32_plugin/ops/<family>/cuda.py (register_fakes).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>

#include "fp8_moe.h"
#include "fp8_quant.h"
#include "indexer.h"
#include "sparse_mla.h"

namespace dsv32 {
namespace {

#define DSV32_CHECK_LAUNCH(expr, op)                                                                  \
  do {                                                                                                \
    const cudaError_t err_ = (expr);                                                                  \
    TORCH_CHECK(err_ == cudaSuccess, "dsv32::" op " launch failed: ", cudaGetErrorString(err_));      \
  } while (0)

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor (got ", t.device(), ")");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}
void check_i32(const at::Tensor& t, const char* name) {
  check_cuda(t, name);
  TORCH_CHECK(t.scalar_type() == at::kInt, name, " must be int32 (got ", t.scalar_type(), ")");
}
void check_fp8(const at::Tensor& t, const char* name) {
  check_cuda(t, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat8_e4m3fn, name, " must be float8_e4m3fn (got ", t.scalar_type(), ")");
}
void check_f32(const at::Tensor& t, const char* name) {
  check_cuda(t, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32 (got ", t.scalar_type(), ")");
}
const uint8_t* bytes(const at::Tensor& t) { return static_cast<const uint8_t*>(t.data_ptr()); }

// Optional bound-check flag (common/bounds.cuh): int32 [2] on the op's device, or none (the default).
int32_t* err_ptr(const std::optional<at::Tensor>& err) {
  if (!err.has_value()) return nullptr;
  check_i32(*err, "err");
  TORCH_CHECK(err->numel() >= 2, "err must hold 2 int32");
  return err->data_ptr<int32_t>();
}

// Optional per-row lengths (sparse MLA topk_length): int32 [rows] on the op's device, or none (all entries).
const int32_t* lengths_ptr(const std::optional<at::Tensor>& lens, int64_t rows) {
  if (!lens.has_value()) return nullptr;
  check_i32(*lens, "topk_length");
  TORCH_CHECK(lens->numel() == rows, "topk_length must hold one int32 per query row (", rows, "), got ", lens->numel());
  return lens->data_ptr<int32_t>();
}

// The sm_90a kernels run on compute capability 9.x when built; env DSV32_CUDA_<WHAT>=sm80 forces mma.sync.
bool use_sm90(bool built, const char* env) {
  const char* force = std::getenv(env);
  if (force && std::string(force) == "sm80") return false;
  return built && at::cuda::getCurrentDeviceProperties()->major == 9;
}

at::Tensor fp8_paged_indexer_logits(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& weights,
                                    const at::Tensor& context_lens, const at::Tensor& block_table,
                                    int64_t max_context_len, const std::optional<at::Tensor>& err) {
  check_fp8(q, "q_fp8");
  check_cuda(kv_cache, "kv_cache");
  check_f32(weights, "weights");
  check_i32(context_lens, "context_lens");
  check_i32(block_table, "block_table");
  TORCH_CHECK(q.dim() == 4 && q.size(3) == 128, "q_fp8 must be [B, next_n, H, 128]");
  const int b = q.size(0), next_n = q.size(1), h = q.size(2);
  TORCH_CHECK(h <= 128, "the CUDA indexer supports at most 128 heads, got ", h);
  TORCH_CHECK(max_context_len <= block_table.size(1) * 64, "max_context_len=", max_context_len,
              " exceeds block_table capacity ", block_table.size(1), " pages x 64");
  const at::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({int64_t(b) * next_n, max_context_len}, q.options().dtype(at::kFloat));
  auto launch = use_sm90(indexer_logits_sm90_built(), "DSV32_CUDA_INDEXER") ? launch_fp8_paged_indexer_logits_sm90
                                                                            : launch_fp8_paged_indexer_logits;
  DSV32_CHECK_LAUNCH(launch(bytes(q), bytes(kv_cache), kv_cache.size(0), weights.data_ptr<float>(),
                            context_lens.data_ptr<int32_t>(), block_table.data_ptr<int32_t>(), block_table.size(1),
                            out.data_ptr<float>(), max_context_len, b, next_n, h, int(max_context_len), err_ptr(err),
                            at::cuda::getCurrentCUDAStream()),
                     "fp8_paged_indexer_logits");
  return out;
}

at::Tensor fp8_indexer_logits(const at::Tensor& q, const at::Tensor& k, const at::Tensor& k_scale,
                              const at::Tensor& weights, const at::Tensor& ks, const at::Tensor& ke) {
  check_fp8(q, "q_fp8");
  check_fp8(k, "k_fp8");
  check_f32(k_scale, "k_scale");
  check_f32(weights, "weights");
  check_i32(ks, "ks");
  check_i32(ke, "ke");
  const int s = q.size(0), h = q.size(1), n = k.size(0);
  TORCH_CHECK(h <= 128, "the CUDA indexer supports at most 128 heads, got ", h);
  const at::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({s, n}, q.options().dtype(at::kFloat));
  auto launch = use_sm90(indexer_logits_sm90_built(), "DSV32_CUDA_INDEXER") ? launch_fp8_indexer_logits_sm90
                                                                            : launch_fp8_indexer_logits;
  DSV32_CHECK_LAUNCH(launch(bytes(q), bytes(k), k_scale.data_ptr<float>(), weights.data_ptr<float>(),
                            ks.data_ptr<int32_t>(), ke.data_ptr<int32_t>(), out.data_ptr<float>(), s, h, n,
                            at::cuda::getCurrentCUDAStream()),
                     "fp8_indexer_logits");
  return out;
}

at::Tensor indexer_topk(const at::Tensor& logits, int64_t topk, const at::Tensor& ks, const at::Tensor& ke) {
  check_cuda(logits, "logits");
  TORCH_CHECK(logits.scalar_type() == at::kFloat && logits.dim() == 2, "logits must be [R, N] float32");
  check_i32(ks, "ks");
  check_i32(ke, "ke");
  TORCH_CHECK(topk > 0 && topk <= 2048, "the CUDA top-k supports 1 <= topk <= 2048, got ", topk);
  const at::cuda::CUDAGuard guard(logits.device());
  auto out = at::empty({logits.size(0), topk}, logits.options().dtype(at::kInt));
  const int num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const size_t ws_bytes = indexer_topk_workspace_bytes(int(logits.size(0)), int(logits.size(1)), num_sms);
  auto ws = at::empty({int64_t(ws_bytes)}, logits.options().dtype(at::kByte));   // zeroed by the launcher
  DSV32_CHECK_LAUNCH(launch_indexer_topk(logits.data_ptr<float>(), logits.size(1), ks.data_ptr<int32_t>(),
                                         ke.data_ptr<int32_t>(), out.data_ptr<int32_t>(), logits.size(0),
                                         logits.size(1), int(topk), ws_bytes ? ws.data_ptr() : nullptr, num_sms,
                                         at::cuda::getCurrentCUDAStream()),
                     "indexer_topk");
  return out;
}

std::tuple<at::Tensor, at::Tensor> sparse_mla_decode(const at::Tensor& q, const at::Tensor& kv_cache,
                                                     const at::Tensor& indices, double sm_scale,
                                                     const std::optional<at::Tensor>& topk_length,
                                                     const std::optional<at::Tensor>& err) {
  check_cuda(q, "q");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && q.dim() == 4 && q.size(3) == 576, "q must be [b, s_q, h, 576] bf16");
  check_cuda(kv_cache, "kv_cache");
  const bool fp8 = kv_cache.scalar_type() == at::kByte;
  TORCH_CHECK(fp8 ? kv_cache.size(-1) == 656 : (kv_cache.scalar_type() == at::kBFloat16 && kv_cache.size(-1) == 576),
              "kv_cache must be [pages, 64, 656] uint8 (fp8_ds_mla) or [pages, 64, 576] bf16");
  check_i32(indices, "indices");
  const int64_t b = q.size(0), s_q = q.size(1), h = q.size(2), topk = indices.size(2);
  const int32_t* lens = lengths_ptr(topk_length, b * s_q);
  const at::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({b, s_q, h, 512}, q.options());
  auto lse = at::empty({b, s_q, h}, q.options().dtype(at::kFloat));
  auto launch = use_sm90(sparse_mla_decode_sm90_built(), "DSV32_CUDA_MLA") ? launch_sparse_mla_decode_sm90
                                                                        : launch_sparse_mla_decode;
  const int64_t n_slots = kv_cache.numel() / kv_cache.size(-1);
  DSV32_CHECK_LAUNCH(launch(q.data_ptr(), kv_cache.data_ptr(), fp8, indices.data_ptr<int32_t>(), lens,
                                              out.data_ptr(), lse.data_ptr<float>(), int(b * s_q), int(h), int(topk),
                                              float(sm_scale), n_slots, err_ptr(err), at::cuda::getCurrentCUDAStream()),
                     "sparse_mla_decode");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> sparse_mla_prefill(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& indices,
                                                      double sm_scale, const std::optional<at::Tensor>& topk_length,
                                                      const std::optional<at::Tensor>& err) {
  check_cuda(q, "q");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && q.dim() == 3 && q.size(2) == 576, "q must be [s_q, h, 576] bf16");
  check_cuda(kv, "kv");
  TORCH_CHECK(kv.scalar_type() == at::kBFloat16 && kv.dim() == 3 && kv.size(1) == 1 && kv.size(2) == 576,
              "kv must be [s_kv, 1, 576] bf16");
  check_i32(indices, "indices");
  TORCH_CHECK(indices.dim() == 3 && indices.size(0) == q.size(0) && indices.size(1) == 1,
              "indices must be [s_q, 1, topk] int32");
  const int64_t s_q = q.size(0), h = q.size(1), topk = indices.size(2);
  const int32_t* lens = lengths_ptr(topk_length, s_q);
  const at::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({s_q, h, 512}, q.options());
  auto lse = at::empty({s_q, h}, q.options().dtype(at::kFloat));
  // DSV32_CUDA_MLA=sm80 forces the mma.sync kernels for decode and prefill alike
  auto launch = use_sm90(sparse_mla_prefill_sm90_built(), "DSV32_CUDA_MLA") ? launch_sparse_mla_prefill_sm90
                                                                         : launch_sparse_mla_prefill;
  DSV32_CHECK_LAUNCH(launch(q.data_ptr(), kv.data_ptr(), indices.data_ptr<int32_t>(), lens, out.data_ptr(),
                            lse.data_ptr<float>(), int(s_q), int(h), int(topk), float(sm_scale), kv.size(0),
                            err_ptr(err), at::cuda::getCurrentCUDAStream()),
                     "sparse_mla_prefill");
  return {out, lse};
}

at::Tensor grouped_gemm(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b, const at::Tensor& b_scale,
                        const at::Tensor* m_indices, const at::Tensor* masked_m, at::ScalarType out_dtype) {
  check_fp8(a, "a");
  check_f32(a_scale, "a_scale");
  check_fp8(b, "b");
  check_f32(b_scale, "b_scale");
  TORCH_CHECK(out_dtype == at::kBFloat16 || out_dtype == at::kFloat, "out_dtype must be bfloat16 or float32");
  GroupedGemmArgs p{};
  p.a = bytes(a);
  p.a_scale = a_scale.data_ptr<float>();
  p.b = bytes(b);
  p.b_scale = b_scale.data_ptr<float>();
  p.groups = b.size(0);
  p.n = b.size(1);
  p.k = b.size(2);
  p.out_fp32 = out_dtype == at::kFloat;
  at::Tensor out;
  if (m_indices) {
    check_i32(*m_indices, "m_indices");
    p.m = a.size(0);
    p.m_indices = m_indices->data_ptr<int32_t>();
    out = at::empty({p.m, p.n}, a.options().dtype(out_dtype));
  } else {
    check_i32(*masked_m, "masked_m");
    p.m = a.size(1);
    p.masked_m = masked_m->data_ptr<int32_t>();
    out = at::empty({p.groups, p.m, p.n}, a.options().dtype(out_dtype));
  }
  TORCH_CHECK(p.k % 128 == 0, "K=", p.k, " must be a multiple of 128");
  if (p.k == 0 || out.numel() == 0) return out.zero_();
  p.out = out.data_ptr();
  const at::cuda::CUDAGuard guard(a.device());
  const bool sm90 = use_sm90(fp8_grouped_gemm_sm90_built(), "DSV32_CUDA_GEMM");
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (sm90) {
    DSV32_CHECK_LAUNCH(launch_fp8_grouped_gemm_sm90(p, stream), "fp8_grouped_gemm (sm90)");
  } else {
    DSV32_CHECK_LAUNCH(launch_fp8_grouped_gemm_sm80(p, stream), "fp8_grouped_gemm (sm80)");
  }
  return out;
}

at::Tensor fp8_grouped_gemm_nt_contiguous(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                                          const at::Tensor& b_scale, const at::Tensor& m_indices,
                                          at::ScalarType out_dtype) {
  return grouped_gemm(a, a_scale, b, b_scale, &m_indices, nullptr, out_dtype);
}

at::Tensor fp8_grouped_gemm_nt_masked(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                                      const at::Tensor& b_scale, const at::Tensor& masked_m, at::ScalarType out_dtype) {
  return grouped_gemm(a, a_scale, b, b_scale, nullptr, &masked_m, out_dtype);
}

bool has_sm90_gemm() { return fp8_grouped_gemm_sm90_built(); }
bool has_sm90_indexer() { return indexer_logits_sm90_built(); }
bool has_sm90_mla() { return sparse_mla_decode_sm90_built(); }
bool has_sm90_mla_prefill() { return sparse_mla_prefill_sm90_built(); }

FloatKind float_kind(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return FloatKind::kF32;
    case at::kBFloat16: return FloatKind::kBF16;
    case at::kHalf: return FloatKind::kF16;
    default: TORCH_CHECK(false, name, " must be float32, bfloat16 or float16 (got ", t.scalar_type(), ")");
  }
  return FloatKind::kF32;
}

void check_slots(const at::Tensor& s, int64_t n) {
  check_cuda(s, "slot_mapping");
  TORCH_CHECK(s.scalar_type() == at::kInt || s.scalar_type() == at::kLong, "slot_mapping must be int32 or int64");
  TORCH_CHECK(s.numel() == n, "slot_mapping has ", s.numel(), " entries for ", n, " tokens");
}

std::tuple<at::Tensor, at::Tensor> fp8_quant_act(const at::Tensor& x, int64_t group, bool ue8m0) {
  check_cuda(x, "x");
  TORCH_CHECK(group == 128, "the CUDA quantizer supports group=128, got ", group);
  const int64_t k = x.size(-1);
  TORCH_CHECK(k % 128 == 0, "x last dim ", k, " must be a multiple of 128");
  const at::cuda::CUDAGuard guard(x.device());
  auto out = at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn));
  auto sizes = x.sizes().vec();
  sizes.back() = k / 128;
  auto scale = at::empty(sizes, x.options().dtype(at::kFloat));
  DSV32_CHECK_LAUNCH(launch_fp8_quant_act(x.data_ptr(), float_kind(x, "x"), static_cast<uint8_t*>(out.data_ptr()),
                                          scale.data_ptr<float>(), x.numel() / std::max<int64_t>(k, 1), int(k), ue8m0,
                                          at::cuda::getCurrentCUDAStream()),
                     "fp8_quant_act");
  return {out, scale};
}

std::tuple<at::Tensor, at::Tensor> silu_and_mul_fp8_quant(const at::Tensor& x,
                                                          const std::optional<at::Tensor>& m_indices) {
  check_cuda(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.size(1) % 256 == 0, "x must be [M, 2N] with N % 128 == 0");
  const int64_t m = x.size(0), n = x.size(1) / 2;
  const int32_t* rows = nullptr;   // padded MoE layout: rows with m_indices < 0 are skipped (left unwritten)
  if (m_indices.has_value()) {
    check_i32(*m_indices, "m_indices");
    TORCH_CHECK(m_indices->numel() == m, "m_indices must hold one int32 per row of x (", m, "), got ",
                m_indices->numel());
    rows = m_indices->data_ptr<int32_t>();
  }
  const at::cuda::CUDAGuard guard(x.device());
  auto out = at::empty({m, n}, x.options().dtype(at::kFloat8_e4m3fn));
  auto scale = at::empty({m, n / 128}, x.options().dtype(at::kFloat));
  DSV32_CHECK_LAUNCH(launch_silu_and_mul_fp8_quant(x.data_ptr(), float_kind(x, "x"), static_cast<uint8_t*>(out.data_ptr()),
                                                   scale.data_ptr<float>(), m, int(n), rows,
                                                   at::cuda::getCurrentCUDAStream()),
                     "silu_and_mul_fp8_quant");
  return {out, scale};
}

std::tuple<at::Tensor, at::Tensor> indexer_quant(const at::Tensor& x, bool rotate) {
  check_cuda(x, "x");
  TORCH_CHECK(x.size(-1) == 128, "x last dim must be 128");
  const at::cuda::CUDAGuard guard(x.device());
  auto out = at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn));
  auto scale = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kFloat));
  DSV32_CHECK_LAUNCH(launch_indexer_quant(x.data_ptr(), int(float_kind(x, "x")), rotate,
                                          static_cast<uint8_t*>(out.data_ptr()), scale.data_ptr<float>(), nullptr,
                                          nullptr, false, x.numel() / 128, 0, nullptr, at::cuda::getCurrentCUDAStream()),
                     "indexer_quant");
  return {out, scale};
}

void check_indexer_cache(const at::Tensor& c) {
  check_cuda(c, "kv_cache");
  TORCH_CHECK(c.scalar_type() == at::kByte && c.dim() == 3 && c.size(1) == 64 && c.size(2) == 132,
              "indexer kv_cache must be [pages, 64, 132] uint8");
}

void indexer_k_quant_and_cache(const at::Tensor& k, at::Tensor& kv_cache, const at::Tensor& slot_mapping,
                               const std::optional<at::Tensor>& err) {
  check_cuda(k, "k");
  TORCH_CHECK(k.dim() == 2 && k.size(1) == 128, "k must be [T, 128]");
  check_indexer_cache(kv_cache);
  check_slots(slot_mapping, k.size(0));
  const at::cuda::CUDAGuard guard(k.device());
  DSV32_CHECK_LAUNCH(launch_indexer_quant(k.data_ptr(), int(float_kind(k, "k")), true, nullptr, nullptr,
                                          static_cast<uint8_t*>(kv_cache.data_ptr()), slot_mapping.data_ptr(),
                                          slot_mapping.scalar_type() == at::kLong, k.size(0), kv_cache.size(0) * 64,
                                          err_ptr(err), at::cuda::getCurrentCUDAStream()),
                     "indexer_k_quant_and_cache");
}

void indexer_cache_write(const at::Tensor& k_fp8, const at::Tensor& k_scale, at::Tensor& kv_cache,
                         const at::Tensor& slot_mapping, const std::optional<at::Tensor>& err) {
  check_fp8(k_fp8, "k_fp8");
  check_f32(k_scale, "k_scale");
  check_indexer_cache(kv_cache);
  check_slots(slot_mapping, k_fp8.size(0));
  const at::cuda::CUDAGuard guard(k_fp8.device());
  DSV32_CHECK_LAUNCH(launch_indexer_cache_write(bytes(k_fp8), k_scale.data_ptr<float>(),
                                                static_cast<uint8_t*>(kv_cache.data_ptr()), slot_mapping.data_ptr(),
                                                slot_mapping.scalar_type() == at::kLong, k_fp8.size(0),
                                                kv_cache.size(0) * 64, err_ptr(err), at::cuda::getCurrentCUDAStream()),
                     "indexer_cache_write");
}

std::tuple<at::Tensor, at::Tensor> indexer_cache_gather(const at::Tensor& kv_cache, const at::Tensor& slots,
                                                        const std::optional<at::Tensor>& err) {
  check_indexer_cache(kv_cache);
  check_cuda(slots, "slots");
  TORCH_CHECK(slots.dim() == 1 && (slots.scalar_type() == at::kInt || slots.scalar_type() == at::kLong),
              "slots must be [N] int32 or int64");
  const at::cuda::CUDAGuard guard(kv_cache.device());
  auto k_fp8 = at::empty({slots.size(0), 128}, kv_cache.options().dtype(at::kFloat8_e4m3fn));
  auto k_scale = at::empty({slots.size(0)}, kv_cache.options().dtype(at::kFloat));
  DSV32_CHECK_LAUNCH(launch_indexer_cache_gather(bytes(kv_cache), kv_cache.size(0) * 64, slots.data_ptr(),
                                                 slots.scalar_type() == at::kLong, slots.size(0),
                                                 static_cast<uint8_t*>(k_fp8.data_ptr()), k_scale.data_ptr<float>(),
                                                 err_ptr(err), at::cuda::getCurrentCUDAStream()),
                     "indexer_cache_gather");
  return {k_fp8, k_scale};
}

at::Tensor indices_to_slots(const at::Tensor& indices, const at::Tensor& block_table, int64_t page_size,
                            const std::optional<at::Tensor>& err) {
  check_i32(indices, "indices");
  check_i32(block_table, "block_table");
  TORCH_CHECK(indices.dim() == 2 && block_table.size(0) == indices.size(0), "indices [R, K], block_table [R, pages]");
  TORCH_CHECK(page_size > 0, "page_size must be positive, got ", page_size);
  const at::cuda::CUDAGuard guard(indices.device());
  auto out = at::empty_like(indices);
  DSV32_CHECK_LAUNCH(launch_indices_to_slots(indices.data_ptr<int32_t>(), block_table.data_ptr<int32_t>(),
                                             block_table.size(1), out.data_ptr<int32_t>(), indices.size(0),
                                             indices.size(1), int(page_size), err_ptr(err),
                                             at::cuda::getCurrentCUDAStream()),
                     "indices_to_slots");
  return out;
}

void mla_cache_write(const at::Tensor& kv_c, const at::Tensor& k_pe, at::Tensor& kv_cache, const at::Tensor& slot_mapping,
                     const std::optional<at::Tensor>& err) {
  check_cuda(kv_c, "kv_c");
  check_cuda(k_pe, "k_pe");
  TORCH_CHECK(kv_c.scalar_type() == k_pe.scalar_type(), "kv_c and k_pe must share a dtype");
  TORCH_CHECK(kv_c.dim() == 2 && kv_c.size(1) == 512 && k_pe.dim() == 2 && k_pe.size(1) == 64 &&
              k_pe.size(0) == kv_c.size(0), "kv_c [T, 512], k_pe [T, 64]");
  check_cuda(kv_cache, "kv_cache");
  const bool fp8 = kv_cache.scalar_type() == at::kByte;
  TORCH_CHECK(fp8 ? kv_cache.size(-1) == 656 : (kv_cache.scalar_type() == at::kBFloat16 && kv_cache.size(-1) == 576),
              "kv_cache must be [pages, 64, 656] uint8 or [pages, 64, 576] bf16");
  check_slots(slot_mapping, kv_c.size(0));
  const at::cuda::CUDAGuard guard(kv_c.device());
  DSV32_CHECK_LAUNCH(launch_mla_cache_write(kv_c.data_ptr(), k_pe.data_ptr(), int(float_kind(kv_c, "kv_c")),
                                            kv_cache.data_ptr(), fp8, slot_mapping.data_ptr(),
                                            slot_mapping.scalar_type() == at::kLong, kv_c.size(0),
                                            kv_cache.numel() / kv_cache.size(-1), err_ptr(err),
                                            at::cuda::getCurrentCUDAStream()),
                     "mla_cache_write");
}

}  // namespace
}  // namespace dsv32

TORCH_LIBRARY(dsv32, m) {
  m.def("fp8_paged_indexer_logits(Tensor q_fp8, Tensor kv_cache, Tensor weights, Tensor context_lens, "
        "Tensor block_table, int max_context_len, Tensor(b!)? err=None) -> Tensor");
  m.def("fp8_indexer_logits(Tensor q_fp8, Tensor k_fp8, Tensor k_scale, Tensor weights, Tensor ks, Tensor ke) -> Tensor");
  m.def("indexer_topk(Tensor logits, int topk, Tensor ks, Tensor ke) -> Tensor");
  m.def("sparse_mla_decode(Tensor q, Tensor kv_cache, Tensor indices, float sm_scale, Tensor? topk_length=None, Tensor(b!)? err=None) -> (Tensor, Tensor)");
  m.def("sparse_mla_prefill(Tensor q, Tensor kv, Tensor indices, float sm_scale, Tensor? topk_length=None, Tensor(b!)? err=None) -> (Tensor, Tensor)");
  m.def("fp8_grouped_gemm_nt_contiguous(Tensor a, Tensor a_scale, Tensor b, Tensor b_scale, Tensor m_indices, "
        "ScalarType out_dtype) -> Tensor");
  m.def("fp8_grouped_gemm_nt_masked(Tensor a, Tensor a_scale, Tensor b, Tensor b_scale, Tensor masked_m, "
        "ScalarType out_dtype) -> Tensor");
  m.def("has_sm90_gemm() -> bool", &dsv32::has_sm90_gemm);
  m.def("has_sm90_indexer() -> bool", &dsv32::has_sm90_indexer);
  m.def("has_sm90_mla() -> bool", &dsv32::has_sm90_mla);
  m.def("has_sm90_mla_prefill() -> bool", &dsv32::has_sm90_mla_prefill);
  m.def("fp8_quant_act(Tensor x, int group, bool ue8m0) -> (Tensor, Tensor)");
  m.def("silu_and_mul_fp8_quant(Tensor x, Tensor? m_indices=None) -> (Tensor, Tensor)");
  m.def("indexer_quant(Tensor x, bool rotate) -> (Tensor, Tensor)");
  // err (optional int32 [2]): the bound-check flag of common/bounds.cuh, written by the kernel (hence (b!)).
  m.def("indexer_k_quant_and_cache(Tensor k, Tensor(a!) kv_cache, Tensor slot_mapping, Tensor(b!)? err=None) -> ()");
  m.def("indexer_cache_write(Tensor k_fp8, Tensor k_scale, Tensor(a!) kv_cache, Tensor slot_mapping, "
        "Tensor(b!)? err=None) -> ()");
  m.def("indexer_cache_gather(Tensor kv_cache, Tensor slots, Tensor(b!)? err=None) -> (Tensor, Tensor)");
  m.def("indices_to_slots(Tensor indices, Tensor block_table, int page_size, Tensor(b!)? err=None) -> Tensor");
  m.def("mla_cache_write(Tensor kv_c, Tensor k_pe, Tensor(a!) kv_cache, Tensor slot_mapping, "
        "Tensor(b!)? err=None) -> ()");
}

TORCH_LIBRARY_IMPL(dsv32, CUDA, m) {
  m.impl("fp8_paged_indexer_logits", &dsv32::fp8_paged_indexer_logits);
  m.impl("fp8_indexer_logits", &dsv32::fp8_indexer_logits);
  m.impl("indexer_topk", &dsv32::indexer_topk);
  m.impl("sparse_mla_decode", &dsv32::sparse_mla_decode);
  m.impl("sparse_mla_prefill", &dsv32::sparse_mla_prefill);
  m.impl("fp8_grouped_gemm_nt_contiguous", &dsv32::fp8_grouped_gemm_nt_contiguous);
  m.impl("fp8_grouped_gemm_nt_masked", &dsv32::fp8_grouped_gemm_nt_masked);
  m.impl("fp8_quant_act", &dsv32::fp8_quant_act);
  m.impl("silu_and_mul_fp8_quant", &dsv32::silu_and_mul_fp8_quant);
  m.impl("indexer_quant", &dsv32::indexer_quant);
  m.impl("indexer_k_quant_and_cache", &dsv32::indexer_k_quant_and_cache);
  m.impl("indexer_cache_write", &dsv32::indexer_cache_write);
  m.impl("indexer_cache_gather", &dsv32::indexer_cache_gather);
  m.impl("indices_to_slots", &dsv32::indices_to_slots);
  m.impl("mla_cache_write", &dsv32::mla_cache_write);
}
