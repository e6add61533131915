"""Metadata captured from a real engine run (mixed prefill/decode batches, 64-token chunked prefill, a prefix
hit, MTP verification with 2 draft tokens) replayed through the adapter's kernel sequence (dsa.py) without
vLLM: on CPU here (torch references, checks the capture covers every batch kind and the replay machinery), and
on CUDA (our kernels vs the CPU references) when a GPU is present -- the same file is what
`python integration_tests/vllm/replay_metadata.py CAPTURE.pt` replays on the lent GPU."""
import os

import pytest
import torch

from vllm_it import run_engine
from replay_metadata import replay


@pytest.fixture(scope="module")
def captured(tiny_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("capture")
    g = torch.Generator().manual_seed(5)
    shared = torch.randint(3, 1000, (140,), generator=g).tolist()
    prompts = [torch.randint(3, 1000, (n,), generator=g).tolist() for n in (20, 100)] + [shared, shared + [7, 8, 9]]
    path = str(tmp / "metadata.pt")
    engine = dict(dtype="float32", max_model_len=512, max_num_seqs=8, max_num_batched_tokens=64,
                  enable_prefix_caching=True, speculative_config={"method": "mtp", "num_speculative_tokens": 2})
    reqs = [{"prompt_token_ids": p, "prompt_logprobs": False} for p in prompts]
    run_engine(tmp, tiny_ckpt, engine, reqs, max_tokens=5, batch="single", capture_metadata=path)
    out = os.environ.get("DSV32_SAVE_METADATA")   # keep a copy for the GPU replay
    mds = torch.load(path, weights_only=False)
    if out:
        torch.save(mds, out)
    return mds


def test_capture_covers_every_batch_kind(captured):
    qs = {g.q for md in captured for g in md.paged}
    assert 3 in qs, qs                       # MTP verification: 1 + 2 draft tokens per request
    chunks = [r for md in captured for r in md.ragged if r.seq_len > r.tok_hi - r.tok_lo]
    assert chunks, "no prefill chunk with earlier context (chunked prefill / prefix hit)"
    assert any(r.seq_len > 32 for md in captured for r in md.ragged)   # > index_topk: the indexer scores


def test_replay_on_cpu(captured):
    assert replay(captured, "cpu", verbose=False) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (vLLM-free replay of CPU-captured metadata)")
def test_replay_on_cuda(captured):
    assert replay(captured, "cuda") == []
