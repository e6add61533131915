"""Phase (d): one timing row per anchor shape and backend (CUDA, Triton, torch reference), beside the
anchors' published numbers (FACTS.md; H800 ~ H100 SXM) and the ceilings measured here.

Method (GPU): a CUDA graph of n calls, each preceded by an L2 flush (a read of a buffer 2x the L2 size:
clean lines, so no write-backs land in the timed call), and a graph of the n flushes alone; time per call
= (median replay of the first - median replay of the second) / n, n chosen so a replay takes ~10 ms.
Graphs take launch overhead out of small-kernel times. Where a backend cannot be captured (host syncs:
the torch references) it is timed eagerly, each call between events after a flush ("eager+flush").
Every timed output (the graph's static output) is checked against the torch reference on the same inputs.
Dry run (CPU): tiny shapes, host clock, one call: the numbers mean nothing, the plumbing is what is tested."""
from __future__ import annotations

import statistics
import time

import torch

from deepseek_v32_plugin.ops import sparse_mla
from ops_check import call, close, close_valid_rows, topk_cmp

FP8 = torch.float8_e4m3fn


# -------------------------------------------------------------------------------- timing core ----

class Timer:
    def __init__(self, dev: str):
        self.dev = dev
        if dev == "cuda":
            l2 = int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20))
            self.flush_buf = torch.ones(2 * l2 // 4, dtype=torch.float32, device="cuda")
            self.sink = torch.empty((), dtype=torch.float32, device="cuda")

    def _flush(self):
        torch.sum(self.flush_buf, dim=0, out=self.sink)

    def _replays(self, graph, reps):
        out = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            graph.replay()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) * 1e3)
        return out

    def graph_us(self, fn, target_ms: float = 10.0, reps: int = 7, flush: bool = True):
        """-> (us per call, last output). Raises if fn cannot be captured."""
        out = fn()                                          # compile / warm up
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        est_us = (time.perf_counter() - t) * 1e6
        n = max(1, min(50, int(target_ms * 1e3 / max(est_us, 1.0))))
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        g_both, g_flush = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.stream(s):
            fn()
            with torch.cuda.graph(g_both, stream=s):
                for _ in range(n):
                    if flush:
                        self._flush()
                    out = fn()
            if flush:
                with torch.cuda.graph(g_flush, stream=s):
                    for _ in range(n):
                        self._flush()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        both, fl = [], []
        for _ in range(reps):                               # interleaved: drifts hit both alike
            both += self._replays(g_both, 1)
            if flush:
                fl += self._replays(g_flush, 1)
        us = (statistics.median(both) - (statistics.median(fl) if flush else 0.0)) / n
        return max(us, 0.0), out, f"graph x{n}" + (" + L2 flush" if flush else "")

    def eager_us(self, fn, reps: int = 5):
        out = fn()
        if self.dev != "cuda":
            t = time.perf_counter()
            out = fn()
            return (time.perf_counter() - t) * 1e6, out, "cpu host clock (dry run: not a measurement)"
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            self._flush()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) * 1e3)
        return statistics.median(ts), out, f"eager+flush x{reps}"

    def time(self, fn, graph: bool):
        if self.dev == "cuda" and graph:
            try:
                return self.graph_us(fn)
            except Exception as e:  # noqa: BLE001 - not capturable: eager
                torch.cuda.synchronize()
                us, out, m = self.eager_us(fn)
                return us, out, f"{m} (graph capture failed: {type(e).__name__})"
        return self.eager_us(fn)


def ceilings(ctx, timer: Timer) -> dict:
    """Device-to-device copy (bytes read + written) and large bf16 / fp8 matmuls, measured here."""
    c = {}
    if ctx.dev != "cuda":
        ctx.res.add(kind="ceiling", phase="timing", op="ceilings", status="skip", reason=ctx.cuda_reason)
        return c
    n = 1 << 28
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    us, _, m = timer.graph_us(lambda: dst.copy_(src), flush=False)
    c["copy_GBps"] = 2 * 4 * n / (us * 1e-6) / 1e9
    ctx.res.add(kind="ceiling", phase="timing", op="copy bandwidth (read+write)", value=c["copy_GBps"], unit="GB/s",
                status="info", method=m, shape="1 GiB fp32")
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    us, _, m = timer.graph_us(lambda: a @ b, flush=False, target_ms=20)
    c["bf16_TFLOPS"] = 2 * 8192 ** 3 / (us * 1e-6) / 1e12
    ctx.res.add(kind="ceiling", phase="timing", op="bf16 matmul", value=c["bf16_TFLOPS"], unit="TFLOPS", status="info",
                method=m, shape="8192^3 random")
    try:
        a8, b8 = a.to(FP8), b.to(FP8).t()
        one = torch.ones((), device="cuda")
        us, _, m = timer.graph_us(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
                                  flush=False, target_ms=20)
        c["fp8_TFLOPS"] = 2 * 8192 ** 3 / (us * 1e-6) / 1e12
        ctx.res.add(kind="ceiling", phase="timing", op="fp8 matmul (torch._scaled_mm)", value=c["fp8_TFLOPS"],
                    unit="TFLOPS", status="info", method=m, shape="8192^3 random")
    except Exception as e:  # noqa: BLE001
        ctx.res.add(kind="ceiling", phase="timing", op="fp8 matmul (torch._scaled_mm)", status="error",
                    reason=f"{type(e).__name__}: {str(e)[-200:]}")
    return c


