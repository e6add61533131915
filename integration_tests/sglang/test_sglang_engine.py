"""sglang.Engine serving the tiny V3.2 checkpoint through deepseek-v32-plugin (CPU, bf16).

One engine for the module (start-up dominates on 2 cores), with mixed chunks on so decode and prefill tokens
share forward batches. Oracles and tolerances: see conftest.py.
"""
import pytest

from conftest import (ENGINE_KW, LOGPROB_TOL_BF16, LOGPROB_TOL_FP32, prompt_ids, reference_greedy,
                      reference_input_logprobs)

GREEDY = {"max_new_tokens": 8, "temperature": 0.0}


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    import sglang
    eng = sglang.Engine(model_path=tiny_ckpt, enable_mixed_chunk=True, **ENGINE_KW)
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


def test_50_concurrent_mixed_lengths_equal_single(engine):
    lens = [5 + (i * 37) % 150 for i in range(50)]
    prompts = [prompt_ids(n, seed=2000 + i) for i, n in enumerate(lens)]
    params = [{"max_new_tokens": 4 + i % 5, "temperature": 0.0} for i in range(50)]
    assert engine.flush_cache().success
    together = engine.generate(input_ids=prompts, sampling_params=params)
    assert len(together) == 50
    assert all(o["meta_info"]["finish_reason"]["type"] in ("length", "stop") for o in together)
    assert engine.flush_cache().success
    single = [engine.generate(input_ids=p, sampling_params=s) for p, s in zip(prompts, params)]
    mismatched = [i for i in range(50) if together[i]["output_ids"] != single[i]["output_ids"]]
    assert not mismatched, f"requests {mismatched} differ between the concurrent and single runs"
