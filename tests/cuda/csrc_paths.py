"""Where the CUDA sources and tools are, for the compile-only tests (no GPU, no CUDA torch needed)."""
from __future__ import annotations

import os
import shutil


def csrc_dir() -> str:
    """$DSV32_CSRC, else the repo's csrc/ beside these tests, else the installed package data (what the
    JIT build uses; identical after `install_plugin`)."""
    env = os.environ.get("DSV32_CSRC")
    if env:
        return env
    repo = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "csrc"))
    if os.path.exists(os.path.join(repo, "common", "fp8.h")):
        return repo
    try:
        import deepseek_v32_plugin._csrc as c
        d = os.path.dirname(os.path.abspath(c.__file__))
        if os.path.exists(os.path.join(d, "common", "fp8.h")):
            return d
    except ImportError:
        pass
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "csrc")


def nvcc() -> str | None:
    p = shutil.which("nvcc")
    if p:
        return p
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


def cuobjdump() -> str | None:
    p = shutil.which("cuobjdump")
    if p:
        return p
    try:
        import triton
        p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        return p if os.path.exists(p) else None
    except ImportError:
        return None


def cutlass_include() -> str | None:
    """CuTe/CUTLASS headers: $CUTLASS_INCLUDE, else the nvidia-cutlass wheel (cutlass_library/source/include)."""
    env = os.environ.get("CUTLASS_INCLUDE")
    if env and os.path.exists(os.path.join(env, "cute")):
        return env
    try:
        import cutlass_library
        p = os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include")
        return p if os.path.exists(os.path.join(p, "cute")) else None
    except ImportError:
        return None


def cuda_include() -> str | None:
    """CUDA toolkit headers (cuda_runtime_api.h)."""
    cands = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    n = nvcc()
    if n:
        cands.append(os.path.dirname(os.path.dirname(os.path.realpath(n))))
    for home in cands:
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h")):
            return os.path.join(home, "include")
    return None