# ------------------------------------------------------------------------------------ anchors ----

def _mla_decode(d, dry):
    b, s_q, h, topk, ctx_len = (2, 2, 16, 64, 256) if dry else (128, 2, 128, 2048, 8192)
    pages = b * ctx_len // 64
    cache = torch.randint(0, 120, (pages, 64, 656), dtype=torch.uint8, device=d)   # no NaN codes
    cache[..., 512:528].view(torch.float32).uniform_(0.005, 0.02)
    cache[..., 528:].view(torch.bfloat16).normal_()
    table = torch.randperm(pages, device=d).view(b, ctx_len // 64)
    pos = torch.rand(b * s_q, ctx_len, device=d).topk(topk, dim=-1).indices.view(b, s_q, topk)
    slots = table.gather(1, (pos // 64).view(b, -1)).view(b, s_q, topk) * 64 + pos % 64
    q = torch.randn(b, s_q, h, 576, device=d).to(torch.bfloat16)
    args = (q, cache, slots.int(), 576 ** -0.5)
    flops = 2.0 * b * s_q * h * topk * (576 + 512)
    nbytes = b * s_q * topk * 656 + b * s_q * h * (576 + 512) * 2
    return (f"fp8_ds_mla b{b} s_q{s_q} h{h} topk{topk} ctx{ctx_len}", args, flops, nbytes, "bf16",
            "FlashMLA sparse decode FP8 410 TFLOPS (H800)", close(2e-2))


def _prefill_logits(d, dry):
    s, n, h = (16, 64, 8) if dry else (2048, 8192, 64)
    q = (torch.randn(s, h, 128, device=d) * 40).clamp(-448, 448).to(FP8)
    k = (torch.randn(n, 128, device=d) * 40).clamp(-448, 448).to(FP8)
    ks = torch.zeros(s, dtype=torch.int32, device=d)
    ke = torch.arange(n - s + 1, n + 1, dtype=torch.int32, device=d)
    args = (q, k, torch.rand(n, device=d) * 0.01, torch.randn(s, h, device=d), ks, ke)
    pairs = float((ke - ks).sum().item())
    return (f"S{s} N{n} H{h} causal", args, 2.0 * h * 128 * pairs, s * h * 128 + n * 132 + s * n * 4, "fp8",
            "DeepGEMM fp8_mqa_logits ~1.0-1.1 PFLOPS", close(1e-5))


def _paged_logits(d, dry):
    b, next_n, ctx_len, h = (2, 2, 128, 8) if dry else (64, 2, 32768, 64)
    pages = b * ctx_len // 64
    cache = torch.randint(0, 256, (pages, 64, 132), dtype=torch.uint8, device=d)
    cache.view(pages, -1)[:, 64 * 128:].view(torch.float32).uniform_(1e-3, 1e-2)
    vals = cache.view(pages, -1)[:, :64 * 128]
    vals.masked_fill_((vals & 0x7F) == 0x7F, 0x3C)                                   # no NaN codes
    bt = torch.randperm(pages, device=d).int().view(b, ctx_len // 64)
    q = (torch.randn(b, next_n, h, 128, device=d) * 40).clamp(-448, 448).to(FP8)
    lens = torch.full((b,), ctx_len, dtype=torch.int32, device=d)
    args = (q, cache, torch.randn(b * next_n, h, device=d), lens, bt, ctx_len)
    return (f"B{b} next_n{next_n} ctx{ctx_len} H{h}", args, 2.0 * b * next_n * ctx_len * h * 128,
            b * ctx_len * 132 + b * next_n * ctx_len * 4, "fp8", "DeepGEMM fp8_paged_mqa_logits; target >= 80% copy BW",
            close(1e-5))


def _grouped(d, dry, masked):
    from ops_check import _weights
    from deepseek_v32_plugin.ops.fp8_quant.naive import naive_fp8_quant_act
    if masked:
        g, m, expect, n, k = (2, 32, 16, 128, 256) if dry else (16, 256, 128, 4096, 7168)
        a, a_s = naive_fp8_quant_act(torch.randn(g, m, k, device=d))
        b, b_s = _weights(g, n, k, d)
        mm = torch.full((g,), expect, dtype=torch.int32, device=d)
        return (f"G{g} M{m} masked_m {expect} N{n} K{k}", (a, a_s, b, b_s, mm, torch.bfloat16),
                2.0 * g * expect * n * k, g * (expect * k + n * k + 2 * expect * n), "fp8",
                "DeepGEMM masked 815-1233 TFLOPS", close_valid_rows(1e-2))
    g, rows, n, k = (2, 64, 128, 256) if dry else (4, 8192, 4096, 7168)
    a, a_s = naive_fp8_quant_act(torch.randn(g * rows, k, device=d))
    b, b_s = _weights(g, n, k, d)
    mi = torch.arange(g, device=d, dtype=torch.int32).repeat_interleave(rows)
    return (f"G{g} M{g}x{rows} N{n} K{k}", (a, a_s, b, b_s, mi, torch.bfloat16), 2.0 * g * rows * n * k,
            g * rows * k + g * n * k + 2 * g * rows * n, "fp8", "DeepGEMM contiguous 1214-1346 TFLOPS", close(1e-2))


def _topk(d, dry, r, n, anchor):
    r, n, k = (r, min(n, 300), 64) if dry else (r, n, 2048)
    lg = torch.randn(r, n, device=d)
    args = (lg, k, torch.zeros(r, dtype=torch.int32, device=d), torch.full((r,), n, dtype=torch.int32, device=d))
    return f"{r}x{n} topk{k}", args, 0.0, r * n * 4 + r * k * 4, "bf16", anchor, topk_cmp(args)


ANCHORS = [
    ("sparse_mla_decode", lambda d, dry: _mla_decode(d, dry)),
    ("fp8_indexer_logits", lambda d, dry: _prefill_logits(d, dry)),
    ("fp8_paged_indexer_logits", lambda d, dry: _paged_logits(d, dry)),
    ("fp8_grouped_gemm_nt_contiguous", lambda d, dry: _grouped(d, dry, False)),
    ("fp8_grouped_gemm_nt_masked", lambda d, dry: _grouped(d, dry, True)),
    ("indexer_topk", lambda d, dry: _topk(d, dry, 4, 131072, "vLLM 21.8 us")),
    ("indexer_topk", lambda d, dry: _topk(d, dry, 64, 9295, "TRT-LLM 14.3 us (torch.topk 106 us)")),
]


def run(ctx) -> None:
    timer = Timer(ctx.dev)
    ceil = ceilings(ctx, timer)
    _ = sparse_mla  # (the families are registered through ops_check's imports)
    from ops_check import SM90_FAMILY
    for op, make in ANCHORS:
        torch.manual_seed(ctx.seed_for("timing", op))
        shape, args, flops, nbytes, roof, anchor, cmp = make(ctx.dev, ctx.dry)
        ref = call(op, args, "torch")
        plan = [("torch", "torch")]          # the reference first: every later row carries x_ref at once
        if ctx.cuda_ok:
            fam = SM90_FAMILY.get(op)
            plan.append(("cuda", ("sm90a" if ctx.sm90.get(fam[0]) else "sm80") if fam else "cuda"))
        else:
            ctx.res.add(kind="time", phase="timing", op=op, shape=shape, backend="cuda", status="skip",
                        reason=ctx.cuda_reason, anchor=anchor)
        if ctx.triton_ok:
            plan.append(("triton", ctx.triton_path))
        ref_us = None
        peak = ceil.get(f"{roof}_TFLOPS") or ceil.get("bf16_TFLOPS")
        bw = ceil.get("copy_GBps")
        floor = max(flops / (peak * 1e12) if flops and peak else 0.0, nbytes / (bw * 1e9) if nbytes and bw else 0.0)
        for be, path in plan:
            try:
                us, out, method = timer.time(lambda be=be: call(op, args, be), graph=be != "torch")
                ok, err, tol, note = cmp(out, ref)
                del out
            except Exception as e:  # noqa: BLE001
                ctx.res.add(kind="time", phase="timing", op=op, shape=shape, backend=be, path=path, status="error",
                            reason=f"{type(e).__name__}: {str(e)[-300:]}", anchor=anchor)
                if ctx.dev == "cuda":
                    torch.cuda.synchronize()
                continue
            if be == "torch":
                ref_us = us
            sec = us * 1e-6
            ctx.res.add(kind="time", phase="timing", op=op, shape=shape, backend=be, path=path,
                        status="pass" if ok else "fail", us=us, ref_us=ref_us,
                        x_ref=(ref_us / us) if ref_us and us > 0 and be != "torch" else None,
                        tflops=flops / sec / 1e12 if flops and sec > 0 else None,
                        gbps=nbytes / sec / 1e9 if nbytes and sec > 0 else None,
                        pct_roof=100.0 * floor / sec if floor and sec > 0 else None, anchor=anchor, method=method,
                        check="pass" if ok else "fail", err=err,
                        reason=None if ok else f"timed output differs from the reference: {note}")
        del args, ref
        if ctx.dev == "cuda":
            torch.cuda.empty_cache()
