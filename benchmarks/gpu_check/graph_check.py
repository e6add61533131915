"""Phase (e) graph: one decode step's op sequence (indexer q quant, index-key write, paged logits, top-k, slots,
latent write, sparse MLA: model/dsa.py) captured in a CUDA graph on a plan in persistent buffers
(model/dsa_graph.py, what the vLLM builder hands a full CUDA graph), replayed on a *different* batch (other
context lengths, block tables, slots, fewer real requests + padding) and compared with the eager step on that
batch's own host-side plan (dsa.plan); both timed.

Cases: decode (q=1) and MTP verify (q=2), V3.2 per-layer widths (64 index heads x 128, 128 MLA heads, top-k
2048, bf16 latent cache), contexts up to 8192. Pass: the replay's selected slots overlap the eager ones >= 0.99
per row (FP8 near-ties may swap a key), its attention output within 2e-2 of eager's, both caches equal, padding
rows select nothing. Times (CUDA events, median of replays): eager = host plan + the step's launches; graph =
buffer refill + one replay. Dry run (CPU): tiny widths, the "replay" is the same step run on the captured plan
after the refill (no graph), host clock: the plumbing and the plan semantics are what is tested."""
from __future__ import annotations

import statistics
import time

import torch

from deepseek_v32_plugin.model import dsa
from deepseek_v32_plugin.model.dsa_graph import UniformPlanBuffers
from deepseek_v32_plugin.ops import PAGE_SIZE, custom_ops, indexer, sparse_mla
from deepseek_v32_plugin.ops.indexer import BYTES_PER_TOKEN
from deepseek_v32_plugin.ops.sparse_mla import HEAD_576

GPU = dict(reqs=32, ih=64, h=128, topk=2048, max_ctx=8192)
DRY = dict(reqs=3, ih=4, h=2, topk=32, max_ctx=192)


