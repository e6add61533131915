"""CUDA backend, shared part: the csrc/ torch extension's JIT build, availability, fake registration and
the device-side bounds flag. The op wrappers live beside each family's API, in `ops/<family>/cuda.py`
(FAMILIES below): they share the signatures of the `naive_*` references (ops/_dispatch.py calls them after
`is_available()`); each calls one `torch.ops.dsv32.<op>` (usable under CUDA graphs and torch.compile: each
family module's `register_fakes` gives its ops fake implementations, registered after the build).

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
import importlib
import os
import shutil
import threading
import warnings
from typing import Optional

import torch

_lock = threading.Lock()
_state: dict = {"loaded": False, "reason": None}
# Op families with a CUDA module (deepseek_v32_plugin.ops.<family>.cuda: OP_NAMES, the wrappers, register_fakes).
FAMILIES = ("indexer", "sparse_mla", "fp8_moe", "fp8_quant")


# ---------------------------------------------------------------- build ----

def csrc_dir() -> str:
    import deepseek_v32_plugin._csrc as c
    return os.path.dirname(os.path.abspath(c.__file__))


# Kernel translation units (ATen-free, each compiles alone). An explicit list, not a glob: a stale copy
# left in an install's build/ tree must not be compiled. tests/cuda/test_compile.py checks that it
# names exactly the .cu files of csrc/.
KERNEL_SOURCES = (
    "fp8_moe/sm80/fp8_grouped_gemm_sm80.cu",
    "fp8_moe/sm90/fp8_grouped_gemm_sm90.cu",
    "fp8_quant/fp8_quant.cu",
    "indexer/sm80/fp8_indexer_logits_sm80.cu",
    "indexer/indexer_cache.cu",
    "indexer/indexer_topk.cu",
    "indexer/sm90/fp8_indexer_logits_sm90.cu",
    "sparse_mla/mla_cache.cu",
    "sparse_mla/sm80/sparse_mla_decode_sm80.cu",
    "sparse_mla/sm80/sparse_mla_prefill_sm80.cu",
    "sparse_mla/sm90/sparse_mla_decode_sm90.cu",
    "sparse_mla/sm90/sparse_mla_prefill_sm90.cu",
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


def family_module(family: str):
    """deepseek_v32_plugin.ops.<family>.cuda: the family's CUDA wrappers."""
    return importlib.import_module(f"deepseek_v32_plugin.ops.{family}.cuda")


def op_families() -> dict:
    """op name -> family, for every op a family's CUDA module serves (its OP_NAMES)."""
    return {op: fam for fam in FAMILIES for op in family_module(fam).OP_NAMES}


def get_op(op: str):
    """The CUDA wrapper of `op` (from its family module), or None."""
    fam = op_families().get(op)
    return None if fam is None else getattr(family_module(fam), op, None)


def _register_fakes() -> None:
    """Meta implementations so torch.compile can trace through the ops without running them (each family
    module's register_fakes(fake) decorates its ops' fakes)."""
    lib = torch.library

    def fake(name):
        def deco(fn):
            try:
                lib.register_fake(f"dsv32::{name}")(fn)
            except RuntimeError:  # already registered (a second load in one process)
                pass
            return fn
        return deco

    for fam in FAMILIES:
        family_module(fam).register_fakes(fake)


# ------------------------------------------------------- shared by the family modules ----
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
