"""Phase (b): every op x backend (CUDA, Triton) against the plain-PyTorch reference, at representative shapes
and the awkward ones (lengths below/above top-k, page boundaries, -1 indices/slots, empty windows, N not a
multiple of 128, FP8 saturation codes). Cases are also reused by phase (d) for their compare functions.

A case: make(dev, big) -> args (fresh random inputs each call); the op is called through the public API
`deepseek_v32_plugin.ops.<family>.<op>(*args, backend=...)`; in-place ops (cache writes) compare the cache
argument they wrote. compare(out, ref) -> (ok, err, tol, note)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from deepseek_v32_plugin import ops as _ops  # noqa: F401  (registers the families)
from deepseek_v32_plugin.ops import fp8_moe, fp8_quant, indexer, sparse_mla
from deepseek_v32_plugin.ops.fp8_quant.naive import naive_fp8_quant_act, naive_fp8_quant_weight
from deepseek_v32_plugin.ops.indexer import naive as ix
from deepseek_v32_plugin.ops.sparse_mla import naive as mla

FP8 = torch.float8_e4m3fn
# which CUDA ops have an sm_90a variant (torch.ops.dsv32.has_sm90_<what>) and the env forcing mma.sync
SM90_FAMILY = {"fp8_grouped_gemm_nt_contiguous": ("gemm", "DSV32_CUDA_GEMM"),
               "fp8_grouped_gemm_nt_masked": ("gemm", "DSV32_CUDA_GEMM"),
               "fp8_gemm_nt": ("gemm", "DSV32_CUDA_GEMM"),
               "fp8_indexer_logits": ("indexer", "DSV32_CUDA_INDEXER"),
               "fp8_paged_indexer_logits": ("indexer", "DSV32_CUDA_INDEXER"),
               "sparse_mla_decode": ("mla", "DSV32_CUDA_MLA"),
               "sparse_mla_prefill": ("mla_prefill", "DSV32_CUDA_MLA")}
INPLACE = {"indexer_cache_write": 2, "indexer_k_quant_and_cache": 1, "mla_cache_write": 2}   # arg index written
FAMILY = {}
for _fam, _mod in (("fp8_quant", fp8_quant), ("fp8_moe", fp8_moe), ("indexer", indexer), ("sparse_mla", sparse_mla)):
    for _name in dir(_mod):
        FAMILY.setdefault(_name, _mod)


def call(op: str, args: tuple, backend: str):
    fn = getattr(FAMILY[op], op)
    if op in INPLACE:
        args = list(args)
        args[INPLACE[op]] = args[INPLACE[op]].clone()
        fn(*args, backend=backend)
        return args[INPLACE[op]]
    return fn(*args, backend=backend)


# ------------------------------------------------------------------------------------ compare ----

def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| over the reference's finite entries (inf if the -inf/NaN patterns differ)."""
    out, ref = out.float(), ref.float()
    if out.shape != ref.shape:
        return float("inf")
    fin = torch.isfinite(ref)
    if not torch.equal(fin, torch.isfinite(out)) or torch.isnan(out).any():
        return float("inf")
    if not torch.equal(out[~fin], ref[~fin]):
        return float("inf")
    d = (out[fin] - ref[fin]).norm().item()
    n = ref[fin].norm().item()
    return d / n if n > 0 else d


def close(tol: float):
    def cmp(out, ref):
        outs = out if isinstance(out, (tuple, list)) else (out,)
        refs = ref if isinstance(ref, (tuple, list)) else (ref,)
        err = max(rel_err(o, r) for o, r in zip(outs, refs))
        return err <= tol, err, tol, ""
    return cmp


def close_valid_rows(tol: float):
    """Grouped GEMMs: padding rows (-1 in m_indices, rows >= masked_m) are unspecified in the kernels' outputs
    (never written) and 0 in the reference, so compare the rows the reference computed (a valid row of exact
    zeros does not occur with these random inputs)."""
    def cmp(out, ref):
        rows = ref.float().abs().amax(-1) > 0
        err = rel_err(out[rows], ref[rows])
        return err <= tol, err, tol, f"{int(rows.sum())} valid rows"
    return cmp


def _bytes(t):
    return t.contiguous().view(torch.uint8) if t.dtype != torch.uint8 else t


