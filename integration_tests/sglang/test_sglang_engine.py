"""sglang.Engine serving the tiny V3.2 checkpoint through deepseek-v32-plugin (CPU, bf16).

One engine for the module (start-up dominates on 2 cores), with mixed chunks on so decode and prefill tokens
share forward batches, and 64-token prefill chunks so the 90/100-token prompts are prefilled in two chunks
(the second chunk's indexer and sparse MLA read the first chunk's keys from the paged caches, as after a
radix hit). Oracles and tolerances: see conftest.py.
"""
import pytest

from conftest import (ENGINE_KW, LOGPROB_TOL_BF16, LOGPROB_TOL_FP32, prompt_ids, reference_greedy,
                      reference_input_logprobs)

GREEDY = {"max_new_tokens": 8, "temperature": 0.0}
SPARSE_MIN_EXACT = 0.8


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    import sglang
    kw = dict(ENGINE_KW)
    del kw["disable_cuda_graph"]   # the plugin turns CUDA graphs off itself (checked below)
    eng = sglang.Engine(model_path=tiny_ckpt, enable_mixed_chunk=True, chunked_prefill_size=64, **kw)
    yield eng
    eng.shutdown()


def _input_logprobs(engine, ids):
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1, "temperature": 0.0},
                          return_logprob=True, logprob_start_len=0)
    lps = [x[0] for x in out["meta_info"]["input_token_logprobs"]]
    assert lps[0] is None and len(lps) == len(ids)
    return lps[1:]


def test_plugin_model_and_backend_in_use(engine):
    info = engine.get_server_info()
    assert info["attention_backend"] == "dsv32_sparse", info["attention_backend"]
    assert info["page_size"] == 64
    # our backend cannot be captured yet: the plugin turns capture off (the flag and both graph phases)
    assert info["disable_cuda_graph"] is True
    graphs = info["cuda_graph_config"]
    assert {p: graphs[p]["backend"] for p in ("decode", "prefill")} == {"decode": "disabled", "prefill": "disabled"}, \
        graphs


@pytest.mark.parametrize("n", [12, 90], ids=["len12-below-topk", "len90-above-topk-2pages"])
def test_input_logprobs_match_reference(engine, ref_bf16, ref_fp32, n):
    ids = prompt_ids(n, seed=n)
    got = _input_logprobs(engine, ids)
    want = reference_input_logprobs(ref_bf16, ids)
    err = max(abs(a - b) for a, b in zip(got, want))
    assert err <= LOGPROB_TOL_BF16, f"max |logprob - bf16 reference| = {err}"
    if n <= ref_fp32.cfg.index_topk:
        want32 = reference_input_logprobs(ref_fp32, ids)
        err32 = max(abs(a - b) for a, b in zip(got, want32))
        assert err32 <= LOGPROB_TOL_FP32, f"max |logprob - fp32 reference| = {err32}"


@pytest.mark.parametrize("n", [12, 90], ids=["len12", "len90"])
def test_greedy_matches_reference(engine, ref_bf16, n):
    ids = prompt_ids(n, seed=1000 + n)
    out = engine.generate(input_ids=ids, sampling_params=GREEDY)
    assert out["output_ids"] == reference_greedy(ref_bf16, ids, GREEDY["max_new_tokens"])


def test_radix_hit_equals_miss(engine, ref_bf16):
    """Same prompt twice (2nd reuses >= 64 cached tokens), then a prompt sharing that prefix: all equal the
    reference, so a prefix hit computes what a miss does (indexer keys + latent rows read from the cache)."""
    base = prompt_ids(100, seed=7)
    other = base[:80] + prompt_ids(30, seed=8)
    assert engine.flush_cache().success
    miss = engine.generate(input_ids=base, sampling_params=GREEDY)
    hit = engine.generate(input_ids=base, sampling_params=GREEDY)
    assert miss["meta_info"]["cached_tokens"] == 0
    assert hit["meta_info"]["cached_tokens"] >= 64
    assert hit["output_ids"] == miss["output_ids"] == reference_greedy(ref_bf16, base, GREEDY["max_new_tokens"])
    part = engine.generate(input_ids=other, sampling_params=GREEDY)
    assert part["meta_info"]["cached_tokens"] >= 64
    assert part["output_ids"] == reference_greedy(ref_bf16, other, GREEDY["max_new_tokens"])


def test_50_concurrent_mixed_lengths_equal_single(engine, ref_bf16):
    """50 requests of mixed lengths submitted at once (prefill/decode/mixed batches of varying size) all finish
    and equal their single-request runs (the bf16 reference, one request at a time).

    Exactness depends on the regime. Dense (prompt + output <= index_topk: every key selected) must match
    token for token. Sparse requests run the indexer's FP8 top-k, and on this random tiny model its scores are
    often near-tied: a bf16 rounding difference from a different batch shape (CPU GEMM blocking depends on M)
    can swap selected keys and move later logits by tenths of a nat (measured: the same prompts differ by up
    to 2.5 nats between the bf16 and fp32 references). So sparse requests must match their single run in at
    least SPARSE_MIN_EXACT of cases, and their first token (computed before any batch-dependent cache state)
    always."""
    topk = ref_bf16.cfg.index_topk
    lens = [3 + (i * 7) % 20 if i % 2 else 33 + (i * 37) % 120 for i in range(50)]
    prompts = [prompt_ids(n, seed=2000 + i) for i, n in enumerate(lens)]
    params = [{"max_new_tokens": 4 + i % 5, "temperature": 0.0} for i in range(50)]
    assert engine.flush_cache().success
    together = engine.generate(input_ids=prompts, sampling_params=params)
    assert len(together) == 50
    for o, s in zip(together, params):
        assert o["meta_info"]["finish_reason"]["type"] in ("length", "stop")
        assert 1 <= len(o["output_ids"]) <= s["max_new_tokens"]
    # single-request outputs: the bf16 reference run one request at a time (the engine's own single runs
    # equal it token for token, see test_greedy_matches_reference; it is much faster than 50 engine calls)
    single = [{"output_ids": reference_greedy(ref_bf16, p, s["max_new_tokens"])} for p, s in zip(prompts, params)]
    dense = [i for i in range(50) if lens[i] + params[i]["max_new_tokens"] <= topk]
    sparse = [i for i in range(50) if i not in dense]
    assert len(dense) >= 20 and len(sparse) >= 20
    bad_dense = [i for i in dense if together[i]["output_ids"] != single[i]["output_ids"]]
    assert not bad_dense, f"dense-regime requests {bad_dense} differ between the concurrent and single runs"
    bad_first = [i for i in sparse if together[i]["output_ids"][0] != single[i]["output_ids"][0]]
    assert not bad_first, f"sparse requests {bad_first}: first token differs between concurrent and single runs"
    exact = sum(together[i]["output_ids"] == single[i]["output_ids"] for i in sparse)
    assert exact >= SPARSE_MIN_EXACT * len(sparse), f"only {exact}/{len(sparse)} sparse requests match"