def _batch(g, real: int, reqs: int, q: int, w: int, pages: int, topk: int, max_ctx: int, dev):
    """A uniform batch of `real` requests (q rows each) padded to `reqs`: (seq_lens, block table, slots) on dev."""
    seq = torch.randint(q, max_ctx + 1, (real,), generator=g)
    seq[0] = max(q, topk // 2)   # one context that fits in top-k
    table = torch.zeros(reqs, w, dtype=torch.int32)
    perm = torch.randperm(pages, generator=g)   # disjoint pages: no two requests write one slot
    for r in range(real):
        table[r] = perm[r * w:(r + 1) * w].int()
    slots = torch.full((reqs * q,), -1, dtype=torch.int64)
    for r in range(real):
        p = torch.arange(int(seq[r]) - q, int(seq[r]))
        slots[r * q:(r + 1) * q] = table[r, p // PAGE_SIZE].long() * PAGE_SIZE + p % PAGE_SIZE
    seq_lens = torch.cat([seq, torch.zeros(reqs - real, dtype=torch.int64)]).int()
    return seq_lens.to(dev), table.to(dev), slots.to(dev)


class Step:
    """Static inputs / outputs of one layer's decode step; run(plan) is the op sequence that is captured."""

    def __init__(self, g, t: int, c: dict, pages: int, dev):
        rn = lambda *s: torch.randn(*s, generator=g).to(dev)  # noqa: E731
        self.topk = c["topk"]
        self.q_idx, self.w_raw = rn(t, c["ih"], 128), rn(t, c["ih"])
        self.k, self.kv_c, self.k_pe = rn(t, 128), rn(t, 512).bfloat16(), rn(t, 64).bfloat16()
        self.q576 = rn(t, c["h"], HEAD_576).bfloat16()
        self.icache = torch.zeros(pages, PAGE_SIZE, BYTES_PER_TOKEN, dtype=torch.uint8, device=dev)
        self.mcache = torch.zeros(pages, PAGE_SIZE, HEAD_576, dtype=torch.bfloat16, device=dev)
        every = torch.arange(pages * PAGE_SIZE, device=dev)
        indexer.indexer_k_quant_and_cache(rn(len(every), 128), self.icache, every)
        sparse_mla.mla_cache_write(rn(len(every), 512), rn(len(every), 64), self.mcache, every)
        self.sel = torch.zeros(t, c["topk"], dtype=torch.int32, device=dev)
        self.out = torch.zeros(t, c["h"], 512, dtype=torch.bfloat16, device=dev)

    def run(self, md: dsa.DSAPlan) -> None:
        t = md.num_tokens
        q_fp8, q_scale = custom_ops.indexer_quant(self.q_idx[:t])
        weights = (self.w_raw[:t] * 128 ** -0.5 * q_scale).float()
        slots = dsa.select(md, self.k[:t], q_fp8, weights, self.icache, self.topk)
        self.sel[:t].copy_(slots)
        self.out[:t].copy_(dsa.attend(md, self.q576[:t], self.kv_c[:t], self.k_pe[:t], self.mcache, slots, 0.1, 512))

    def caches(self):
        return self.icache.clone(), self.mcache.clone()

    def set_caches(self, ic, mc):
        self.icache.copy_(ic)
        self.mcache.copy_(mc)


def _sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def _time(dev, fn, reps: int):
    """Median us of fn over reps (CUDA events on a GPU, host clock on CPU)."""
    ts = []
    for _ in range(reps):
        if dev == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) * 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(ts)


def _case(ctx, c: dict, q: int) -> None:
    dev, g = ctx.dev, torch.Generator().manual_seed(ctx.seed_for("graph", q))
    reqs, topk, max_ctx = c["reqs"], c["topk"], c["max_ctx"]
    w = -(-max_ctx // PAGE_SIZE)
    pages = reqs * w + 1
    t = reqs * q
    shape = f"{reqs} reqs x q={q}, ctx <= {max_ctx}, topk {topk}, {c['ih']} idx heads, {c['h']} heads"
    op = "decode step" if q == 1 else f"MTP verify step (q={q})"
    bufs = UniformPlanBuffers(reqs, 2, w, max_ctx, topk, dev)
    step = Step(g, t, c, pages, dev)
    captured = bufs.fill(*_batch(g, reqs, reqs, q, w, pages, topk, max_ctx, dev), q)   # the capture batch
    graph, method = None, "cpu host clock (dry run: no graph; the captured plan re-run after the refill)"
    if dev == "cuda":
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):          # warm-up: Triton JIT, allocator
                step.run(captured)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=s):
                step.run(captured)
        torch.cuda.current_stream().wait_stream(s)
        _sync(dev)
        method = "CUDA events, median of 10"
    real = max(1, reqs - 2)
    seq_b, table_b, slots_b = _batch(g, real, reqs, q, w, pages, topk, max_ctx, dev)   # new contents + padding
    before = step.caches()
    md = bufs.fill(seq_b, table_b, slots_b, q)
    assert md is captured, "the (R, q) plan object changed"
    graph.replay() if graph is not None else step.run(md)
    _sync(dev)
    r_sel, r_out, (r_ic, r_mc) = step.sel.clone(), step.out.clone(), step.caches()
    step.set_caches(*before)
    n = real * q
    host_seq = seq_b[:real].tolist()
    eager = dsa.plan([i * q for i in range(real + 1)], host_seq, table_b[:real], slots_b[:n], topk, 2,
                     full_width=True)
    step.sel.zero_()
    step.out.zero_()
    step.run(eager)
    _sync(dev)
    e_sel, e_out, (e_ic, e_mc) = step.sel[:n].clone(), step.out[:n].clone(), step.caches()
    overlap = min((len((set(a.tolist()) & set(b.tolist())) - {-1}) / max(1, len(set(b.tolist()) - {-1}))
                   for a, b in zip(r_sel[:n].cpu(), e_sel.cpu())), default=1.0)
    err = (r_out[:n].float() - e_out.float()).abs().max().item()
    pad_ok = bool((r_sel[n:] == -1).all()) and bool((r_out[n:] == 0).all())
    same_caches = torch.equal(r_ic, e_ic) and torch.equal(r_mc, e_mc)
    exact = torch.equal(r_sel[:n], e_sel) and torch.equal(r_out[:n], e_out)
    ok = overlap >= 0.99 and err <= 2e-2 and pad_ok and same_caches

    reps = 10 if dev == "cuda" else 1

    def eager_step():
        p = dsa.plan([i * q for i in range(real + 1)], seq_b[:real].tolist(), table_b[:real], slots_b[:n], topk, 2,
                     full_width=True)
        step.run(p)

    def graph_step():
        bufs.fill(seq_b, table_b, slots_b, q)
        graph.replay() if graph is not None else step.run(md)

    us_eager, us_graph = _time(dev, eager_step, reps), _time(dev, graph_step, reps)
    ctx.res.add(kind="graph", phase="graph", op=op, shape=shape, backend="auto", path="graph replay" if graph else "dry",
                status="pass" if ok else "fail", err=err, tol=2e-2, overlap=overlap, exact=exact, us_eager=us_eager,
                us_graph=us_graph, x_graph=us_eager / us_graph if us_graph > 0 else None, method=method,
                reason=None if ok else (f"overlap {overlap:.3f} (>= 0.99), |dout| {err:.2e} (<= 2e-2), padding clean "
                                        f"{pad_ok}, caches equal {same_caches}"))


def run(ctx) -> None:
    c = DRY if ctx.dry else GPU
    for q in (1, 2):
        torch.manual_seed(ctx.seed_for("graph-case", q))
        try:
            _case(ctx, c, q)
        except Exception as e:  # noqa: BLE001
            ctx.res.add(kind="graph", phase="graph", op=f"step q={q}", backend="auto", status="error",
                        reason=f"{type(e).__name__}: {str(e)[-300:]}")
            _sync(ctx.dev)
        if ctx.dev == "cuda":
            torch.cuda.empty_cache()