def exact():
    def cmp(out, ref):
        outs = out if isinstance(out, (tuple, list)) else (out,)
        refs = ref if isinstance(ref, (tuple, list)) else (ref,)
        bad = sum(int((_bytes(o) != _bytes(r)).sum()) for o, r in zip(outs, refs))
        n = sum(_bytes(r).numel() for r in refs)
        return bad == 0, bad / max(n, 1), 0.0, "fraction of differing bytes"
    return cmp


def quant(max_code_diff: float, max_scale_diff: float = 0.0):
    """(codes fp8, scales f32): scales equal (up to a fraction), codes differ in at most a fraction of bytes
    and never by more than one e4m3 step (FWHT vs matmul summation order, expf vs torch silu)."""
    def cmp(out, ref):
        q, s = out
        rq, rs = ref
        sd = (s != rs).float().mean().item() if s.numel() else 0.0
        cd = (_bytes(q) != _bytes(rq)).float().mean().item() if q.numel() else 0.0
        qa, ra = q.float(), rq.float()
        step_ok = bool(((qa - ra).abs() <= ra.abs() * 0.13 + 2.0 ** -9).all()) if sd == 0 else True
        ok = sd <= max_scale_diff and cd <= max_code_diff and step_ok
        return ok, max(sd, cd), max_code_diff, f"scale mismatch {sd:.2g}, code mismatch {cd:.2g}"
    return cmp


def cache_close(max_byte_diff: float):
    def cmp(out, ref):
        cd = (_bytes(out) != _bytes(ref)).float().mean().item()
        return cd <= max_byte_diff, cd, max_byte_diff, "fraction of differing cache bytes"
    return cmp


def topk_cmp(args):
    logits, k, ks, ke = args

    def cmp(got, ref):
        if got.shape != ref.shape or not torch.equal(got < 0, ref < 0):
            return False, float("inf"), 0.0, "different shapes or counts of valid indices"
        valid = got >= 0
        base = ks[:, None].long()
        v = torch.where(valid, torch.gather(logits, 1, got.long().clamp_min(0) + base), 0.0)
        rv = torch.where(valid, torch.gather(logits, 1, ref.long().clamp_min(0) + base), 0.0)
        # same multiset of selected values (order within equal values free)
        vs, rvs = v.sort(dim=1).values, rv.sort(dim=1).values
        err = rel_err(vs, rvs)
        dup = any(got[i][valid[i]].unique().numel() != int(valid[i].sum()) for i in range(got.shape[0]))
        inwin = bool(((~valid) | (got.long() < (ke - ks)[:, None].long())).all())
        return err == 0 and not dup and inwin, err, 0.0, ("duplicates " if dup else "") + ("" if inwin else "out of window")
    return cmp


# -------------------------------------------------------------------------------------- cases ----

@dataclasses.dataclass
class Case:
    op: str
    shape: str
    make: Callable[[str], tuple]
    cmp: Callable            # cmp(out, ref) or, with cmp_args, cmp(args)(out, ref)
    cmp_args: bool = False
    big: bool = False        # GPU-only size


