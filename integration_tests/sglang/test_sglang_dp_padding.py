"""Our SGLang backend on batches padded the way DP attention pads them (forward_batch_info.py
prepare_mlp_sync_batch -> _pad_inputs_to_size: rows of zero-length requests after an extend batch's, an idle
rank's batch of padding rows), on the backend class itself: the engine runs on CPU reach only the decode and
idle padding (test_sglang_parallel.py::test_dp_attention_2_matches_reference); extend padding needs MAX_LEN
extend padding or attention TP > 1, which the tiny checkpoint cannot run on CPU. The pools are plain tensors in
SGLang's layouts (DSATokenToKVPool latent rows [slots, 1, 576], index-key pages [pages, 64 * 132]; request
row 0 and page 0 reserved for padding, mem_cache/memory_pool.py ReqToTokenPool)."""
from types import SimpleNamespace

import torch

from deepseek_v32_plugin.engines.sglang.backend import create_backend
from it_common import SEED
from deepseek_v32_plugin.ops import PAGE_SIZE, indexer, sparse_mla

TOPK, H, H_I, PAGES = 16, 2, 4, 8


def _runner(g):
    req_to_token = torch.zeros(4, 4 * PAGE_SIZE, dtype=torch.int32)
    for r, first_page in ((1, 1), (2, 5)):   # row 0: SGLang's padding request (every position at slot 0)
        req_to_token[r] = torch.arange(4 * PAGE_SIZE, dtype=torch.int32) + first_page * PAGE_SIZE
    kv = torch.randn(PAGES * PAGE_SIZE, 1, sparse_mla.HEAD_576, generator=g).bfloat16()
    idx = torch.zeros(PAGES, PAGE_SIZE * indexer.BYTES_PER_TOKEN, dtype=torch.uint8)
    pool = SimpleNamespace(get_key_buffer=lambda layer: kv,
                           index_key_cache=SimpleNamespace(get_buffer=lambda layer: idx))
    return SimpleNamespace(req_to_token_pool=SimpleNamespace(req_to_token=req_to_token), token_to_kv_pool=pool,
                           device="cpu", page_size=PAGE_SIZE,
                           model_config=SimpleNamespace(hf_config=SimpleNamespace(index_topk=TOPK)))


def _extend_batch(runner, prefix, ext, pad_rows):
    """Two requests (rows 1, 2) extending by ext tokens after prefix cached ones, then pad_rows padding rows
    (position 0, slot 0) and, like _pad_inputs_to_size, no extra request entries."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    r2t = runner.req_to_token_pool.req_to_token
    pos = torch.cat([torch.arange(p, p + e) for p, e in zip(prefix, ext)] + [torch.zeros(pad_rows, dtype=torch.long)])
    req = torch.tensor([1] * ext[0] + [2] * ext[1] + [0] * pad_rows)
    return SimpleNamespace(forward_mode=ForwardMode.EXTEND, batch_size=2, positions=pos,
                           req_pool_indices=torch.tensor([1, 2]), seq_lens=torch.tensor(prefix) + torch.tensor(ext),
                           out_cache_loc=r2t[req, pos].long(), extend_seq_lens_cpu=list(ext), extend_seq_lens=None,
                           seq_lens_sum=sum(prefix) + sum(ext))


def _inputs(g, t):
    q_fp8, q_scale = indexer.indexer_quant(torch.randn(t, H_I, 128, generator=g))
    return (torch.randn(t, H, sparse_mla.HEAD_576, generator=g).bfloat16(),
            torch.randn(t, 512, generator=g).bfloat16(), torch.randn(t, 64, generator=g).bfloat16(),
            torch.randn(t, 128, generator=g), q_fp8, (torch.randn(t, H_I, generator=g) * q_scale).float())


def test_padded_extend_rows_and_idle_batches():
    seed = SEED
    g = torch.Generator().manual_seed(seed)
    layer = SimpleNamespace(layer_id=0, scaling=0.1, v_head_dim=512, tp_q_head_num=H)
    prefix, ext, pad = [0, 30], [40, 9], 5     # request 2's context 39 > top-k: scored by the indexer
    n = sum(ext)
    inp = _inputs(g, n + pad)
    outs, caches = [], []
    for rows in (n + pad, n):   # padded batch; the same batch without its padding rows, on fresh pools
        runner = _runner(torch.Generator().manual_seed(seed))
        backend = create_backend(runner)
        fb = _extend_batch(runner, prefix, ext, rows - n)
        backend.init_forward_metadata(fb)
        assert backend.forward_metadata.num_tokens == n
        outs.append(backend.dsa_forward(layer, fb, *(x[:rows] for x in inp)))
        pool = runner.token_to_kv_pool
        caches.append((pool.get_key_buffer(0), pool.index_key_cache.get_buffer(0)))
    (padded, plain), ((kv_p, idx_p), (kv_r, idx_r)) = outs, caches
    assert padded.shape[0] == n + pad and padded[n:].eq(0).all(), "padding rows got an attention output"
    assert torch.equal(padded[:n], plain), "padding rows changed the requests' rows"
    assert torch.equal(kv_p, kv_r) and torch.equal(idx_p, idx_r), "padding rows wrote into the caches"
    # an idle rank's batch: padding rows only (IDLE, one per token of the other group's batch)
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    runner = _runner(g)
    backend = create_backend(runner)
    idle = SimpleNamespace(forward_mode=ForwardMode.IDLE, batch_size=3, positions=torch.zeros(3, dtype=torch.long),
                           req_pool_indices=torch.zeros(3, dtype=torch.long), seq_lens=torch.ones(3, dtype=torch.long),
                           out_cache_loc=torch.zeros(3, dtype=torch.long), extend_seq_lens_cpu=None,
                           extend_seq_lens=None, seq_lens_sum=3)
    backend.init_forward_metadata(idle)
    assert backend.forward_metadata is None
    out = backend.dsa_forward(layer, idle, *(x[:3] for x in _inputs(g, 3)))
    assert out.shape == (3, H, 512) and out.eq(0).all()
