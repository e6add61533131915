"""Shared test setup.

Triton kernels run in two modes:
  - CPU (no CUDA device, or DSV32_TRITON_INTERPRET=1): TRITON_INTERPRET=1 is set here, *before* any
    kernel module is imported (`@triton.jit` picks interpreter vs compiler at decoration time), and
    tests/triton_interp_patch.py fixes the interpreter's numeric bugs (bf16 dot, fp32->fp8/bf16 casts).
  - GPU: kernels compile and run on cuda; tests marked `gpu` (full sizes) run only here.

Fixtures / markers:
  triton_device   "cpu" under the interpreter, "cuda" on a GPU; skips if triton is not installed.
  @pytest.mark.gpu    needs a CUDA device (skipped on CPU).
  @pytest.mark.interp only meaningful under the interpreter (skipped on GPU).
Write kernels for the interpreter with masked loads only: an unmasked out-of-bounds load segfaults it.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if _HERE not in sys.path:  # helpers (triton_interp_patch, compile_util) importable by plain name
    sys.path.insert(0, _HERE)

# `python -m pytest` puts the cwd (the repo root) first on sys.path, which would shadow the *installed*
# package with the repo's deepseek_v32_plugin/ (that one lacks .triton_kernels, installed from
# triton_kernels/). Drop the root when an installed copy exists, so tests run against the install.
_saved_path = list(sys.path)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _ROOT]
if "deepseek_v32_plugin" not in sys.modules and importlib.util.find_spec("deepseek_v32_plugin") is None:
    sys.path[:] = _saved_path


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


HAS_TRITON = importlib.util.find_spec("triton") is not None
ON_GPU = _cuda_available() and os.environ.get("DSV32_TRITON_INTERPRET", "0") != "1"
INTERPRET = HAS_TRITON and not ON_GPU

if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"
    import triton_interp_patch  # noqa: E402

    triton_interp_patch.apply()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (full-size kernel tests, timings)")
    config.addinivalue_line("markers", "interp: runs a Triton kernel under TRITON_INTERPRET=1 on CPU")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_interp = pytest.mark.skip(reason="interpreter-only test (a GPU is present)")
    for item in items:
        if "gpu" in item.keywords and not ON_GPU:
            item.add_marker(skip_gpu)
        if "interp" in item.keywords and ON_GPU:
            item.add_marker(skip_interp)


@pytest.fixture
def triton_device():
    """Device on which Triton kernels run in this session: 'cuda' on a GPU, 'cpu' (interpreter) otherwise."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    return "cuda" if ON_GPU else "cpu"


@pytest.fixture(autouse=True)
def _seeded_rngs(request):
    """Every test starts from its own fixed RNG state (torch, random, numpy), also tests that draw without
    asking for `seed`; a failure report names the seed (pytest_runtest_makereport below)."""
    import random

    import torch
    from seeding import seed_for
    s = seed_for(request.node.nodeid)
    request.node.dsv32_seed = s
    random.seed(s)
    torch.manual_seed(s)
    try:
        import numpy as np
        np.random.seed(s)
    except ImportError:
        pass
    return s


@pytest.fixture(scope="module")
def cuda_ext(request):
    """The CUDA wrappers of the test module's op family (its CUDA_FAMILY: ops/<family>/cuda.py). Skips
    without a GPU; on a CUDA machine a failed JIT build fails the test (it does not skip it)."""
    import torch
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from deepseek_v32_plugin.ops import _cuda
    assert _cuda.is_available(), f"CUDA extension unavailable on a CUDA machine: {_cuda.unavailable_reason()}"
    return _cuda.family_module(request.module.CUDA_FAMILY)


@pytest.fixture
def cuda_bounds_checked(monkeypatch):
    """-> check(name, call): an out-of-range value in `call` (a CUDA op) is masked without an error or an
    illegal address by default, and with DSV32_CUDA_CHECK_BOUNDS=1 raises an IndexError naming `name`; the
    CUDA context stays usable after it."""
    import torch

    def check(name, call):
        monkeypatch.delenv("DSV32_CUDA_CHECK_BOUNDS", raising=False)
        call()                      # masked, no error, no illegal address
        torch.cuda.synchronize()
        monkeypatch.setenv("DSV32_CUDA_CHECK_BOUNDS", "1")
        with pytest.raises(IndexError, match=name):
            call()
        torch.cuda.synchronize()    # the context is still usable
    return check


@pytest.fixture
def seed(_seeded_rngs):
    """This test's seed (see seed_for): inputs are random but reproducible."""
    return _seeded_rngs


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and hasattr(item, "dsv32_seed"):
        base = os.environ.get("DSV32_TEST_SEED", "0")
        rep.sections.append(("seed", f"test seed {item.dsv32_seed} (DSV32_TEST_SEED={base}; reproduce: "
                                     f"DSV32_TEST_SEED={base} pytest '{item.nodeid}')"))
