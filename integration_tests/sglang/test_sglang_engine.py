"""sglang.Engine serving the tiny V3.2 checkpoint through deepseek-v32-plugin (CPU, bf16).

One engine for the module (start-up dominates on 2 cores), with mixed chunks on so decode and prefill tokens
share forward batches, and 64-token prefill chunks so the 90/100-token prompts are prefilled in two chunks
(the second chunk's indexer and sparse MLA read the first chunk's keys from the paged caches, as after a
radix hit). Oracles and tolerances: see conftest.py.
"""
import pytest

from conftest import (ENGINE_KW, LOGPROB_TOL_BF16, LOGPROB_TOL_FP32, check_greedy_against, prompt_ids,
                      record_stat, reference_input_logprobs)

GREEDY = {"max_new_tokens": 8, "temperature": 0.0}


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    import sglang
    kw = dict(ENGINE_KW)
    del kw["disable_cuda_graph"]   # SGLang's defaults, with the plugin's graph declarations (checked below)
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
    # our backend captures decode (test_sglang_cpu_graph.py), not prefill: the plugin turns prefill capture off only
    assert info["disable_cuda_graph"] is False
    graphs = info["cuda_graph_config"]
    assert {p: graphs[p]["backend"] for p in ("decode", "prefill")} == {"decode": "full", "prefill": "disabled"}, \
        graphs


@pytest.mark.parametrize("n", [12, 90], ids=["len12-below-topk", "len90-above-topk-2pages"])
def test_input_logprobs_match_reference(engine, ref_bf16, ref_fp32, n):
    ids = prompt_ids(n, seed=n)
    got = _input_logprobs(engine, ids)
    want = reference_input_logprobs(ref_bf16, ids)
    err = max(abs(a - b) for a, b in zip(got, want))
    record_stat(f"sglang:logprobs-bf16:len{n}", {"max": LOGPROB_TOL_BF16}, max=err)
    assert err <= LOGPROB_TOL_BF16, f"max |logprob - bf16 reference| = {err}"
    if n <= ref_fp32.cfg.index_topk:
        want32 = reference_input_logprobs(ref_fp32, ids)
        err32 = max(abs(a - b) for a, b in zip(got, want32))
        record_stat(f"sglang:logprobs-fp32:len{n}", {"max": LOGPROB_TOL_FP32}, max=err32)
        assert err32 <= LOGPROB_TOL_FP32, f"max |logprob - fp32 reference| = {err32}"


@pytest.mark.parametrize("n", [12, 90], ids=["len12", "len90"])
def test_greedy_matches_reference(engine, ref_bf16, n):
    ids = prompt_ids(n, seed=1000 + n)
    out = engine.generate(input_ids=ids, sampling_params=GREEDY)
    check_greedy_against(ref_bf16, ids, out["output_ids"])


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
    assert hit["output_ids"] == miss["output_ids"]   # same engine, same batch shape: bit-identical
    check_greedy_against(ref_bf16, base, miss["output_ids"])
    part = engine.generate(input_ids=other, sampling_params=GREEDY)
    assert part["meta_info"]["cached_tokens"] >= 64
    check_greedy_against(ref_bf16, other, part["output_ids"])


def test_50_concurrent_mixed_lengths_equal_single(engine, ref_bf16):
    """50 requests of mixed lengths submitted at once (prefill/decode/mixed batches of varying size) all finish
    and each equals the bf16 reference run on its own (teacher-forced on the engine's tokens) up to the
    reference's first near-tie: a different batch shape rounds bf16 GEMMs differently (CPU GEMM blocking depends
    on M), which may legitimately resolve a near-tie -- of the logits, or above index_topk of the indexer's FP8
    scores -- the other way, and nothing else may differ. Half the requests are dense (prompt + output <=
    index_topk: every key selected), half sparse."""
    topk = ref_bf16.cfg.index_topk
    lens = [3 + (i * 7) % 20 if i % 2 else 33 + (i * 37) % 120 for i in range(50)]
    prompts = [prompt_ids(n, seed=2000 + i) for i, n in enumerate(lens)]
    params = [{"max_new_tokens": 4 + i % 5, "temperature": 0.0} for i in range(50)]
    assert engine.flush_cache().success
    together = engine.generate(input_ids=prompts, sampling_params=params)
    assert len(together) == 50
    dense = [i for i in range(50) if lens[i] + params[i]["max_new_tokens"] <= topk]
    assert 20 <= len(dense) <= 30
    for i, (o, s) in enumerate(zip(together, params)):
        assert o["meta_info"]["finish_reason"]["type"] in ("length", "stop")
        assert 1 <= len(o["output_ids"]) <= s["max_new_tokens"]
        check_greedy_against(ref_bf16, prompts[i], o["output_ids"], info=f"request {i} (len {lens[i]})")
