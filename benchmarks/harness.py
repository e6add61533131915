"""GPU timing harness shared by benchmarks/bench_*.py (method: /work/.library/device/METHOD.md).

    h = Harness()                                  # measures copy bandwidth + matmul ceilings once
    h.section("indexer")
    h.bench("topk b64 n128K k2048", fn, make_inputs, flops=0, bytes=64*131072*4,
            ref=torch_fn, anchor="vLLM 21.8 us @4x128K", roof="bw")
    h.print_table(); h.markdown()

- Timing: CUDA events around each call, warm-up first, median over `rep` calls.
- Rotating inputs: `make_inputs()` is called until the sets together exceed 2x the L2 size (at most 16
  sets), and calls cycle through them, so repeated runs do not measure the cache.
- FLOPs and bytes are given by the caller (counted before timing: each input read once, output written
  once). % roofline = max(flops / peak, bytes / bandwidth) / measured time, with the ceilings measured in
  this run (device-to-device copy counting read + write; torch's fp8 / bf16 matmul).
- One aligned row per shape: shape | us | TFLOPS | GB/s | % roofline | x torch ref | anchor.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Callable, Optional, Sequence

import torch

COLS = ("shape", "us", "TFLOPS", "GB/s", "% roofline", "x torch ref", "anchor")


@dataclasses.dataclass
class Row:
    section: str
    shape: str
    us: float
    tflops: float
    gbps: float
    pct_roof: float
    x_ref: Optional[float]
    anchor: str
    note: str = ""

    def cells(self):
        return (self.shape, f"{self.us:.1f}", f"{self.tflops:.1f}" if self.tflops else "-",
                f"{self.gbps:.0f}" if self.gbps else "-", f"{self.pct_roof:.0f}%",
                f"{self.x_ref:.2f}x" if self.x_ref else "-", self.anchor + (f" [{self.note}]" if self.note else ""))


def time_us(fn: Callable, inputs: Sequence[tuple], warmup: int = 10, rep: int = 100) -> float:
    """Median microseconds of fn(*inputs[i % len(inputs)]) timed with CUDA events."""
    for i in range(warmup):
        fn(*inputs[i % len(inputs)])
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    for i in range(rep):
        args = inputs[i % len(inputs)]
        starts[i].record()
        fn(*args)
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    return 0


def rotating_inputs(make_inputs: Callable[[], tuple], l2_bytes: int, max_sets: int = 16) -> list[tuple]:
    sets = [make_inputs()]
    per = max(_nbytes(sets[0]), 1)
    want = min(max_sets, max(1, -(-2 * l2_bytes // per)))
    while len(sets) < want:
        sets.append(make_inputs())
    return sets


def measure_copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy, bytes read + written per second, GB/s."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    us = time_us(lambda: dst.copy_(src), [()], warmup=5, rep=30)
    return 2 * nbytes / (us * 1e-6) / 1e9


def measure_matmul_tflops(dtype: str = "bf16", n: int = 8192) -> float:
    """A large square matmul through torch: bf16 (torch.mm) or fp8 (torch._scaled_mm, e4m3)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    if dtype == "fp8":
        try:
            a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t()
            one = torch.ones((), device="cuda")
            fn = lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
            fn()
        except Exception:
            return float("nan")
    else:
        fn = lambda: a @ b  # noqa: E731
    us = time_us(fn, [()], warmup=5, rep=20)
    return 2 * n ** 3 / (us * 1e-6) / 1e12


