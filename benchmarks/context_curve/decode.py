"""Long-context decode without an engine prefill: the caches are filled directly with the cache-write ops
(random latent rows through `mla_cache_write`, random index keys through `indexer_k_quant_and_cache`), then one
decode step of the whole model (embedding, every layer, head) is timed at a fixed context, repeatedly.

  ours   the DSA step the engine adapters run (model/dsa.py: plan -> select -> attend): the indexer's key
         (always written) and, when the context exceeds index_topk, its query projections, paged logits and
         top-k; sparse MLA over the selected slots (each row reads its topk_length entries). Every op goes through deepseek_v32_plugin.ops' dispatch (CPU: the references; GPU:
         our CUDA / Triton kernels).
  dense  the same weights and projections without the indexer, then dense MLA over every cached key in the
         absorbed form the engines' MLA decode uses (q576 . K^T over the latent rows, softmax, . V = the
         rows' first 512 dims), on a contiguous view of the same cache (one page table in order: no gather).

Both write the new token's latent row; the context stays fixed across repetitions (the step rewrites the same
slot). Used by `python benchmarks/context_curve` (CPU) and gpu_check's `context` phase (GPU, to 128K).
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from deepseek_v32_plugin.model import ReferenceModel, absorb_query, dsa, rms_norm
from deepseek_v32_plugin.ops import PAGE_SIZE, indexer, sparse_mla

FILL_CHUNK = 4096


class DecodeBench:
    """One sequence of up to max_context tokens in a paged cache whose block table is the identity."""

    def __init__(self, model: ReferenceModel, max_context: int, seed: int = 0, mla_format: str = "bf16"):
        self.model, self.cfg = model, model.cfg
        self.dev = model.device
        pages = -(-max_context // PAGE_SIZE)
        self.cache = model.new_cache(pages, mla_format)
        self.table = torch.arange(pages, dtype=torch.int32, device=self.dev)
        self.filled = 0
        self.gen = torch.Generator(device=self.dev).manual_seed(seed)

    def fill(self, context: int) -> None:
        """Write random latent rows and index keys for positions [filled, context) of every layer."""
        cfg = self.cfg
        for lo in range(self.filled, context, FILL_CHUNK):
            hi = min(context, lo + FILL_CHUNK)
            slots = torch.arange(lo, hi, device=self.dev)
            for mla, idx in zip(self.cache.mla, self.cache.index):
                kv = torch.randn(hi - lo, cfg.mla_cache_dim + cfg.index_head_dim, generator=self.gen,
                                 device=self.dev).to(self.model.dtype)
                sparse_mla.mla_cache_write(kv[:, :cfg.kv_lora_rank], kv[:, cfg.kv_lora_rank:cfg.mla_cache_dim],
                                           mla, slots)
                indexer.indexer_k_quant_and_cache(kv[:, cfg.mla_cache_dim:], idx, slots)
        self.filled = max(self.filled, context)

    @torch.no_grad()
    def step(self, context: int, variant: str, token: int = 2) -> torch.Tensor:
        """One decode step of the new token at position context - 1 (keys 0..context-1) -> logits [1, vocab]."""
        if context > self.filled + 1:
            self.fill(context - 1)
        cfg, m = self.cfg, self.model
        pos = torch.tensor([context - 1], device=self.dev)
        slot = pos.clone()
        x = m.embed[torch.tensor([token], device=self.dev)]
        p = None
        if variant == "ours":
            p = dsa.plan([0, 1], [context], self.table[None], slot, cfg.index_topk, decode_threshold=2)
        for i, layer in enumerate(m.layers):
            xn = rms_norm(x, layer.in_norm, cfg.rms_norm_eps)
            a = layer.attn
            qr, q_nope, q_pe, kv_c, k_pe = a.project(xn, pos)
            q576 = absorb_query(q_nope, q_pe, a.w_uk)
            if variant == "ours":   # as the adapters do: no query-side indexer work when nothing is scored
                ik, q_fp8, weights = a.indexer_inputs(xn, qr, pos, with_q=p.needs_scores)
                slots = dsa.select(p, ik, q_fp8, weights, self.cache.index[i], cfg.index_topk)
                out_lat = dsa.attend(p, q576, kv_c, k_pe, self.cache.mla[i], slots, cfg.softmax_scale,
                                     cfg.kv_lora_rank)
            else:
                out_lat = dense_mla_decode(q576, kv_c, k_pe, self.cache.mla[i], slot, context, cfg.softmax_scale,
                                           cfg.kv_lora_rank)
            out = a.output(out_lat)
            x = x + out
            x = x + layer.mlp.forward(rms_norm(x, layer.post_norm, cfg.rms_norm_eps))
        return (rms_norm(x, m.norm, cfg.rms_norm_eps) @ m.lm_head.t()).float()


def dense_mla_decode(q576, kv_c, k_pe, latent_cache, slot, context: int, scale: float, kv_lora_rank: int):
    """Dense absorbed MLA of one new row over keys 0..context-1 of a latent cache [pages, 64, 576] whose block
    table is the identity: q576 [1, h, 576] -> [1, h, kv_lora_rank]."""
    sparse_mla.mla_cache_write(kv_c, k_pe, latent_cache, slot)
    keys = latent_cache.view(-1, latent_cache.shape[-1])[:context]             # [n, 576]
    s = torch.matmul(q576[0].to(keys.dtype), keys.t()).float() * scale          # [h, n]
    pr = F.softmax(s, dim=-1).to(keys.dtype)
    return torch.matmul(pr, keys[:, :kv_lora_rank])[None].to(q576.dtype)       # [1, h, 512]


def sync(dev) -> None:
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


def time_steps(bench: DecodeBench, context: int, variant: str, reps: int, warmup: int = 1) -> list:
    """Wall-clock ms of `reps` decode steps at `context` (after `warmup` untimed ones)."""
    bench.fill(context - 1)
    for _ in range(warmup):
        bench.step(context, variant)
    sync(bench.dev)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        bench.step(context, variant)
        sync(bench.dev)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summary(ms: list) -> dict:
    """median, min, max and the interquartile range of a list of timings."""
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return dict(median=statistics.median(ms), lo=min(ms), hi=max(ms), q1=q[0], q3=q[2], n=len(ms))


def agree(bench: DecodeBench, context: int) -> float:
    """Cosine of ours' and dense's logits at a context <= index_topk, where DSA is exactly dense attention:
    a check that both variants compute the same model (not a timing)."""
    a, b = bench.step(context, "ours"), bench.step(context, "dense")
    return F.cosine_similarity(a, b, dim=-1).min().item()
