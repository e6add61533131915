"""Compile-only checks of the CUDA extension (no GPU, no CUDA torch): every .cu under csrc/ is compiled
alone by nvcc for sm_80 and sm_90a with the JIT build's flags (deepseek_v32_plugin.ops._cuda.nvcc_flags),
then the cubins are read with cuobjdump: the intended tensor-core instructions are present (QGMMA for the
sm_90a grouped GEMM, HMMA for the mma.sync kernels), no spills / stack frames, registers under budget.
api/bindings.cpp (the only ATen translation unit) gets a g++ syntax check against the CPU torch headers
with declaration-only stand-ins for the CUDA math-library headers that CPU wheels lack; it is never
linked here (the real build happens on a CUDA machine, in _cuda.py).
At most 2 nvcc jobs run at once (the CI machine is shared).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from csrc_paths import csrc_dir, cuda_include, cuobjdump, cutlass_include, nvcc

ARCHS = {"sm_80": "8.0", "sm_90a": "9.0a"}
# The arch-independent (plain CUDA, no tensor-core asm) kernels with bound checks / new ops (issue 14) also
# compile for Ada and Blackwell: cheap translation units, so CI time stays small.
EXTRA_ARCHS = {"sm_89": "8.9", "sm_100a": "10.0a"}
EXTRA_ARCH_FILES = ("indexer/indexer_cache.cu", "sparse_mla/mla_cache.cu", "indexer/indexer_topk.cu",
                    "fp8_quant/fp8_quant.cu",
                    "sparse_mla/sm80/sparse_mla_prefill_sm80.cu")
JOBS = int(os.environ.get("DSV32_COMPILE_JOBS", "2"))


def _cu_files() -> list[str]:
    root = csrc_dir()
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files if f.endswith(".cu")]
    return sorted(out)


CU_FILES = _cu_files()

# What each kernel file must contain per arch (SASS mnemonics), and register budgets per kernel.
EXPECT_SASS = {
    ("fp8_moe/sm90/fp8_grouped_gemm_sm90.cu", "sm_90a"): [r"QGMMA\.64x128x32\.F32\.E4M3\.E4M3"],
    ("indexer/sm90/fp8_indexer_logits_sm90.cu", "sm_90a"): [r"QGMMA\.64x64x32\.F32\.E4M3\.E4M3", r"QGMMA\.64x128x32\.F32\.E4M3\.E4M3"],
    ("fp8_moe/sm80/fp8_grouped_gemm_sm80.cu", "sm_80"): [r"HMMA\.16816\.F32\b"],
    ("fp8_moe/sm80/fp8_grouped_gemm_sm80.cu", "sm_90a"): [r"HMMA\.16816\.F32\b"],
    ("indexer/sm80/fp8_indexer_logits_sm80.cu", "sm_80"): [r"HMMA\.16816\.F32\b"],
    ("indexer/sm80/fp8_indexer_logits_sm80.cu", "sm_90a"): [r"HMMA\.16816\.F32\b"],
    ("sparse_mla/sm90/sparse_mla_decode_sm90.cu", "sm_90a"): [r"HGMMA\.64x64x16\.F32\.BF16", r"HGMMA\.64x256x16\.F32\.BF16 .*tnspB"],
    # 36 k16 steps of S (64 heads x 32 keys per warpgroup) + 4 of P V per chunk
    ("sparse_mla/sm90/sparse_mla_prefill_sm90.cu", "sm_90a"): [r"HGMMA\.64x32x16\.F32\.BF16", r"HGMMA\.64x256x16\.F32\.BF16 .*tnspB",
                                                          r"LDGSTS"],
    ("sparse_mla/sm80/sparse_mla_decode_sm80.cu", "sm_80"): [r"HMMA\.16816\.F32\.BF16", r"LDSM\.16\.MT88"],
    ("sparse_mla/sm80/sparse_mla_decode_sm80.cu", "sm_90a"): [r"HMMA\.16816\.F32\.BF16", r"LDSM\.16\.MT88"],
    ("sparse_mla/sm80/sparse_mla_prefill_sm80.cu", "sm_80"): [r"HMMA\.16816\.F32\.BF16", r"LDSM\.16\.MT88"],
    ("sparse_mla/sm80/sparse_mla_prefill_sm80.cu", "sm_90a"): [r"HMMA\.16816\.F32\.BF16", r"LDSM\.16\.MT88"],
}
FORBID_SASS = {
    ("fp8_moe/sm90/fp8_grouped_gemm_sm90.cu", "sm_90a"): [r"\bHMMA\b"],        # the wgmma path must not fall back
    ("fp8_moe/sm90/fp8_grouped_gemm_sm90.cu", "sm_80"): [r"GMMA"],             # sm_80 object: guarded-out bodies
    ("indexer/sm90/fp8_indexer_logits_sm90.cu", "sm_90a"): [r"\bHMMA\b"],
    ("indexer/sm90/fp8_indexer_logits_sm90.cu", "sm_80"): [r"GMMA"],
    ("sparse_mla/sm90/sparse_mla_decode_sm90.cu", "sm_90a"): [r"\bHMMA\b"],
    ("sparse_mla/sm90/sparse_mla_decode_sm90.cu", "sm_80"): [r"GMMA"],
    ("sparse_mla/sm90/sparse_mla_prefill_sm90.cu", "sm_90a"): [r"\bHMMA\b"],
    ("sparse_mla/sm90/sparse_mla_prefill_sm90.cu", "sm_80"): [r"GMMA"],
}
REG_BUDGET = {  # max registers per thread, per kernel file (a regression guard; 255 is the hardware cap)
    "indexer/sm80/fp8_indexer_logits_sm80.cu": 232, "indexer/indexer_topk.cu": 64, "indexer/indexer_cache.cu": 64,
    "indexer/sm90/fp8_indexer_logits_sm90.cu": 168, "sparse_mla/sm80/sparse_mla_decode_sm80.cu": 168, "sparse_mla/mla_cache.cu": 64,
    "sparse_mla/sm80/sparse_mla_prefill_sm80.cu": 168,
    "sparse_mla/sm90/sparse_mla_decode_sm90.cu": 255, "sparse_mla/sm90/sparse_mla_prefill_sm90.cu": 255, "fp8_moe/sm80/fp8_grouped_gemm_sm80.cu": 168, "fp8_moe/sm90/fp8_grouped_gemm_sm90.cu": 232,
    "fp8_quant/fp8_quant.cu": 64,
}


def _compile(rel: str, arch: str, outdir: str) -> dict:
    from deepseek_v32_plugin.ops._cuda import nvcc_flags
    root = csrc_dir()
    cubin = os.path.join(outdir, rel.replace("/", "__") + f".{arch}.cubin")
    flags = nvcc_flags([{**ARCHS, **EXTRA_ARCHS}[arch]], cute=True)
    try:  # the defines torch's cpp_extension adds to every nvcc call (no implicit half/bf16 operators)
        from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
        flags = [f for f in COMMON_NVCC_FLAGS if f not in flags] + flags
    except ImportError:
        pass
    cmd = [nvcc(), *flags, "-I", os.path.join(root, "api"), "-Xptxas=-v", "-cubin", "-o", cubin, os.path.join(root, rel)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    rep = {"cmd": " ".join(cmd), "rc": r.returncode, "log": r.stderr + r.stdout, "cubin": cubin}
    if r.returncode == 0:
        tool = cuobjdump()
        rep["sass"] = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True).stdout
        rep["res"] = subprocess.run([tool, "-res-usage", cubin], capture_output=True, text=True).stdout
    return rep


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    if nvcc() is None:
        pytest.skip("nvcc not found")
    if cuobjdump() is None:
        pytest.skip("cuobjdump not found (it ships in the triton wheel)")
    if cutlass_include() is None:
        pytest.skip("CuTe headers not found (pip install nvidia-cutlass)")
    outdir = str(tmp_path_factory.mktemp("cubins"))
    jobs = [(f, a) for f in CU_FILES for a in ARCHS]
    # the slow CuTe translation units first, so the two workers finish together
    jobs.sort(key=lambda j: "sm90" not in j[0])
    with ThreadPoolExecutor(max_workers=JOBS) as ex:
        reps = list(ex.map(lambda j: _compile(j[0], j[1], outdir), jobs))
    return dict(zip(jobs, reps))


def _functions(res: str) -> dict[str, dict[str, int]]:
    """cuobjdump -res-usage -> {mangled kernel name: {REG, STACK, LOCAL, SHARED}}"""
    out, name = {}, None
    for line in res.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        if name and "REG:" in line:
            out[name] = {k: int(v) for k, v in re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", line)}
            name = None
    return out


@pytest.mark.parametrize("arch", list(EXTRA_ARCHS))
@pytest.mark.parametrize("rel", EXTRA_ARCH_FILES)
def test_plain_kernels_compile_for_more_archs(tmp_path, rel, arch):
    if nvcc() is None or cuobjdump() is None:
        pytest.skip("nvcc / cuobjdump not found")
    rep = _compile(rel, arch, str(tmp_path))
    assert rep["rc"] == 0, f"{rep['cmd']}\n{rep['log'][-6000:]}"
    assert not re.findall(r"[1-9]\d* bytes spill", rep["log"]), rep["log"][-3000:]
    assert "kernel" in rep["res"]


def test_sources_found():
    assert {"indexer/sm80/fp8_indexer_logits_sm80.cu", "indexer/indexer_topk.cu", "sparse_mla/sm80/sparse_mla_decode_sm80.cu",
            "fp8_moe/sm80/fp8_grouped_gemm_sm80.cu", "fp8_moe/sm90/fp8_grouped_gemm_sm90.cu", "indexer/sm90/fp8_indexer_logits_sm90.cu",
            "indexer/indexer_cache.cu", "sparse_mla/mla_cache.cu", "fp8_quant/fp8_quant.cu",
            "sparse_mla/sm90/sparse_mla_decode_sm90.cu", "sparse_mla/sm80/sparse_mla_prefill_sm80.cu",
            "sparse_mla/sm90/sparse_mla_prefill_sm90.cu"} <= set(CU_FILES)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("rel", CU_FILES)
def test_compiles(builds, rel, arch):
    rep = builds[(rel, arch)]
    assert rep["rc"] == 0, f"{rep['cmd']}\n{rep['log'][-6000:]}"
    assert "C7508" not in rep["log"], rep["log"][-3000:]  # setmaxnreg ignored


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("rel", CU_FILES)
def test_no_spills_and_register_budget(builds, rel, arch):
    rep = builds[(rel, arch)]
    assert rep["rc"] == 0
    funcs = _functions(rep["res"])
    kernels = {n: v for n, v in funcs.items() if "kernel" in n}
    if not kernels:
        pytest.skip(f"{rel} has no kernels for {arch}")
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", rep["log"])
    assert all(a == "0" and b == "0" for a, b in spills), f"spills in {rel} ({arch}):\n{rep['log'][-3000:]}"
    for name, v in kernels.items():
        assert v["LOCAL"] == 0 and v["STACK"] == 0, f"{name}: local/stack memory {v}"
        budget = REG_BUDGET.get(rel, 255)
        assert v["REG"] <= budget, f"{name} uses {v['REG']} registers (budget {budget})"
    assert not re.search(r"\b(STL|LDL)\b", rep["sass"]), f"local-memory traffic in {rel} ({arch})"


@pytest.mark.parametrize("key", sorted(set(EXPECT_SASS) | set(FORBID_SASS)), ids=lambda k: f"{k[0]}-{k[1]}")
def test_tensor_core_instructions(builds, key):
    rep = builds[key]
    assert rep["rc"] == 0
    for pat in EXPECT_SASS.get(key, []):
        n = len(re.findall(pat, rep["sass"]))
        assert n > 0, f"{key}: no {pat} in SASS"
    for pat in FORBID_SASS.get(key, []):
        assert not re.search(pat, rep["sass"]), f"{key}: unexpected {pat} in SASS"


def test_sm90_gemm_counts(builds):
    """4 wgmma k32 steps per 128-wide K block, in each of the 4 kernel instantiations."""
    sass = builds[("fp8_moe/sm90/fp8_grouped_gemm_sm90.cu", "sm_90a")]["sass"]
    assert len(re.findall(r"QGMMA\.64x128x32\.F32\.E4M3\.E4M3", sass)) == 16


def test_sm90_stubs_define_the_declared_launchers(tmp_path):
    """A build with no 9.0 arch (A100 / L40 / 4090) has no CuTe: each sm90 .cu compiles to stubs, which must
    define exactly the functions api/*.h declare (a stub whose signature drifted is another overload, and
    the extension would fail to load with an undefined symbol). The mangled names bindings.cpp needs are
    taken from a reference file that uses every declared *_sm90* function."""
    from deepseek_v32_plugin.ops._cuda import nvcc_flags
    if nvcc() is None or not shutil.which("nm"):
        pytest.skip("nvcc / nm not found")
    root = csrc_dir()
    flags = nvcc_flags(["8.0"])                  # what the JIT build uses on an sm_80-only machine
    assert "-DDSV32_WITH_CUTE=1" not in flags
    names = set()
    for h in sorted(os.listdir(os.path.join(root, "api"))):
        if h.endswith(".h"):
            names |= set(re.findall(r"\b(\w+_sm90\w*)\(", open(os.path.join(root, "api", h)).read()))
    assert {"launch_sparse_mla_decode_sm90", "launch_sparse_mla_prefill_sm90"} <= names
    refs = tmp_path / "refs.cu"
    refs.write_text("".join(f'#include "{h}"\n' for h in ("sparse_mla.h", "indexer.h", "fp8_moe.h"))
                    + "void* dsv32_refs[] = {" + ", ".join(f"(void*)&dsv32::{n}" for n in sorted(names)) + "};\n")
    objs = {}
    for rel in ["refs"] + [f for f in CU_FILES if "/sm90/" in f]:
        src = str(refs) if rel == "refs" else os.path.join(root, rel)
        obj = str(tmp_path / (rel.replace("/", "__") + ".o"))
        r = subprocess.run([nvcc(), *flags, "-I", os.path.join(root, "api"), "-c", "-o", obj, src],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{rel} without CuTe:\n{r.stderr[-3000:]}"
        objs[rel] = obj
    needed = set(subprocess.run(["nm", "-u", "--format=just-symbols", objs.pop("refs")], capture_output=True,
                                text=True).stdout.split())
    needed = {n for n in needed if "sm90" in n}
    defined = set()
    for obj in objs.values():
        defined |= set(subprocess.run(["nm", "--defined-only", "--format=just-symbols", obj], capture_output=True,
                                      text=True).stdout.split())
    assert len(needed) == len(names) and needed <= defined, sorted(needed - defined)


def test_sm90_mla_prefill_counts(builds):
    """Per 64-key chunk: 36 wgmma k16 steps of S (K = 576) and 4 of P V (64 keys), one kernel instantiation."""
    sass = builds[("sparse_mla/sm90/sparse_mla_prefill_sm90.cu", "sm_90a")]["sass"]
    assert len(re.findall(r"HGMMA\.64x32x16\.F32\.BF16", sass)) == 36
    assert len(re.findall(r"HGMMA\.64x256x16\.F32\.BF16", sass)) == 4


_STUBS = {  # declaration-only stand-ins for CUDA library headers absent from CPU torch wheels' world
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t;\ntypedef int cusparseStatus_t;\n",
    "cublas_v2.h": "#include <cuda_runtime_api.h>\ntypedef struct cublasContext* cublasHandle_t;\n"
                   "typedef int cublasStatus_t;\n",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusolverDn.h": "typedef struct cusolverDnContext* cusolverDnHandle_t;\n",
    "cusolver_common.h": "typedef int cusolverStatus_t;\n",
    "c10/cuda/impl/cuda_cmake_macros.h": "",
}


def test_bindings_syntax(tmp_path):
    import torch
    if not shutil.which("g++"):
        pytest.skip("g++ not found")
    tinc = os.path.join(os.path.dirname(torch.__file__), "include")
    if not os.path.exists(os.path.join(tinc, "ATen", "cuda", "CUDAContext.h")):
        pytest.skip("torch CUDA headers not shipped")
    cuda_inc = cuda_include()
    if cuda_inc is None:
        pytest.skip("CUDA runtime headers not found")
    for rel, text in _STUBS.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#pragma once\n" + text)
    # real CUDA headers win where they exist; the stand-ins only fill the gaps
    cmd = ["g++", "-std=c++17", "-fsyntax-only", f"-I{cuda_inc}", f"-I{tmp_path}", f"-I{tinc}",
           f"-I{os.path.join(tinc, 'torch', 'csrc', 'api', 'include')}",
           os.path.join(csrc_dir(), "api", "bindings.cpp")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]


def test_jit_sources_match_tree():
    """The JIT build compiles bindings.cpp + exactly the .cu files of csrc/, all present in the install."""
    from deepseek_v32_plugin.ops import _cuda
    assert sorted(_cuda.KERNEL_SOURCES) == CU_FILES, "ops/_cuda.py KERNEL_SOURCES differs from csrc/*.cu"
    missing = [s for s in _cuda.sources() if not os.path.exists(s)]
    assert not missing, f"not installed (reinstall the plugin): {missing}"


def test_jit_object_names_unique():
    """torch's cpp_extension names each object file after its source's basename (logits.cu -> logits.cuda.o):
    two sources with one basename would make the JIT build's ninja file invalid."""
    from deepseek_v32_plugin.ops import _cuda
    stems = [os.path.splitext(os.path.basename(s))[0] for s in _cuda.sources(csrc_dir())]
    assert len(stems) == len(set(stems)), sorted(stems)


def test_cuda_backend_reports_why_unavailable():
    import torch
    from deepseek_v32_plugin.ops import _cuda
    if torch.version.cuda and torch.cuda.is_available():
        pytest.skip("CUDA present: covered by the CUDA sections of tests/triton/test_<family>.py")
    assert not _cuda.is_available()
    assert _cuda.unavailable_reason()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
