"""CPU model of the sm_90a sparse MLA prefill's schedule (csrc/sparse_mla/sm90/sparse_mla_prefill_sm90.cu),
step for step in PyTorch, vs naive_sparse_mla_prefill: 64-key chunks (zero-filled rows for -1 / past-kv /
past-topk_length entries), chunks with no valid key skipped, S split by keys between two warpgroups that
exchange only their row maxima, each keeping the denominator of its own 32 keys (summed at the end), P
rounded to bf16 before P V, lse from the log2-domain max. It checks the schedule's math, not the CUDA code
(that runs only on a GPU: the CUDA section of tests/triton/test_sparse_mla.py)."""
import math

import pytest
import torch

from deepseek_v32_plugin.ops.sparse_mla import naive

KEYS, HALF = 64, 32  # mla_prefill::kKeys, kKeysPerWg (csrc/sparse_mla/sm90/config.h)


def sm90_prefill_schedule(q, kv, indices, sm_scale, topk_length=None):
    s_q, h, _ = q.shape
    topk, s_kv = indices.shape[-1], kv.shape[0]
    scale_log2 = sm_scale * math.log2(math.e)
    out = torch.zeros(s_q, h, 512)
    lse = torch.full((s_q, h), float("-inf"))
    for row in range(s_q):
        n = topk if topk_length is None else min(max(int(topk_length[row]), 0), topk)
        m = torch.full((h,), float("-inf"))
        l = torch.zeros(2, h)
        o = torch.zeros(h, 512)
        for k0 in range(0, n, KEYS):
            idx = torch.full((KEYS,), -1, dtype=torch.long)
            idx[: min(KEYS, n - k0)] = indices[row, 0, k0:min(k0 + KEYS, n)].long()
            idx[idx >= s_kv] = -1                                  # masked like -1 (and reported)
            valid = idx >= 0
            if not valid.any():
                continue
            rows = kv[idx.clamp_min(0), 0].float() * valid[:, None]  # cp.async zero-fill
            s = (q[row].float() @ rows.T) * scale_log2
            s = s.masked_fill(~valid, float("-inf"))
            mx = torch.stack([s[:, :HALF].amax(1), s[:, HALF:].amax(1)])   # exchanged through smem
            m_new = torch.maximum(m, mx.amax(0))
            dead = m_new == float("-inf")
            alpha = torch.where(dead, 1.0, torch.exp2(m - m_new))
            p = torch.where(dead[:, None], 0.0, torch.exp2(s - m_new[:, None]))
            for w in range(2):
                l[w] = l[w] * alpha + p[:, HALF * w:HALF * (w + 1)].sum(1)
            o = o * alpha[:, None] + p.bfloat16().float() @ rows[:, :512]
            m = m_new
        tot = l.sum(0)
        out[row] = torch.where(tot[:, None] > 0, o / tot.clamp_min(1e-30)[:, None], 0.0)
        lse[row] = torch.where(tot > 0, (m + torch.log2(tot.clamp_min(1e-30))) * math.log(2), float("-inf"))
    return out.bfloat16(), lse


@pytest.mark.parametrize("s_q,h,topk,s_kv,lens", [(4, 16, 130, 300, False), (5, 64, 200, 500, True),
                                                  (3, 20, 31, 40, True), (2, 64, 64, 100, False)],
                         ids=lambda v: str(v))
def test_schedule_matches_reference(seed, s_q, h, topk, s_kv, lens):
    q = (torch.randn(s_q, h, 576) * 0.5).bfloat16()
    kv = torch.randn(s_kv, 1, 576).bfloat16()
    idx = torch.randint(0, s_kv, (s_q, 1, topk), dtype=torch.int32)
    idx[torch.rand(idx.shape) < 0.2] = -1
    idx[0] = -1                                     # no valid key: out 0, lse -inf
    idx[1, 0, 3:] = -1                              # valid keys in the first chunk only: later chunks skipped
    idx[1, 0, 1] = s_kv + 7                         # past kv: masked
    length = torch.tensor([0, topk, 5, topk + 9, 65][:s_q], dtype=torch.int32) if lens else None
    scale = 576 ** -0.5
    out, lse = sm90_prefill_schedule(q, kv, idx, scale, length)
    ref_out, ref_lse = naive.naive_sparse_mla_prefill(q, kv, torch.where(idx >= s_kv, -1, idx), scale,
                                                      topk_length=length)
    torch.testing.assert_close(out.float(), ref_out.float(), rtol=2e-2, atol=2e-2)   # the GPU test's bounds
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    fin = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[fin], ref_lse[fin], rtol=1e-3, atol=1e-3)
    assert (out[0] == 0).all()
