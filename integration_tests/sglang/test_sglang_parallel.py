"""Expert and pipeline parallel on SGLang's CPU engine against the bf16 reference (as test_sglang_tp2.py):
  ep2: tp_size=2, ep_size=2: SGLang's FusedMoE gives each rank 4 of the tiny model's 8 experts; our FP8 MoE
       method computes the local ones
  pp2: pp_size=2: layers split over two stages (PPMissingLayer elsewhere), hidden states handed over as
       PPProxyTensors
  dp-attn2 (opt-in, parallel stage): tp_size=2 with two attention-DP groups, with and without ep_size=2
"""
import json
import os
import statistics

import pytest

from conftest import (ENGINE_KW, LOGPROB_TOL_BF16, SPEC_KW, check_greedy_against, prompt_ids, record_stat,
                      reference_input_logprobs)
from it_common import free_port
from test_sglang_tp2 import TP_MEDIAN_TOL


def _serve_and_check(ckpt, ref_bf16, name, max_tol=None, **kw):
    """Input logprobs vs the bf16 reference: median within the TP bound (test_sglang_tp2.py: partial sums
    reduced across ranks in bf16); with max_tol (no cross-rank reduction), every position within it."""
    import sglang
    os.environ.setdefault("SGLANG_CPU_OMP_THREADS_BIND", "0|1")
    eng = sglang.Engine(model_path=ckpt, **kw, **ENGINE_KW)
    try:
        for n in (12, 90):
            ids = prompt_ids(n, seed=1000 + n)
            out = eng.generate(input_ids=ids, sampling_params={"max_new_tokens": 8, "temperature": 0.0},
                               return_logprob=True, logprob_start_len=0)
            got = [x[0] for x in out["meta_info"]["input_token_logprobs"]][1:]
            errs = [abs(a - b) for a, b in zip(got, reference_input_logprobs(ref_bf16, ids))]
            med = statistics.median(errs)
            record_stat(f"sglang:{name}:len{n}", {"median": TP_MEDIAN_TOL}, median=med, max=max(errs))
            assert med <= TP_MEDIAN_TOL, f"{name} len {n}: median |logprob - bf16 reference| = {med}"
            assert max_tol is None or max(errs) <= max_tol, f"{name} len {n}: max |dlogprob| = {max(errs)}"
            check_greedy_against(ref_bf16, ids, out["output_ids"], info=(name, n))
    finally:
        eng.shutdown()


def test_expert_parallel_2_matches_reference(tiny_ckpt, ref_bf16):
    _serve_and_check(tiny_ckpt, ref_bf16, "ep2", tp_size=2, ep_size=2)


def test_pipeline_parallel_2_matches_reference(tiny_ckpt, ref_bf16):
    # each stage runs its layers as one process would: the single-process bound of the bf16 suite
    _serve_and_check(tiny_ckpt, ref_bf16, "pp2", max_tol=LOGPROB_TOL_BF16, pp_size=2)


@pytest.mark.parametrize("kw, flag", [
    (dict(pp_size=3), "--pp-size=3: num_hidden_layers=2"),
    # tiny: the shared expert's 256 columns over 4 ranks = 64, not a 128-wide FP8 block
    (dict(tp_size=4), "--tp-size=4"),
], ids=["pp3-two-layers", "tp4-fp8-block"])
def test_unservable_parallel_layout_refused_at_launch(tiny_ckpt, kw, flag):
    """Refused while SGLang resolves its server args (our model override, engines/sglang/hooks.py), before any
    scheduler process starts."""
    import sglang
    with pytest.raises(ValueError, match="cannot serve this parallel layout") as e:
        sglang.Engine(model_path=tiny_ckpt, **kw, **ENGINE_KW)
    assert flag in str(e.value), str(e.value)


# opt-in (bash scripts/test.sh parallel): ~90 s each on 2 idle cores
@pytest.mark.skipif(not os.environ.get("DSV32_PARALLEL_MATRIX"),
                    reason="parallel matrix: bash scripts/test.sh parallel")
@pytest.mark.parametrize("kw", [dict(dp_size=2, enable_dp_attention=True), dict(attn_dp_size=2, ep_size=2)],
                         ids=["dp-attn2", "dp-attn2-ep2"])