def _fp8_codes(shape, dev, scale=1.0):
    """Random e4m3 values including the saturation codes +-448 and subnormals."""
    x = (torch.randn(shape, device=dev) * scale).clamp(-448, 448)
    flat = x.view(-1)
    n = flat.numel()
    if n >= 8:
        flat[: max(1, n // 97)] = 448.0
        flat[n // 2: n // 2 + max(1, n // 101)] = -448.0
        flat[-max(1, n // 89):] = 2.0 ** -9      # subnormal
    return x.to(FP8)


def _act(shape, dev, dtype=torch.float32):
    """Activations over a wide dynamic range, with a group of zeros (amax floor) and extreme values."""
    x = torch.randn(shape, device=dev) * torch.exp2(torch.randint(-8, 9, (*shape[:-1], 1), device=dev).float())
    x.view(-1, shape[-1])[0, :128] = 0.0
    x.view(-1)[1] = 3.0e4
    x.view(-1)[-1] = -1.0e-7
    return x.to(dtype)


def _weights(g, n, k, dev):
    qs = [naive_fp8_quant_weight(torch.randn(n, k, device=dev) * 0.05) for _ in range(g)]
    return torch.stack([a for a, _ in qs]), torch.stack([s for _, s in qs])


def _m_indices(g, dev, aligned: bool, rows: int):
    if aligned:
        ids = []
        for e in range(g):
            c = int(torch.randint(0, rows, ()).item())
            ids += [e] * c + [-1] * ((-c) % 128)
        return torch.tensor(ids or [-1], dtype=torch.int32, device=dev)
    return torch.randint(-1, g, (rows,), dtype=torch.int32, device=dev)


def _paged_index_cache(lens, dev, rotate=True):
    pps = -(-max(max(lens), 1) // ix.PAGE) + 1
    b = len(lens)
    n_pages = b * pps + 3
    cache = torch.zeros(n_pages, ix.PAGE, ix.BYTES_PER_TOKEN, dtype=torch.uint8, device=dev)
    table = torch.randperm(n_pages, device=dev)[: b * pps].view(b, pps).int()
    for i, n in enumerate(lens):
        if n:
            pos = torch.arange(n, device=dev)
            slots = table[i, pos // ix.PAGE].long() * ix.PAGE + pos % ix.PAGE
            kq, ksc = ix.naive_indexer_quant(torch.randn(n, 128, device=dev), rotate)
            ix.naive_indexer_cache_write(kq, ksc, cache, slots)
    return cache, table, pps


def _mla_cache(fp8: bool, n_tokens: int, dev):
    pages = -(-n_tokens // mla.PAGE) + 1
    if fp8:
        cache = torch.zeros(pages, mla.PAGE, mla.FP8_BYTES, dtype=torch.uint8, device=dev)
    else:
        cache = torch.zeros(pages, mla.PAGE, mla.HEAD_576, dtype=torch.bfloat16, device=dev)
    slots = torch.randperm(pages * mla.PAGE, device=dev)[:n_tokens]
    kv_c = torch.randn(n_tokens, 512, device=dev)
    kv_c[0] *= 1e3                                   # a large row: the per-128 fp8 scale path
    mla.naive_mla_cache_write(kv_c, torch.randn(n_tokens, 64, device=dev), cache, slots)
    return cache, slots


def _slots_with_holes(n, total, dev, every=7):
    s = torch.randperm(total, device=dev)[:n]
    s[::every] = -1
    return s


def cases(dry: bool) -> list[Case]:
    """The case list: small/awkward shapes always; big=True ones only on a GPU (dry=False)."""
    C: list[Case] = []
    add = C.append

    # ---- fp8_quant
    for shape, dt in ([(5, 256), torch.float32], [(2, 3, 128), torch.bfloat16], [(4096, 7168), torch.bfloat16]):
        for ue8m0 in (True, False):
            add(Case("fp8_quant_act", f"{list(shape)} {str(dt)[6:]} ue8m0={ue8m0}",
                     lambda d, shape=shape, dt=dt, u=ue8m0: (_act(shape, d, dt), 128, u), quant(0.0),
                     big=shape[0] > 1000))
    for m, n, k in ((7, 200, 256), (77, 300, 512), (4096, 2112, 7168)):
        def mk(d, m=m, n=n, k=k):
            a, a_s = naive_fp8_quant_act(_act((m, k), d))
            b, b_s = naive_fp8_quant_weight(torch.randn(n, k, device=d) * 0.05)
            return a, a_s, b, b_s, torch.float32
        add(Case("fp8_gemm_nt", f"M{m} N{n} K{k}", mk, close(1e-4), big=m > 1000))

    # ---- fp8_moe
    for g, n, k, rows, aligned in ((3, 192, 256, 40, True), (3, 320, 384, 517, False), (8, 4096, 7168, 300, True)):
        def mk(d, g=g, n=n, k=k, rows=rows, aligned=aligned):
            b, b_s = _weights(g, n, k, d)
            mi = _m_indices(g, d, aligned, rows)
            a, a_s = naive_fp8_quant_act(torch.randn(mi.numel(), k, device=d))
            return a, a_s, b, b_s, mi, torch.float32
        add(Case("fp8_grouped_gemm_nt_contiguous", f"G{g} N{n} K{k} {'aligned' if aligned else 'unaligned'} -1 rows",
                 mk, close_valid_rows(1e-4), big=n > 1000))
    for g, m, n, k in ((2, 40, 128, 256), (3, 200, 256, 512), (2, 1000, 2048, 7168)):
        def mk(d, g=g, m=m, n=n, k=k):
            b, b_s = _weights(g, n, k, d)
            a, a_s = naive_fp8_quant_act(torch.randn(g, m, k, device=d))
            mm = torch.randint(0, m + 1, (g,), dtype=torch.int32, device=d)
            mm[0] = 0
            return a, a_s, b, b_s, mm, torch.float32
        add(Case("fp8_grouped_gemm_nt_masked", f"G{g} M{m} N{n} K{k} masked_m[0]=0", mk, close_valid_rows(1e-4),
                 big=m > 500))
    for m, n in ((9, 128), (45, 384), (4096, 2048)):
        add(Case("silu_and_mul_fp8_quant", f"M{m} N{n}",
                 lambda d, m=m, n=n: ((torch.randn(m, 2 * n, device=d) * 4).to(torch.bfloat16),), quant(0.01),
                 big=m > 1000))

    def silu_valid_rows(args):
        """The MoE layout's padding rows (m_indices < 0) are unspecified in the kernels' outputs: compare the
        valid rows (the reference computes every row; the padding rows' NaN input never reaches a kernel)."""
        rows, cmp = args[1] >= 0, quant(0.01)
        return lambda out, ref: cmp((out[0][rows], out[1][rows]), (ref[0][rows], ref[1][rows]))

    for m, n in ((45, 384), (1024, 2048)):
        def mk(d, m=m, n=n):
            mi = torch.where(torch.rand(m, device=d) < 0.6, -1, 3).int()
            x = (torch.randn(m, 2 * n, device=d) * 4).to(torch.bfloat16)
            x[mi < 0] = float("nan")
            return x, mi
        add(Case("silu_and_mul_fp8_quant", f"M{m} N{n} padding rows (m_indices -1)", mk, silu_valid_rows,
                 cmp_args=True, big=m > 1000))

    # ---- indexer
    for shape, rot in (((37, 128), True), ((5, 8, 128), False), ((300, 128), True), ((4096, 64, 128), True)):
        add(Case("indexer_quant", f"{list(shape)} rotate={rot}", lambda d, s=shape, r=rot: (torch.randn(s, device=d) * 3, r),
                 quant(0.01, 0.01), big=shape[0] > 1000))
    for t in (50, 300):
        def mk(d, t=t):
            pages = -(-t // 64) + 2
            return (torch.randn(t, 128, device=d), torch.zeros(pages, 64, 132, dtype=torch.uint8, device=d),
                    _slots_with_holes(t, pages * 64, d, 17))
        add(Case("indexer_k_quant_and_cache", f"T{t} slots with -1", mk, cache_close(0.01), big=False))

        def mk2(d, t=t):
            pages = -(-t // 64) + 2
            kq, ksc = ix.naive_indexer_quant(torch.randn(t, 128, device=d))
            return kq, ksc, torch.zeros(pages, 64, 132, dtype=torch.uint8, device=d), _slots_with_holes(t, pages * 64, d).int()
        add(Case("indexer_cache_write", f"T{t} slots with -1", mk2, exact(), big=False))

        def mk3(d, t=t):
            cache, table, pps = _paged_index_cache([t], d)
            pos = torch.randint(0, t, (t // 2,), device=d)
            return cache, table[0, pos // 64].long() * 64 + pos % 64
        add(Case("indexer_cache_gather", f"T{t}", mk3, exact(), big=False))
    for s, n, h in ((9, 150, 8), (37, 333, 20), (37, 333, 64), (512, 4096, 64)):
        def mk(d, s=s, n=n, h=h):
            qf, qs = ix.naive_indexer_quant(torch.randn(s, h, 128, device=d))
            kf, ksc = ix.naive_indexer_quant(torch.randn(n, 128, device=d))
            ks = torch.randint(0, n // 2, (s,), device=d, dtype=torch.int32)
            ke = (ks + torch.randint(0, n // 2, (s,), device=d, dtype=torch.int32)).clamp_max(n)
            ke[0] = ks[0]                                            # empty window
            return qf, kf, ksc, torch.randn(s, h, device=d) * qs, ks, ke
        add(Case("fp8_indexer_logits", f"S{s} N{n} H{h} ragged windows, one empty", mk, close(1e-5),
                 big=s > 100))
    for lens, next_n, h in (([0, 1, 63, 64, 65, 130], 2, 8), ([0, 1, 63, 64, 65, 700, 2049], 1, 64),
                            ([5, 64, 128, 1000], 2, 64), ([3, 64, 65, 300], 4, 32), ([64, 65, 2000], 2, 20),
                            ([32768] * 4, 2, 64)):
        def mk(d, lens=lens, next_n=next_n, h=h):
            lens2 = [max(x, next_n) if x else 0 for x in lens]
            cache, table, pps = _paged_index_cache(lens2, d)
            qf, qs = ix.naive_indexer_quant(torch.randn(len(lens2), next_n, h, 128, device=d))
            w = torch.randn(len(lens2) * next_n, h, device=d) * qs.view(-1, h)
            return qf, cache, w, torch.tensor(lens2, dtype=torch.int32, device=d), table, pps * 64 - 5
        add(Case("fp8_paged_indexer_logits", f"lens {lens[:7]} next_n{next_n} H{h} (page boundaries)", mk, close(1e-5),
                 big=max(lens) > 200))
    for r_n, topk in ((100, 64), (600, 64), (100, 2048), (4096, 2048), (70000, 1024), (163840, 2048)):
        def mk(d, n=r_n, topk=topk):
            r = 6
            lg = torch.randn(r, n, device=d)
            lg[1] = torch.randint(-4, 4, (n,), device=d).float()          # heavy ties
            lg[2, : n // 3] = float("-inf")
            lg[5] = 1.0 + torch.rand(n, device=d)                            # one top byte
            ks = torch.randint(0, max(1, n // 4), (r,), device=d, dtype=torch.int32)
            ke = torch.full((r,), n, device=d, dtype=torch.int32)
            ke[3] = ks[3] + min(topk // 2, n - int(ks[3]))                   # window shorter than topk
            ke[4] = ks[4]                                                    # empty window
            return lg, topk, ks, ke
        add(Case("indexer_topk", f"6x{r_n} topk{topk} (ties, -inf, short/empty windows)", mk, topk_cmp, cmp_args=True,
                 big=topk > 64))
    for r, k, mp in ((3, 40, 5), (9, 300, 40)):
        add(Case("indices_to_slots", f"R{r} K{k} pages{mp} with -1",
                 lambda d, r=r, k=k, mp=mp: (torch.randint(-1, mp * 64, (r, k), dtype=torch.int32, device=d),
                                             torch.randint(0, 1000, (r, mp), dtype=torch.int32, device=d), 64),
                 exact(), big=False))

    # ---- sparse_mla
    for fp8 in (True, False):
        for t in (40, 150):
            def mk(d, t=t, fp8=fp8):
                pages = -(-t // 64) + 1
                shape = (pages, 64, 656 if fp8 else 576)
                cache = torch.zeros(shape, dtype=torch.uint8 if fp8 else torch.bfloat16, device=d)
                kv = torch.randn(t, 512, device=d) * 3
                kv[0] *= 1e4
                return kv, torch.randn(t, 64, device=d), cache, _slots_with_holes(t, pages * 64, d)
            add(Case("mla_cache_write", f"{'fp8_ds_mla' if fp8 else 'bf16'} T{t} slots with -1", mk, exact(),
                     big=False))
        add(Case("mla_cache_gather", f"{'fp8_ds_mla' if fp8 else 'bf16'} 100 slots",
                 lambda d, fp8=fp8: (lambda c, s: (c, s[torch.randint(0, s.numel(), (100,), device=d)]))(*_mla_cache(fp8, 200, d)),
                 exact()))
        for b, s_q, h, topk in ((2, 1, 16, 64), (1, 2, 20, 40), (3, 1, 20, 100), (1, 1, 64, 31), (1, 2, 128, 2048),
                                (2, 2, 128, 2048)):
            def mk(d, b=b, s_q=s_q, h=h, topk=topk, fp8=fp8):
                n_tok = max(topk * 2, 300)
                cache, slots = _mla_cache(fp8, n_tok, d)
                q = (torch.randn(b, s_q, h, 576, device=d) * 0.5).to(torch.bfloat16)
                idx = slots[torch.randint(0, n_tok, (b, s_q, topk), device=d)].int()
                idx[torch.rand(idx.shape, device=d) < 0.2] = -1
                idx[0, 0] = -1                                   # a row with no valid key: out 0, lse -inf
                return q, cache, idx, 576 ** -0.5
            add(Case("sparse_mla_decode", f"{'fp8_ds_mla' if fp8 else 'bf16'} b{b} s_q{s_q} h{h} topk{topk} -1 idx",
                     mk, close(2e-2), big=topk > 100))
    # prefill (sm_90a kernel: 64 heads per CTA, 64-key chunks; sm80: 16/32/64 heads, 32-key chunks): topk
    # below / above multiples of 64, a row with no valid key, per-row topk_length (0, partial chunks, > topk)
    for s_q, h, topk, s_kv, lens in ((5, 16, 64, 200, False), (37, 20, 100, 300, False), (64, 128, 2048, 4096, False),
                                     (9, 64, 130, 700, True), (6, 128, 2000, 3000, True)):
        def mk(d, s_q=s_q, h=h, topk=topk, s_kv=s_kv, lens=lens):
            q = (torch.randn(s_q, h, 576, device=d) * 0.5).to(torch.bfloat16)
            kv = torch.randn(s_kv, 1, 576, device=d).to(torch.bfloat16)
            idx = torch.randint(0, s_kv, (s_q, 1, topk), dtype=torch.int32, device=d)
            idx[torch.rand(idx.shape, device=d) < 0.2] = -1
            idx[0] = -1
            if not lens:
                return q, kv, idx, 576 ** -0.5
            length = torch.randint(0, topk + 10, (s_q,), dtype=torch.int32, device=d)
            length[1], length[2] = 0, 65
            return q, kv, idx, 576 ** -0.5, 512, length
        add(Case("sparse_mla_prefill", f"s_q{s_q} h{h} topk{topk} s_kv{s_kv} -1 idx" + (" topk_length" if lens else ""),
                 mk, close(2e-2), big=topk > 100))
    return [c for c in C if not (dry and c.big)]


# ------------------------------------------------------------------------------------- phase ----

def _cuda_has(op: str) -> bool:
    from deepseek_v32_plugin.ops import _cuda
    return _cuda.get_op(op) is not None


def run_case(ctx, case: Case, backend: str, path: str, env: Optional[dict] = None) -> None:
    import os
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        torch.manual_seed(ctx.seed_for(case.op, case.shape))
        args = case.make(ctx.dev)
        ref = call(case.op, args, "torch")
        out = call(case.op, args, backend)
        if ctx.dev == "cuda":
            torch.cuda.synchronize()
        cmp = case.cmp(args) if case.cmp_args else case.cmp
        ok, err, tol, note = cmp(out, ref)
        ctx.res.add(kind="check", phase="ops", op=case.op, shape=case.shape, backend=backend, path=path,
                    status="pass" if ok else "fail", err=err, tol=tol, reason=None if ok else note)
    except Exception as e:  # noqa: BLE001  (a failing kernel is a row, not the end of the run)
        from deepseek_v32_plugin.ops._dispatch import Unsupported
        st = "skip" if isinstance(e, Unsupported) else "error"
        ctx.res.add(kind="check", phase="ops", op=case.op, shape=case.shape, backend=backend, path=path,
                    status=st, reason=f"{type(e).__name__}: {str(e)[-400:]}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(ctx) -> None:
    first_shape: dict = {}
    for case in cases(ctx.dry):
        first = case.op not in first_shape
        first_shape.setdefault(case.op, case.shape)
        # CUDA
        if not ctx.cuda_ok:
            if first:
                ctx.res.add(kind="check", phase="ops", op=case.op, shape="all", backend="cuda", path="-",
                            status="skip", reason=ctx.cuda_reason)
        elif not _cuda_has(case.op):
            if first:
                ctx.res.add(kind="check", phase="ops", op=case.op, shape="all", backend="cuda", path="-",
                            status="skip", reason="no CUDA kernel for this op (the dispatch uses Triton)")
        else:
            fam = SM90_FAMILY.get(case.op)
            if fam:
                run_case(ctx, case, "cuda", "sm90a" if ctx.sm90.get(fam[0]) else "sm80")
                if ctx.sm90.get(fam[0]):
                    run_case(ctx, case, "cuda", "sm80", {fam[1]: "sm80"})
            else:
                run_case(ctx, case, "cuda", "cuda")
        # Triton
        if ctx.triton_ok:
            run_case(ctx, case, "triton", ctx.triton_path)
            if first and not ctx.dry and ctx.triton_path == "triton-fp8":   # the sm_80 byte-decoding path too
                run_case(ctx, case, "triton", "triton-bytes", {"DSV32_TRITON_FP8_BYTES": "1"})
        elif first:
            ctx.res.add(kind="check", phase="ops", op=case.op, shape="all", backend="triton", path="-",
                        status="skip", reason=ctx.triton_reason)
