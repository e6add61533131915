"""Compile @triton.jit kernels for a GPU target without a GPU, and inspect PTX / SASS / resources.

    from compile_util import compile_kernels
    reps = compile_kernels([dict(module="deepseek_v32_plugin.triton_kernels.indexer", kernel="_k",
                                 signature={"x_ptr": "*fp8e4nv", "n": "i32", "BLOCK": "constexpr"},
                                 constexprs={"BLOCK": 128}, arch=90, num_warps=4, num_stages=3,
                                 aligned=["n"])])   # ints known to be multiples of 16 (pointers always are)
    reps[0]["mma"]  -> {"QGMMA": 24, ...};  reps[0]["spills"] -> 0;  reps[0]["shared"] -> bytes

Compilation runs in a child process with TRITON_INTERPRET unset (the test session imports kernel modules
under the interpreter, where `@triton.jit` yields InterpretedFunction objects that cannot be compiled).
The child uses `triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32))`
(sm_90 -> sm_90a, sm_100 -> sm_100a), then the triton wheel's `cuobjdump` for SASS and resource usage.
Works with triton 3.6 and 3.7. Run as a script it reads a JSON list of specs on stdin, writes reports.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024, 120: 99 * 1024}
MMA_OPS = ("QGMMA", "HGMMA", "IGMMA", "UTCQMMA", "UTCHMMA", "UTCMMA", "UTCOMMA", "HMMA", "QMMA", "IMMA")


def _tool(name: str) -> str:
    import triton
    p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return p if os.path.exists(p) else name


def _compile_one(spec: dict) -> dict:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mod = importlib.import_module(spec["module"])
    fn = getattr(mod, spec["kernel"])
    arch = int(spec["arch"])
    sig = dict(spec["signature"])
    consts = dict(spec.get("constexprs", {}))
    for k in consts:
        sig.setdefault(k, "constexpr")
    # pointers (and the ints named in "aligned") get 16-byte divisibility, as the JIT gives aligned tensors
    aligned = spec.get("aligned", [])
    aligned = [k for k, v in sig.items() if v.startswith("*")] + list(aligned)
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    opts = {"num_warps": spec.get("num_warps", 4), "num_stages": spec.get("num_stages", 3)}
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    rep = {"kernel": spec["kernel"], "arch": arch, "shared": int(k.metadata.shared),
           "num_warps": opts["num_warps"], "num_stages": opts["num_stages"]}
    ptx = k.asm.get("ptx", "")
    rep["ptx_wgmma"] = len(re.findall(r"\bwgmma\.mma_async", ptx))
    rep["ptx_tcgen05"] = len(re.findall(r"\btcgen05\.mma", ptx))
    rep["ptx_mma"] = len(re.findall(r"\bmma\.sync", ptx))
    rep["ptx_fp8_cvt"] = len(re.findall(r"cvt\.[a-z.]*e4m3", ptx))
    # FP8 MMA operands: a bitcast to f8 in TTGIR means the operand entered as bytes; a local_load of an 8-bit
    # tile means it went shared -> registers (for wgmma / tcgen05: a round trip back to shared)
    ttgir = k.asm.get("ttgir", "")
    rep["ttgir_fp8_bitcast"] = len(re.findall(r"tt\.bitcast .*-> tensor<[^>]*f8E4M3FN", ttgir))
    rep["ttgir_local_load"] = len(re.findall(r"ttg\.local_load [^\n]*memdesc<[0-9x]*(?:i8|f8E4M3FN)\b", ttgir))
    rep["mma_dup"] = mma_duplication(ttgir)
    rep["mma_macs"] = mma_macs(ptx, opts["num_warps"])
    cubin = k.asm.get("cubin")
    sass, res = "", ""
    if cubin:
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(cubin)
            path = f.name
        try:
            cu = _tool("cuobjdump")
            sass = subprocess.run([cu, "-sass", path], capture_output=True, text=True).stdout
            res = subprocess.run([cu, "-res-usage", path], capture_output=True, text=True).stdout
        finally:
            os.unlink(path)
    rep["mma"] = {op: len(re.findall(rf"\b{op}\b", sass)) for op in MMA_OPS if re.search(rf"\b{op}\b", sass)}
    m = re.search(r"REG:(\d+)", res)
    rep["regs"] = int(m.group(1)) if m else -1
    m = re.search(r"LOCAL:(\d+)", res)
    rep["local"] = int(m.group(1)) if m else -1
    m = re.search(r"STACK:(\d+)", res)
    rep["stack"] = int(m.group(1)) if m else -1
    # spills: local-memory traffic in SASS (STL/LDL) is what a spill looks like
    rep["spill_insts"] = len(re.findall(r"\b(STL|LDL)(\.\w+)*\b", sass))
    rep["spills"] = rep["spill_insts"]
    rep["sass_lines"] = sass.count("\n")
    rep["res_usage"] = res.strip().splitlines()[-1] if res.strip() else ""
    rep["shared_limit"] = SHARED_LIMIT.get(arch, 99 * 1024)
    return rep


def mma_duplication(ttgir: str) -> int:
    """Largest factor by which a Hopper wgmma dot computes the same rows in several warpgroups: its layout's
    warps along M (16 rows each) cover more rows than the result has. Triton gives a dot whose result feeds
    another dot (attention: S = QK^T -> PV) warpsPerCTA = [num_warps, 1]: with 8 warps and 64 rows both
    warpgroups compute the same S."""
    layouts = {m.group(1): int(m.group(2)) for m in re.finditer(
        r"^(#\w+) = #ttg\.nvidia_mma<\{versionMajor = 3,[^\n]*warpsPerCTA = \[(\d+), \d+\]", ttgir, re.M)}
    dup = 1
    for m in re.finditer(r"ttng\.warp_group_dot [^\n]*-> tensor<(\d+)x\d+xf32, (#\w+)>", ttgir):
        rows, lay = int(m.group(1)), m.group(2)
        if lay in layouts:
            dup = max(dup, 16 * layouts[lay] // rows)
    return dup


def mma_macs(ptx: str, num_warps: int):
    """Multiply-accumulates the CTA's tensor-core instructions execute, one pass over the PTX: a wgmma
    m64nNkK runs once per warpgroup (num_warps / 4 of them), an mma.sync mMnNkK once per warp. For a kernel
    whose MMAs all sit in one un-peeled loop body this is the work per K step, to compare with the ideal
    (M x N x K of the tile). None for tcgen05 (one thread issues it; not counted here)."""
    if re.search(r"\btcgen05\.mma", ptx):
        return None
    total = 0
    for m, n, k in re.findall(r"\bwgmma\.mma_async\.\S*?\.m(\d+)n(\d+)k(\d+)\.", ptx):
        total += int(m) * int(n) * int(k) * (num_warps // 4)
    for m, n, k in re.findall(r"\bmma\.sync\.\S*?\.m(\d+)n(\d+)k(\d+)\.", ptx):
        total += int(m) * int(n) * int(k) * num_warps
    return total


def compile_kernels(specs: list[dict], timeout: int = 600) -> list[dict]:
    """Compile each spec in one child process (no interpreter). Returns one report per spec; a failed
    compile gives {"error": "..."} instead of raising, so tests can name the failing config."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.setdefault("TRITON_CACHE_DIR", os.path.join(tempfile.gettempdir(), "dsv32_triton_compile_cache"))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], input=json.dumps(specs),
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"compile child failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_shipped_configs(specs: list, arch: int) -> None:
    """Compile (spec, required_mma) pairs for `arch`; fail listing every error, spill, shared-memory
    overflow or missing MMA instruction (e.g. "QGMMA"), and print one resource line per kernel."""
    reps = compile_kernels([dict(s, arch=arch) for s, _ in specs])
    problems, lines = [], []
    for (spec, need), rep in zip(specs, reps):
        name = spec.get("tag", spec["kernel"])
        if "error" in rep:
            problems.append(f"{name}: {rep['error'][:800]}")
            continue
        lines.append(f"sm{arch} {name:32s} regs={rep['regs']:3d} shared={rep['shared']:6d} mma={rep['mma']}"
                     + (f" duplicated x{rep['mma_dup']}" if rep["mma_dup"] > 1 else ""))
        if rep["mma_dup"] > spec.get("max_mma_dup", 1):
            problems.append(f"{name}: a wgmma dot's rows are computed x{rep['mma_dup']} (warpgroups along M "
                            f"exceed the tile; allowed x{spec.get('max_mma_dup', 1)})")
        if "ideal_macs" in spec:   # MMA work per K step vs the tile's M x N x K (1.0 = no duplicated work)
            ratio = rep["mma_macs"] / spec["ideal_macs"] if rep["mma_macs"] is not None else None
            lines[-1] += f" mma_work={ratio:.3f}x ideal" if ratio is not None else ""
            if ratio is not None and ratio > spec.get("max_mma_work", 1.0) + 1e-9:
                problems.append(f"{name}: tensor-core work per K step is {ratio:.3f}x the ideal "
                                f"({rep['mma_macs']} MACs vs {spec['ideal_macs']}; allowed "
                                f"{spec.get('max_mma_work', 1.0)}x)")
        if rep["spills"]:
            problems.append(f"{name}: {rep['spills']} local-memory instructions (spills) [{rep['res_usage']}]")
        if rep["shared"] > rep["shared_limit"]:
            problems.append(f"{name}: shared {rep['shared']} B > {rep['shared_limit']}")
        if need and not rep["mma"].get(need):
            problems.append(f"{name}: expected {need} in SASS, found {rep['mma']}")
        if spec.get("fp8_operands_direct"):   # e4m3 enters as fp8e4nv: no bitcast, no register round trip
            if rep["ttgir_fp8_bitcast"]:
                problems.append(f"{name}: {rep['ttgir_fp8_bitcast']} u8 -> f8 bitcasts in TTGIR (bytes, not fp8e4nv)")
            # wgmma / tcgen05 read shared memory directly; mma.sync (sm_89, sm_120) takes registers
            if 90 <= arch < 120 and rep["ttgir_local_load"]:
                problems.append(f"{name}: {rep['ttgir_local_load']} ttg.local_load of 8-bit tiles in TTGIR: an MMA "
                                "operand goes shared -> registers -> shared")
    print("\n".join(lines))
    assert not problems, "\n".join(problems)


def _main() -> None:
    specs = json.loads(sys.stdin.read())
    out = []
    for spec in specs:
        try:
            out.append(_compile_one(spec))
        except Exception as e:  # report, don't abort the batch
            out.append({"kernel": spec.get("kernel"), "arch": spec.get("arch"),
                        "error": f"{type(e).__name__}: {str(e)[-2000:]}"})
    sys.stdout.write("\n" + json.dumps(out) + "\n")


if __name__ == "__main__":
    _main()