class Harness:
    def __init__(self, measure: bool = True, warmup: int = 10, rep: int = 100):
        assert torch.cuda.is_available(), "benchmarks need a CUDA GPU"
        props = torch.cuda.get_device_properties(0)
        self.gpu = props.name
        self.capability = torch.cuda.get_device_capability()
        self.l2_bytes = int(getattr(props, "L2_cache_size", 50 << 20))
        self.warmup, self.rep = warmup, rep
        self.rows: list[Row] = []
        self._section = ""
        self.ceilings = {}
        if measure:
            self.ceilings["copy_GBps"] = measure_copy_bandwidth()
            self.ceilings["bf16_TFLOPS"] = measure_matmul_tflops("bf16")
            self.ceilings["fp8_TFLOPS"] = measure_matmul_tflops("fp8") if self.capability >= (8, 9) else float("nan")

    def section(self, name: str) -> None:
        self._section = name

    def bench(self, shape: str, fn: Callable, make_inputs: Callable[[], tuple], *, flops: float = 0.0,
              bytes: float = 0.0, ref: Optional[Callable] = None, anchor: str = "", roof: str = "fp8",
              note: str = "") -> Row:
        """Time fn(*inputs) (and ref(*inputs) if given); roof picks the compute ceiling (fp8|bf16)."""
        inputs = rotating_inputs(make_inputs, self.l2_bytes)
        us = time_us(fn, inputs, self.warmup, self.rep)
        ref_us = time_us(ref, inputs, max(2, self.warmup // 2), max(5, self.rep // 4)) if ref else None
        sec = us * 1e-6
        tflops = flops / sec / 1e12 if flops else 0.0
        gbps = bytes / sec / 1e9 if bytes else 0.0
        peak = self.ceilings.get(f"{roof}_TFLOPS") or self.ceilings.get("bf16_TFLOPS") or float("nan")
        bw = self.ceilings.get("copy_GBps", float("nan"))
        floor_s = max(flops / (peak * 1e12) if flops and peak == peak else 0.0,
                      bytes / (bw * 1e9) if bytes and bw == bw else 0.0)
        row = Row(self._section, shape, us, tflops, gbps, 100.0 * floor_s / sec if floor_s else 0.0,
                  (ref_us / us) if ref_us else None, anchor, note)
        self.rows.append(row)
        print(self.format_row(row), flush=True)
        return row

    @staticmethod
    def _widths(rows):
        w = [len(c) for c in COLS]
        for r in rows:
            w = [max(a, len(b)) for a, b in zip(w, r.cells())]
        return w

    def format_row(self, row: Row, widths=None) -> str:
        widths = widths or [max(len(c), 28 if i == 0 else 8) for i, c in enumerate(COLS)]
        return " | ".join(c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(row.cells(), widths)))

    def print_table(self) -> None:
        w = self._widths(self.rows)
        print(" | ".join(c.ljust(x) for c, x in zip(COLS, w)))
        for r in self.rows:
            print(self.format_row(r, w))

    def markdown(self) -> str:
        out, sec = [], None
        for r in self.rows:
            if r.section != sec:
                sec = r.section
                out += ["", f"### {sec}", "", "| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
            out.append("| " + " | ".join(r.cells()) + " |")
        return "\n".join(out)


# ------------------------------------------- CUDA extension vs Triton (the run_cuda sweeps of bench_<family>.py) ----

def randn_fp8(shape, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, device="cuda") * scale).clamp(-448, 448).to(torch.float8_e4m3fn)


def cuda_vs_triton_backends(tag: str) -> list[str]:
    """["cuda", "triton"], less the ones that cannot run here (the CUDA extension's reason is printed)."""
    from deepseek_v32_plugin.ops import _cuda
    out = []
    if _cuda.is_available():
        out.append("cuda")
    else:
        print(f"{tag}: CUDA extension unavailable: {_cuda.unavailable_reason()}", flush=True)
    try:
        import deepseek_v32_plugin.triton_kernels  # noqa: F401
        out.append("triton")
    except Exception:
        pass
    return out


def try_bench(h: "Harness", tag: str, label: str, backend: str, fn: Callable, make: Callable, **kw) -> None:
    """h.bench one row "<label> [<backend>]"; a missing op or a failure prints and does not stop the sweep."""
    try:
        h.bench(f"{label} [{backend}]", fn, make, **kw)
    except Exception as e:
        print(f"{tag}: {label} [{backend}] failed: {type(e).__name__}: {str(e)[:300]}", flush=True)

