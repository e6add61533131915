"""Phase (a): build the CUDA extension (JIT, csrc/) in a subprocess bounded by the phase budget, then load
the cached build in this process; record which arch paths were built (the sm_90a wgmma/QGMMA kernels need
sm_90a in the arch list *and* the CUTLASS/CuTe headers of the nvidia-cutlass wheel; the sm_80 mma.sync
kernels are always built and can be forced with DSV32_CUDA_{GEMM,INDEXER,MLA}=sm80), and the Triton path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

_PROBE = r"""
import json, time
t = time.time()
from deepseek_v32_plugin.ops import _cuda
ok = _cuda.is_available()
d = {"ok": ok, "reason": _cuda.unavailable_reason(), "s": round(time.time() - t, 1)}
try:
    d["archs"] = _cuda.cuda_archs(); d["cutlass"] = _cuda.cutlass_include(); d["flags"] = _cuda.nvcc_flags(d["archs"])
except Exception as e:
    d["archs_error"] = repr(e)
if ok:
    import torch
    d["sm90"] = {w: bool(getattr(torch.ops.dsv32, "has_sm90_" + w)()) for w in ("gemm", "indexer", "mla", "mla_prefill")}
print("@@" + json.dumps(d), flush=True)
"""


def triton_info(ctx) -> None:
    try:
        import triton
        import deepseek_v32_plugin.triton_kernels  # noqa: F401
        from deepseek_v32_plugin.triton_kernels._fp8_util import native_fp8
        import torch
        ctx.triton_ok = True
        if ctx.dry:
            ctx.triton_path = "triton-interp"
        else:
            ctx.triton_path = "triton-fp8" if native_fp8(torch.device("cuda")) else "triton-bytes"
        ctx.res.add(kind="build", phase="build", op="triton", status="pass",
                    reason=f"triton {triton.__version__}; path {ctx.triton_path}"
                           + (" (TRITON_INTERPRET=1 on CPU)" if ctx.dry else ""))
    except Exception as e:  # noqa: BLE001
        ctx.triton_ok = False
        ctx.triton_reason = f"Triton kernels unavailable: {type(e).__name__}: {e}"
        ctx.res.add(kind="build", phase="build", op="triton", status="fail", reason=ctx.triton_reason)


def run(ctx) -> None:
    triton_info(ctx)
    if ctx.dry:
        ctx.res.add(kind="build", phase="build", op="cuda extension", status="skip", reason=ctx.cuda_reason)
        return
    from deepseek_v32_plugin.ops import _cuda
    nvcc = _cuda._nvcc()
    ver = "not found"
    if nvcc:
        try:
            ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[-1]
        except Exception as e:  # noqa: BLE001
            ver = repr(e)
    cut = _cuda.cutlass_include()
    ctx.res.add(kind="build", phase="build", op="toolchain", status="info" if nvcc else "fail",
                reason=f"nvcc {nvcc} ({ver}); CUTLASS/CuTe headers: {cut or 'NOT FOUND (carry the nvidia-cutlass wheel)'}; "
                       f"archs {_cuda.cuda_archs()}; MAX_JOBS {os.environ.get('MAX_JOBS')}")
    env = dict(os.environ)
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 8))
    t = time.monotonic()
    timeout = max(10.0, ctx.remaining() - 5.0)
    try:
        p = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=timeout,
                           cwd=tempfile.gettempdir())   # not the repo root: import the installed package
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("@@")), None)
        info = json.loads(line[2:]) if line else {"ok": False, "reason": f"probe rc={p.returncode}: {p.stderr[-1500:]}"}
    except subprocess.TimeoutExpired:
        info = {"ok": False, "reason": f"build exceeded {timeout:.0f} s (phase budget)"}
    dt = time.monotonic() - t
    if not info.get("ok"):
        ctx.cuda_ok, ctx.cuda_reason = False, f"CUDA extension not built: {info.get('reason')}"[:1500]
        ctx.res.add(kind="build", phase="build", op="cuda extension", status="fail", reason=ctx.cuda_reason,
                    elapsed_s=round(dt, 1))
        return
    ctx.res.add(kind="build", phase="build", op="cuda extension", status="pass", elapsed_s=round(dt, 1),
                reason=f"JIT build {info.get('s')} s in a subprocess; flags {' '.join(info.get('flags', []))}")
    t = time.monotonic()
    ok = _cuda.is_available()                # the cached build: ninja finds nothing to do
    if not ok:
        ctx.cuda_ok, ctx.cuda_reason = False, f"in-process load failed: {_cuda.unavailable_reason()}"[:1500]
        ctx.res.add(kind="build", phase="build", op="cuda load", status="fail", reason=ctx.cuda_reason)
        return
    import torch
    ctx.cuda_ok = True
    ctx.sm90 = {w: bool(getattr(torch.ops.dsv32, "has_sm90_" + w)()) for w in ("gemm", "indexer", "mla", "mla_prefill")}
    hopper = torch.cuda.get_device_capability()[0] == 9
    desc = "; ".join(f"{w}: {'sm90a (wgmma) + sm80' if v else 'sm80 (mma.sync) only'}" for w, v in ctx.sm90.items())
    missing = hopper and not all(ctx.sm90.values())
    ctx.res.add(kind="build", phase="build", op="arch paths", status="fail" if missing else "pass",
                reason=desc + ("; HOPPER WITHOUT the sm_90a kernels: "
                               + ("CUTLASS headers missing" if not cut else "see build flags") if missing else "")
                + f"; loaded in {time.monotonic() - t:.1f} s", sm90=ctx.sm90)
