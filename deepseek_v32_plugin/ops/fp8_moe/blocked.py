"""The torch backend of the grouped FP8 expert GEMMs: naive.py's math with each expert's dequantized weight
kept between calls instead of rebuilt on every call (on CPU the FP8 weights are never used as FP8, and the
dequantization of every routed expert was about a third of a tiny-model decode step).

The copy is made the first time an expert is routed to, in fp32 (4 bytes per weight, where the checkpoint
holds 1; the engines' dense baseline holds bf16), and only while the copies of this process stay within
DSV32_TORCH_MOE_CACHE_MB (default 2048 MiB; CPU tensors only); past it an expert is dequantized per call as before. A copy is
keyed on the weight tensor object (weakref: it dies with the weight) and dropped when the weight or its
scales change in place (tensor version counters). The GEMM is naive.py's, on the same fp32 weight, so the
output is bit for bit naive.py's; only experts with rows are touched.
"""
from __future__ import annotations

import os
import weakref

import torch

from ..fp8_quant.naive import naive_fp8_dequant_act, naive_fp8_dequant_weight

CACHE_BYTES = int(float(os.environ.get("DSV32_TORCH_MOE_CACHE_MB", "2048")) * (1 << 20))
_cache: dict = {}        # id(b) -> (weakref(b), weakref(b_scale), versions, {group: fp32 weight})
_used = [0]              # bytes held by the copies


def _drop(key):
    entry = _cache.pop(key, None)
    if entry is not None:
        _used[0] -= sum(w.numel() * 4 for w in entry[3].values())


def _weight(b: torch.Tensor, b_scale: torch.Tensor, g: int) -> torch.Tensor:
    """fp32 dequantized b[g] (naive_fp8_dequant_weight), from the cache when it holds it."""
    key = id(b)
    versions = (b._version, b_scale._version, b_scale.data_ptr())
    entry = _cache.get(key)
    if entry is not None and (entry[0]() is not b or entry[1]() is not b_scale or entry[2] != versions):
        _drop(key)
        entry = None
    if entry is not None and g in entry[3]:
        return entry[3][g]
    w = naive_fp8_dequant_weight(b[g], b_scale[g])
    if b.device.type != "cpu" or _used[0] + w.numel() * 4 > CACHE_BYTES:   # CPU memory only
        return w
    if entry is None:
        entry = (weakref.ref(b, lambda _, k=key: _drop(k)), weakref.ref(b_scale), versions, {})
        _cache[key] = entry
    entry[3][g] = w
    _used[0] += w.numel() * 4
    return w


def fp8_grouped_gemm_nt_contiguous(a, a_scale, b, b_scale, m_indices, out_dtype=torch.bfloat16):
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32, device=a.device)
    a_f = naive_fp8_dequant_act(a, a_scale)
    for g in torch.unique(m_indices).tolist():    # only the experts with rows (-1: padding)
        if 0 <= g < b.shape[0]:
            rows = (m_indices == g).nonzero().squeeze(-1)
            out[rows] = a_f[rows] @ _weight(b, b_scale, g).t()
    return out.to(out_dtype)


def fp8_grouped_gemm_nt_masked(a, a_scale, b, b_scale, masked_m, out_dtype=torch.bfloat16):
    g_, m, _ = a.shape
    out = torch.zeros(g_, m, b.shape[1], dtype=torch.float32, device=a.device)
    for g, mm in enumerate(masked_m.tolist()):
        if mm:
            out[g, :mm] = naive_fp8_dequant_act(a[g, :mm], a_scale[g, :mm]) @ _weight(b, b_scale, g).t()
    return out.to(out_dtype)
