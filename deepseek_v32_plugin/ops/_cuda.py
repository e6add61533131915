"""CUDA backend: the csrc/ torch extension, JIT-built on first use, its ops on the torch dispatcher.

Functions here share the signatures of the `naive_*` references (ops/_dispatch.py calls them after
`is_available()`); each calls one `torch.ops.dsv32.<op>` (usable under CUDA graphs and torch.compile:
fake implementations are registered below).

Build: `torch.utils.cpp_extension.load` compiles the installed sources (`deepseek_v32_plugin._csrc`:
api/bindings.cpp + every .cu) the first time an op is needed. Only when torch has CUDA
(`torch.version.cuda`), a GPU is visible and nvcc is found ($CUDA_HOME/bin/nvcc or PATH). Environment:
  DSV32_CUDA_ARCHS     arch list, e.g. "8.0;9.0a" (default: the visible devices; 9.0 becomes 9.0a so the
                       wgmma kernels are built)
  DSV32_CUDA_CACHE     build directory (default ~/.cache/deepseek_v32_plugin/cuda_ext/<hash>)
  DSV32_CUTLASS_INCLUDE  CuTe/CUTLASS headers for the sm_90a GEMM (default: the nvidia-cutlass wheel)
  DSV32_CUDA_DISABLE=1 never build (the dispatch falls back to Triton / the references)
  DSV32_CUDA_GEMM=sm80 use the mma.sync grouped GEMM even on Hopper
  DSV32_CUDA_VERBOSE=1 show the compiler output
  DSV32_CUDA_CHECK_BOUNDS=1  debug: raise IndexError naming the tensor when a slot / position / block-table
                       entry is out of range (the kernels record it in a flag tensor; the check synchronizes)

Inputs a kernel cannot serve raise `_dispatch.Unsupported` before any launch (the auto dispatch then warns
once and uses the next backend, as with the Triton launchers). Out-of-range index *values* live on the
device, so checking them on the host would cost a device->host sync per call (the decode path must stay
sync-free and CUDA-graph capturable): instead every kernel masks them (a write is skipped, a key is
treated as -1, a gathered row reads as zeros, a position past the block table maps to slot -1, a bad
block-table page gives -inf logits), so they never become illegal addresses; the first one is recorded in
an int32 [2] flag tensor (csrc/common/bounds.cuh) that the wrappers pass and check only with
DSV32_CUDA_CHECK_BOUNDS=1 (and never while a CUDA graph is being captured). Checks on host-known shapes
(cache capacity vs max_context_len, topk, heads, dtypes) always raise.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import threading
import warnings
from typing import Optional

import torch

_lock = threading.Lock()
_state: dict = {"loaded": False, "reason": None}
MAX_TOPK = 2048


# ---------------------------------------------------------------- build ----

def csrc_dir() -> str:
    import deepseek_v32_plugin._csrc as c
    return os.path.dirname(os.path.abspath(c.__file__))


from ._dispatch import Unsupported

# Kernel translation units (ATen-free, each compiles alone). An explicit list, not a glob: a stale copy
# left in an install's build/ tree must not be compiled. tests/cuda/test_compile.py checks that it
# names exactly the .cu files of csrc/.
KERNEL_SOURCES = (
    "fp8_moe/sm80/fp8_grouped_gemm_sm80.cu",
    "fp8_moe/sm90/fp8_grouped_gemm_sm90.cu",
    "fp8_quant/sm80/fp8_quant.cu",
    "indexer/sm80/fp8_indexer_logits_sm80.cu",
    "indexer/sm80/indexer_cache.cu",
    "indexer/sm80/indexer_topk.cu",
    "indexer/sm90/fp8_indexer_logits_sm90.cu",
    "sparse_mla/sm80/mla_cache.cu",
    "sparse_mla/sm80/sparse_mla_decode_sm80.cu",
    "sparse_mla/sm80/sparse_mla_prefill_sm80.cu",
    "sparse_mla/sm90/sparse_mla_decode_sm90.cu",
)


def sources(root: Optional[str] = None) -> list[str]:
    """api/bindings.cpp + the kernel .cu files."""
    root = root or csrc_dir()
    return [os.path.join(root, "api", "bindings.cpp")] + [os.path.join(root, *f.split("/")) for f in KERNEL_SOURCES]


def _nvcc() -> Optional[str]:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def _cuda_home() -> Optional[str]:
    """A toolkit root holding bin/nvcc and include/cuda_runtime_api.h."""
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    if _nvcc():
        cands.append(os.path.dirname(os.path.dirname(os.path.realpath(_nvcc()))))
    cands.append("/usr/local/cuda")
    for c in cands:
        if c and os.path.exists(os.path.join(c, "include", "cuda_runtime_api.h")):
            return c
    return None


def cuda_archs() -> list[str]:
    """Arch list like ["8.0", "9.0a"]: $DSV32_CUDA_ARCHS, else the visible devices'."""
    env = os.environ.get("DSV32_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        archs = [a.strip() for a in env.replace(",", ";").replace(" ", ";").split(";") if a.strip()]
    else:
        archs = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return [a.replace("+PTX", "") + ("a" if a in ("9.0", "10.0") else "") for a in archs]


def gencode_flags(archs: list[str]) -> list[str]:
    flags = []
    for a in archs:
        num = a.replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return flags


def cutlass_include() -> Optional[str]:
    env = os.environ.get("DSV32_CUTLASS_INCLUDE")
    if env:
        return env
    try:
        import cutlass_library
        p = os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include")
        return p if os.path.isdir(os.path.join(p, "cute")) else None
    except ImportError:
        return None


def nvcc_flags(archs: list[str], cute: Optional[bool] = None) -> list[str]:
    """Flags shared by the JIT build and tests/cuda/test_compile.py. CuTe (for the sm_90a wgmma GEMM) is
    used when a 9.0 arch is listed and its headers are found; cute=True forces it (compile checks)."""
    flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", *gencode_flags(archs)]
    if cute is None:
        cute = any(a.startswith("9.0") for a in archs)
    inc = cutlass_include() if cute else None
    if inc:
        flags += [f"-I{inc}", "-DDSV32_WITH_CUTE=1"]
        if "9.0a" in archs:
            flags.append("-DDSV32_SM90A=1")  # the fatbin holds sm_90a code: the wgmma path may be used
    return flags


def _why_not() -> Optional[str]:
    if os.environ.get("DSV32_CUDA_DISABLE", "0") == "1":
        return "DSV32_CUDA_DISABLE=1"
    if not torch.version.cuda:
        return f"torch {torch.__version__} is built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    if _nvcc() is None:
        return "nvcc not found (set CUDA_HOME)"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return f"compute capability {major}.x < 8.0 (the kernels need sm_80+)"
    return None


def _build() -> None:
    from torch.utils import cpp_extension

    archs = cuda_archs()
    srcs = sources()
    flags = nvcc_flags(archs)
    h = hashlib.sha256()
    for s in srcs + sorted(glob.glob(os.path.join(csrc_dir(), "**", "*.h*"), recursive=True)) + \
            sorted(glob.glob(os.path.join(csrc_dir(), "**", "*.cuh"), recursive=True)):
        with open(s, "rb") as f:
            h.update(f.read())
    h.update(" ".join(flags).encode())
    h.update(torch.__version__.encode())
    tag = h.hexdigest()[:16]
    build_dir = os.environ.get("DSV32_CUDA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "deepseek_v32_plugin", "cuda_ext")
    build_dir = os.path.join(build_dir, tag)
    os.makedirs(build_dir, exist_ok=True)
    if cpp_extension.CUDA_HOME is None:  # torch found no toolkit by itself (nvcc behind a wrapper script)
        cpp_extension.CUDA_HOME = _cuda_home()
    cpp_extension.load(
        name=f"dsv32_cuda_{tag}", sources=srcs, extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=flags, extra_include_paths=[os.path.join(csrc_dir(), "api")],
        build_directory=build_dir, is_python_module=False,
        verbose=os.environ.get("DSV32_CUDA_VERBOSE", "0") == "1")
    _register_fakes()


def _ensure() -> None:
    if _state["loaded"]:
        return
    with _lock:
        if _state["loaded"] or _state["reason"]:
            return
        why = _why_not()
        if why is None:
            try:
                _build()
                _state["loaded"] = True
                return
            except Exception as e:  # a failed build must not break the plugin: report and fall back
                why = f"CUDA extension build failed: {type(e).__name__}: {str(e)[-2000:]}"
                warnings.warn(f"deepseek_v32_plugin: {why}")
        _state["reason"] = why


def is_available() -> bool:
    _ensure()
    return _state["loaded"]


def unavailable_reason() -> Optional[str]:
    _ensure()
    return _state["reason"]


def _register_fakes() -> None:
    """Meta implementations so torch.compile can trace through the ops without running them."""
    lib = torch.library

    def fake(name):
        def deco(fn):
            try:
                lib.register_fake(f"dsv32::{name}")(fn)
            except RuntimeError:  # already registered (a second load in one process)
                pass
            return fn
        return deco

    @fake("fp8_paged_indexer_logits")
    def _(q, kv_cache, weights, context_lens, block_table, max_context_len, err=None):
        return q.new_empty((q.shape[0] * q.shape[1], max_context_len), dtype=torch.float32)

    @fake("fp8_indexer_logits")
    def _(q, k, k_scale, weights, ks, ke):
        return q.new_empty((q.shape[0], k.shape[0]), dtype=torch.float32)

    @fake("indexer_topk")
    def _(logits, topk, ks, ke):
        return logits.new_empty((logits.shape[0], topk), dtype=torch.int32)

    @fake("sparse_mla_decode")
    def _(q, kv_cache, indices, sm_scale, topk_length=None, err=None):
        return (q.new_empty((*q.shape[:3], 512)), q.new_empty(q.shape[:3], dtype=torch.float32))

    @fake("sparse_mla_prefill")
    def _(q, kv, indices, sm_scale, topk_length=None, err=None):
        return (q.new_empty((*q.shape[:2], 512)), q.new_empty(q.shape[:2], dtype=torch.float32))

    @fake("fp8_grouped_gemm_nt_contiguous")
    def _(a, a_scale, b, b_scale, m_indices, out_dtype):
        return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)

    @fake("fp8_grouped_gemm_nt_masked")
    def _(a, a_scale, b, b_scale, masked_m, out_dtype):
        return a.new_empty((a.shape[0], a.shape[1], b.shape[1]), dtype=out_dtype)

    @fake("fp8_quant_act")
    def _(x, group, ue8m0):
        return (x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
                x.new_empty((*x.shape[:-1], x.shape[-1] // group), dtype=torch.float32))

    @fake("silu_and_mul_fp8_quant")
    def _(x):
        n = x.shape[1] // 2
        return x.new_empty((x.shape[0], n), dtype=torch.float8_e4m3fn), x.new_empty((x.shape[0], n // 128),
                                                                                      dtype=torch.float32)

    @fake("indexer_quant")
    def _(x, rotate):
        return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty(x.shape[:-1], dtype=torch.float32)

    @fake("indices_to_slots")
    def _(indices, block_table, page_size, err=None):
        return torch.empty_like(indices)

    @fake("indexer_cache_gather")
    def _(kv_cache, slots, err=None):
        return (kv_cache.new_empty((slots.shape[0], 128), dtype=torch.float8_e4m3fn),
                kv_cache.new_empty((slots.shape[0],), dtype=torch.float32))

    for name in ("indexer_k_quant_and_cache", "indexer_cache_write", "mla_cache_write"):
        fake(name)(lambda *args, **kwargs: None)


# ------------------------------------------------------------------ ops ----
# Same positional signatures as the naive_* references.

MAX_HEADS = 128                   # indexer logits: heads per query row
OP_NAMES = (  # every op this backend serves (tests/cuda/test_backend_table.py checks the model's needs)
    "fp8_paged_indexer_logits", "fp8_indexer_logits", "indexer_topk", "sparse_mla_decode", "sparse_mla_prefill",
    "fp8_grouped_gemm_nt_contiguous", "fp8_grouped_gemm_nt_masked", "fp8_quant_act", "silu_and_mul_fp8_quant",
    "indexer_quant", "indexer_k_quant_and_cache", "indexer_cache_write", "indexer_cache_gather",
    "indices_to_slots", "mla_cache_write", "fp8_gemm_nt")

# Codes of csrc/common/bounds.cuh -> (tensor, what was out of range).
BOUNDS_ERRORS = {
    1: ("slot_mapping", "a slot past the cache (slot >= pages * 64)"),
    2: ("slots", "a slot outside the cache (slot < 0 or >= pages * 64)"),
    3: ("indices", "a slot past the latent cache (slot >= pages * 64)"),
    4: ("indices", "a position past the block table (position // page >= block_table columns)"),
    5: ("block_table", "a page id outside the cache (< 0 or >= pages)"),
}


def check_bounds_enabled() -> bool:
    return os.environ.get("DSV32_CUDA_CHECK_BOUNDS", "0") == "1"


def _err_flag(device: torch.device) -> Optional[torch.Tensor]:
    """The int32 [2] flag the kernels record the first out-of-range entry in, or None (no check)."""
    if not check_bounds_enabled() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return None
    return torch.zeros(2, dtype=torch.int32, device=device)


def raise_bounds(op: str, err: Optional[torch.Tensor]) -> None:
    """Raise IndexError naming the tensor if the kernel recorded an out-of-range entry (synchronizes)."""
    if err is None:
        return
    code, value = (int(v) for v in err.tolist())
    if code:
        name, what = BOUNDS_ERRORS.get(code, ("?", f"unknown bound-check code {code}"))
        raise IndexError(f"{op}: {name} holds {what}: {value}")


def _i32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int32).contiguous()


def fp8_paged_indexer_logits(q_fp8, kv_cache, weights, context_lens, block_table, max_context_len):
    if q_fp8.shape[2] > MAX_HEADS:
        raise Unsupported(f"the CUDA paged indexer logits take at most {MAX_HEADS} heads, got {q_fp8.shape[2]}")
    err = _err_flag(q_fp8.device)
    out = torch.ops.dsv32.fp8_paged_indexer_logits(q_fp8.contiguous(), kv_cache, weights.float().contiguous(),
                                                   _i32(context_lens), _i32(block_table), int(max_context_len), err)
    raise_bounds("fp8_paged_indexer_logits", err)
    return out


def fp8_indexer_logits(q_fp8, k_fp8, k_scale, weights, ks, ke):
    if q_fp8.shape[1] > MAX_HEADS:
        raise Unsupported(f"the CUDA indexer logits take at most {MAX_HEADS} heads, got {q_fp8.shape[1]}")
    return torch.ops.dsv32.fp8_indexer_logits(q_fp8.contiguous(), k_fp8.contiguous(), k_scale.float().contiguous(),
                                              weights.float().contiguous(), _i32(ks), _i32(ke))


def indexer_topk(logits, topk, ks, ke):
    if topk > MAX_TOPK:  # the kernel sorts the selection in shared memory (2048 entries)
        raise Unsupported(f"the CUDA top-k serves topk <= {MAX_TOPK}, got {topk}")
    return torch.ops.dsv32.indexer_topk(logits.float().contiguous(), int(topk), _i32(ks), _i32(ke))


def _latent_cache_supported(kv_cache) -> None:
    if kv_cache.dtype not in (torch.uint8, torch.bfloat16):
        raise Unsupported(f"the CUDA sparse MLA kernels read bf16 or fp8_ds_mla (uint8) latent caches, "
                          f"not {kv_cache.dtype}")


def _lens(topk_length):
    return None if topk_length is None else _i32(topk_length.reshape(-1))


def sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=512, topk_length=None):
    _latent_cache_supported(kv_cache)
    err = _err_flag(q.device)
    out, lse = torch.ops.dsv32.sparse_mla_decode(q.to(torch.bfloat16).contiguous(), kv_cache,
                                                 _i32(indices), float(sm_scale), _lens(topk_length), err)
    raise_bounds("sparse_mla_decode", err)
    return out.to(q.dtype), lse


def sparse_mla_prefill(q, kv, indices, sm_scale, d_v=512, topk_length=None):
    """q [s_q, h, 576] (read as bf16), kv [s_kv, 1, 576] bf16, indices [s_q, 1, topk] int rows of kv (-1 none)
    -> (out [s_q, h, 512] q.dtype, lse [s_q, h] fp32). Reaches the auto dispatch only once verified on a GPU
    (_dispatch.CUDA_OPT_IN); backend="cuda" / DSV32_BACKEND_SPARSE_MLA_PREFILL=cuda select it."""
    if q.dim() != 3 or q.shape[-1] != 576:
        raise ValueError(f"sparse_mla_prefill: q must be [s_q, h, 576], got {list(q.shape)}")
    if kv.dim() != 3 or tuple(kv.shape[1:]) != (1, 576):
        raise ValueError(f"sparse_mla_prefill: kv must be [s_kv, 1, 576], got {list(kv.shape)}")
    if indices.dim() != 3 or tuple(indices.shape[:2]) != (q.shape[0], 1):
        raise ValueError(f"sparse_mla_prefill: indices must be [s_q={q.shape[0]}, 1, topk], got {list(indices.shape)}")
    if kv.dtype != torch.bfloat16:
        raise Unsupported(f"the CUDA sparse MLA prefill reads a bf16 kv, not {kv.dtype}")
    if d_v != 512:
        raise Unsupported(f"the CUDA sparse MLA prefill computes d_v = 512, not {d_v}")
    err = _err_flag(q.device)
    out, lse = torch.ops.dsv32.sparse_mla_prefill(q.to(torch.bfloat16).contiguous(), kv.contiguous(),
                                                  _i32(indices), float(sm_scale), _lens(topk_length), err)
    raise_bounds("sparse_mla_prefill", err)
    return out.to(q.dtype), lse


def _gemm_dtype(out_dtype):
    return torch.bfloat16 if out_dtype == torch.bfloat16 else torch.float32


def fp8_grouped_gemm_nt_contiguous(a, a_scale, b, b_scale, m_indices, out_dtype=torch.bfloat16):
    out = torch.ops.dsv32.fp8_grouped_gemm_nt_contiguous(a.contiguous(), a_scale.float().contiguous(),
                                                         b.contiguous(), b_scale.float().contiguous(),
                                                         _i32(m_indices), _gemm_dtype(out_dtype))
    return out if out.dtype == out_dtype else out.to(out_dtype)


def fp8_grouped_gemm_nt_masked(a, a_scale, b, b_scale, masked_m, out_dtype=torch.bfloat16):
    out = torch.ops.dsv32.fp8_grouped_gemm_nt_masked(a.contiguous(), a_scale.float().contiguous(),
                                                     b.contiguous(), b_scale.float().contiguous(),
                                                     _i32(masked_m), _gemm_dtype(out_dtype))
    return out if out.dtype == out_dtype else out.to(out_dtype)


def fp8_quant_act(x, group=128, ue8m0=True):
    if group != 128:  # the kernel is written for 128-wide groups (the only size the model uses)
        raise Unsupported(f"the CUDA activation quantizer serves group=128, got {group}")
    return torch.ops.dsv32.fp8_quant_act(x.contiguous(), 128, bool(ue8m0))


def silu_and_mul_fp8_quant(x):
    return torch.ops.dsv32.silu_and_mul_fp8_quant(x.contiguous())


def indexer_quant(x, rotate=True):
    return torch.ops.dsv32.indexer_quant(x.contiguous(), bool(rotate))


def indexer_k_quant_and_cache(k, kv_cache, slot_mapping):
    err = _err_flag(kv_cache.device)
    torch.ops.dsv32.indexer_k_quant_and_cache(k.contiguous(), kv_cache, slot_mapping.contiguous(), err)
    raise_bounds("indexer_k_quant_and_cache", err)


def indexer_cache_write(k_fp8, k_scale, kv_cache, slot_mapping):
    err = _err_flag(kv_cache.device)
    torch.ops.dsv32.indexer_cache_write(k_fp8.contiguous(), k_scale.float().contiguous(), kv_cache,
                                        slot_mapping.contiguous(), err)
    raise_bounds("indexer_cache_write", err)


def indexer_cache_gather(kv_cache, slots):
    err = _err_flag(kv_cache.device)
    out = torch.ops.dsv32.indexer_cache_gather(kv_cache, slots.contiguous(), err)
    raise_bounds("indexer_cache_gather", err)
    return out


def indices_to_slots(indices, block_table, page_size=64):
    err = _err_flag(indices.device)
    out = torch.ops.dsv32.indices_to_slots(_i32(indices), _i32(block_table), int(page_size), err)
    raise_bounds("indices_to_slots", err)
    return out


def mla_cache_write(kv_c, k_pe, kv_cache, slot_mapping):
    _latent_cache_supported(kv_cache)
    if k_pe.dtype != kv_c.dtype:  # one rounding, as in the reference
        kv_c, k_pe = kv_c.float(), k_pe.float()
    err = _err_flag(kv_cache.device)
    torch.ops.dsv32.mla_cache_write(kv_c.contiguous(), k_pe.contiguous(), kv_cache, slot_mapping.contiguous(), err)
    raise_bounds("mla_cache_write", err)


def fp8_gemm_nt(a, a_scale, b, b_scale, out_dtype=torch.bfloat16):
    """Dense block-scaled FP8 GEMM = the grouped kernel with one group (every row in group 0)."""
    m_indices = torch.zeros(a.shape[0], dtype=torch.int32, device=a.device)
    return fp8_grouped_gemm_nt_contiguous(a, a_scale, b.unsqueeze(0), b_scale.unsqueeze(0), m_indices, out_dtype)
