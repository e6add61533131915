"""CUDA backend of the sparse MLA ops: wrappers over `torch.ops.dsv32.*` (csrc/sparse_mla/, csrc/api/sparse_mla.h).

Same positional signatures as the naive_* references (ops/_dispatch.py finds them here). The build, the
availability check and the bounds flag are shared: ops/_cuda.py.
"""
from __future__ import annotations

import torch

from .._cuda import _err_flag, _i32, raise_bounds
from .._dispatch import Unsupported

OP_NAMES = ("sparse_mla_decode", "sparse_mla_prefill", "mla_cache_write")


def register_fakes(fake) -> None:
    @fake("sparse_mla_decode")
    def _(q, kv_cache, indices, sm_scale, topk_length=None, err=None):
        return (q.new_empty((*q.shape[:3], 512)), q.new_empty(q.shape[:3], dtype=torch.float32))

    @fake("sparse_mla_prefill")
    def _(q, kv, indices, sm_scale, topk_length=None, err=None):
        return (q.new_empty((*q.shape[:2], 512)), q.new_empty(q.shape[:2], dtype=torch.float32))

    fake("mla_cache_write")(lambda *args, **kwargs: None)


def _latent_cache_supported(kv_cache) -> None:
    if kv_cache.dtype not in (torch.uint8, torch.bfloat16):
        raise Unsupported(f"the CUDA sparse MLA kernels read bf16 or fp8_ds_mla (uint8) latent caches, "
                          f"not {kv_cache.dtype}")


def _lens(topk_length):
    return None if topk_length is None else _i32(topk_length.reshape(-1))


def sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=512, topk_length=None):
    _latent_cache_supported(kv_cache)
    err = _err_flag(q.device)
    out, lse = torch.ops.dsv32.sparse_mla_decode(q.to(torch.bfloat16).contiguous(), kv_cache,
                                                 _i32(indices), float(sm_scale), _lens(topk_length), err)
    raise_bounds("sparse_mla_decode", err)
    return out.to(q.dtype), lse


def sparse_mla_prefill(q, kv, indices, sm_scale, d_v=512, topk_length=None):
    """q [s_q, h, 576] (read as bf16), kv [s_kv, 1, 576] bf16, indices [s_q, 1, topk] int rows of kv (-1 none)
    -> (out [s_q, h, 512] q.dtype, lse [s_q, h] fp32). On compute capability 9.x the extension runs the
    sm_90a wgmma kernel when built (csrc/sparse_mla/sm90/sparse_mla_prefill_sm90.cu; DSV32_CUDA_MLA=sm80
    forces the mma.sync one), elsewhere the sm80 kernel. Neither has run on a GPU yet, so this reaches the
    auto dispatch only once verified there (_dispatch.CUDA_OPT_IN); backend="cuda" /
    DSV32_BACKEND_SPARSE_MLA_PREFILL=cuda select it."""
    if q.dim() != 3 or q.shape[-1] != 576:
        raise ValueError(f"sparse_mla_prefill: q must be [s_q, h, 576], got {list(q.shape)}")
    if kv.dim() != 3 or tuple(kv.shape[1:]) != (1, 576):
        raise ValueError(f"sparse_mla_prefill: kv must be [s_kv, 1, 576], got {list(kv.shape)}")
    if indices.dim() != 3 or tuple(indices.shape[:2]) != (q.shape[0], 1):
        raise ValueError(f"sparse_mla_prefill: indices must be [s_q={q.shape[0]}, 1, topk], got {list(indices.shape)}")
    if kv.dtype != torch.bfloat16:
        raise Unsupported(f"the CUDA sparse MLA prefill reads a bf16 kv, not {kv.dtype}")
    if d_v != 512:
        raise Unsupported(f"the CUDA sparse MLA prefill computes d_v = 512, not {d_v}")
    err = _err_flag(q.device)
    out, lse = torch.ops.dsv32.sparse_mla_prefill(q.to(torch.bfloat16).contiguous(), kv.contiguous(),
                                                  _i32(indices), float(sm_scale), _lens(topk_length), err)
    raise_bounds("sparse_mla_prefill", err)
    return out.to(q.dtype), lse


def mla_cache_write(kv_c, k_pe, kv_cache, slot_mapping):
    _latent_cache_supported(kv_cache)
    if k_pe.dtype != kv_c.dtype:  # one rounding, as in the reference
        kv_c, k_pe = kv_c.float(), k_pe.float()
    err = _err_flag(kv_cache.device)
    torch.ops.dsv32.mla_cache_write(kv_c.contiguous(), k_pe.contiguous(), kv_cache, slot_mapping.contiguous(), err)
    raise_bounds("mla_cache_write", err)