def test_dp_attention_2_matches_reference(tiny_ckpt, ref_bf16, tmp_path, monkeypatch, kw):
    """tp_size=2 with DP attention, in SGLang 0.5.23's deprecated spelling (dp_size=2, enable_dp_attention) and
    its own (attn_dp_size=2, here with ep_size=2: the layout SGLang serves V3.2 with): each attention-DP group
    (one rank) runs its own requests with all heads; SGLang gathers both groups' rows around the MLPs (split
    over both ranks, or the experts split by EP) and scatters them back.
    Three prompts of different lengths and output lengths in one call: the DP controller spreads them over the
    groups, so decode batches are padded to the other group's size (padding requests on SGLang's request 0)
    and a group whose requests finished runs idle batches of padding rows while the other decodes. Every prompt
    as test_sglang_tp2.py: median |input logprob - bf16 reference| within the TP bound (the MLPs' partial sums
    are reduced across the ranks in bf16), greedy tokens = the reference's up to its first near-tie."""
    import sglang
    os.environ.setdefault("SGLANG_CPU_OMP_THREADS_BIND", "0|1")
    prompts = [prompt_ids(n, seed=1000 + n) for n in (12, 90, 40)]
    params = [{"max_new_tokens": m, "temperature": 0.0, "ignore_eos": True} for m in (8, 3, 8)]
    batches = tmp_path / "batches.jsonl"   # every batch our backend planned, per rank (backend.BATCH_LOG_ENV)
    monkeypatch.setenv("DSV32_SGLANG_BATCH_LOG", str(batches))
    # DP attention talks over TCP ports derived from `port` (srt/server_args.py PortArgs.init_new: port + 233..):
    # a free one per engine, so neither the previous engine of this process nor another run holds them
    eng = sglang.Engine(model_path=tiny_ckpt, tp_size=2, port=free_port(), **kw, **ENGINE_KW)
    try:
        outs = eng.generate(input_ids=prompts, sampling_params=params, return_logprob=True, logprob_start_len=0)
    finally:
        eng.shutdown()
    log = [json.loads(line) for line in open(batches)]
    by_rank = {}
    for pid, mode, rows, planned, padding in log:
        by_rank.setdefault(pid, []).append((mode, rows, planned, padding))
    assert len(by_rank) == 2 and all(any(b[0] == "EXTEND" and b[2] for b in v) for v in by_rank.values()), \
        f"both attention-DP groups prefill requests of their own: {by_rank}"
    assert any(b[0] == "DECODE" and b[3] for v in by_rank.values() for b in v), f"no padded decode batch: {by_rank}"
    assert any(b[0] == "IDLE" and b[1] and not b[2] for v in by_rank.values() for b in v), \
        f"no idle batch of padding rows: {by_rank}"
    for ids, out in zip(prompts, outs):
        n = len(ids)
        got = [x[0] for x in out["meta_info"]["input_token_logprobs"]][1:]
        errs = [abs(a - b) for a, b in zip(got, reference_input_logprobs(ref_bf16, ids))]
        med = statistics.median(errs)
        name = "dp-attn2" + ("-ep2" if "ep_size" in kw else "")
        record_stat(f"sglang:{name}:len{n}", {"median": TP_MEDIAN_TOL}, median=med, max=max(errs))
        assert med <= TP_MEDIAN_TOL, f"{name} len {n}: median |logprob - bf16 reference| = {med}"
        check_greedy_against(ref_bf16, ids, out["output_ids"], info=(name, n))


@pytest.mark.parametrize("kw", [dict(attn_dp_size=2), dict(dp_size=2, enable_dp_attention=True)],
                         ids=["attn-dp-size", "enable-dp-attention"])
def test_dp_attention_with_speculative_decoding_refused_at_launch(tiny_ckpt, kw):
    """Either spelling of DP attention is recognised by our server-arg override; with EAGLE/MTP drafting (not
    served together by our backend) the launch fails naming the flag, before any scheduler starts."""
    import sglang
    with pytest.raises(ValueError, match="enable_dp_attention with speculative_algorithm=EAGLE"):
        sglang.Engine(model_path=tiny_ckpt, tp_size=2, **kw, **SPEC_KW, **ENGINE_KW)
