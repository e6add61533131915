"""The checkpoint's MTP layer as SGLang's EAGLE draft (speculative_algorithm EAGLE, 2 draft steps, chain).

SGLang's CPU engine runs its EAGLE v2 worker here (our CPU shim supplies sgl_kernel's EAGLE CPU ops in torch,
cpu_spec_ops.py). Per decode step the draft model (our DeepseekV32NextN, registered as
DeepseekV3ForCausalLMNextN) proposes 2 tokens through our backend's multi-step draft decode, the target
verifies 1 + 2 tokens per request (TARGET_VERIFY through our backend's extend path) and the draft re-extends
over them (DRAFT_EXTEND_V2). DSV32_CHECK_SLOTS=1 (conftest) makes the backend check, in every mode, that each
new token's cache slot is req_to_token[request, position], the invariant its planning rests on.

Checks: greedy outputs with speculation equal the bf16 reference's greedy (which the non-speculative engine
equals token for token, test_sglang_engine.py); drafts were proposed and verified; the draft module, on the
inputs SGLang fed it at the prefill's draft extend, equals ReferenceModel.mtp_forward.
On random weights the draft is never accepted, so the acceptance path (several tokens committed per step,
KV of accepted drafts kept, bonus token) is exercised on testing_checkpoints.write_draftable_checkpoint, whose
MTP layer agrees with the target's next greedy token most of the time (~80% in the reference).
"""
import os

import pytest
import torch

from conftest import ENGINE_KW, SPEC_KW, check_greedy_against, prompt_ids

GREEDY = {"max_new_tokens": 8, "temperature": 0.0}
LENS = [12, 90]          # below and above index_topk (32)


@pytest.fixture(scope="module")
def spec_run(tiny_ckpt, tmp_path_factory):
    import sglang
    dump = str(tmp_path_factory.mktemp("mtp") / "draft.pt")
    os.environ["DSV32_SGLANG_DUMP_DRAFT"] = dump   # read by the scheduler process the engine starts
    try:
        eng = sglang.Engine(model_path=tiny_ckpt, **SPEC_KW, **ENGINE_KW)
    finally:
        del os.environ["DSV32_SGLANG_DUMP_DRAFT"]
    try:
        prompts = [prompt_ids(n, seed=3000 + n) for n in LENS]
        outs = [eng.generate(input_ids=p, sampling_params=GREEDY) for p in prompts]   # one at a time
        # then together (verify / draft extend / draft decode batches of several requests of different lengths)
        mixed = [prompt_ids(n, seed=3100 + n) for n in (5, 40, 70, 20)]
        together = eng.generate(input_ids=mixed, sampling_params=GREEDY)
        info = eng.get_server_info()
    finally:
        eng.shutdown()
    return dict(prompts=prompts, outs=outs, mixed=mixed, together=together, info=info, draft=torch.load(dump))


def test_speculative_greedy_equals_reference(spec_run, ref_bf16):
    assert spec_run["info"]["speculative_algorithm"] == "EAGLE"
    for p, o in zip(spec_run["prompts"], spec_run["outs"]):
        m = o["meta_info"]
        print(len(p), {k: v for k, v in m.items() if k.startswith("spec_")})
        assert m["spec_verify_ct"] >= 1 and m["spec_num_proposed_drafts"] >= 2 * m["spec_verify_ct"], m
        check_greedy_against(ref_bf16, p, o["output_ids"], info=len(p))


def test_batched_speculative_greedy_equals_reference(spec_run, ref_bf16):
    for p, o in zip(spec_run["mixed"], spec_run["together"]):
        assert o["meta_info"]["spec_verify_ct"] >= 1, o["meta_info"]
        check_greedy_against(ref_bf16, p, o["output_ids"], info=len(p))


def test_draft_module_equals_reference(spec_run, ref_bf16):
    """First draft forward of the 90-token prompt (its prefill's draft extend): SGLang fed it the prompt
    shifted by one plus the first sampled token, and the target's final hidden states; those equal the
    reference's, and the draft's output (shared_head.norm(x)) gives the reference mtp_forward's logits."""
    p = spec_run["prompts"][1]
    n = len(p)
    recs = [r for r in spec_run["draft"] if r["positions"].tolist() == list(range(n))]
    assert recs, [(len(r["positions"]), r["positions"][:3].tolist()) for r in spec_run["draft"]]
    rec = recs[0]
    assert rec["input_ids"][:-1].tolist() == p[1:]
    assert rec["input_ids"][-1].item() == spec_run["outs"][1]["output_ids"][0]
    ref = ref_bf16
    cache = ref.new_cache(4)
    _, ref_hidden = ref.forward(p, cache.new_sequence(), cache)
    assert torch.equal(rec["prev_hidden"], ref_hidden.float()), "target hidden states fed to the draft"
    cache = ref.new_cache(4)
    ref_logits, _ = ref.mtp_forward(rec["input_ids"], ref_hidden, cache.new_sequence(), cache)
    got = torch.log_softmax(rec["hidden"] @ ref.mtp["head"].float().t(), -1)
    want = torch.log_softmax(ref_logits, -1)
    d = (got - want).abs()
    # bf16 on both sides, same ops: differences are bf16 rounding of the head GEMM and of the draft layer
    assert d.median().item() < 0.02 and d.max().item() < 0.3, (d.median().item(), d.max().item())
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    assert agree >= 0.95, agree


def test_accepted_drafts_keep_greedy_equal_reference(draftable_ckpt, ref_draftable_bf16):
    """Draftable checkpoint: most drafts are accepted (so steps commit 2-3 tokens, and later steps read the
    KV that verify wrote for accepted drafts), and the output still equals the reference's greedy."""
    import sglang
    prompts = [prompt_ids(n, seed=4000 + n) for n in LENS]
    # ignore_eos: the draftable model's fixed token map reaches EOS quickly from some tokens
    params = {"max_new_tokens": 16, "temperature": 0.0, "ignore_eos": True}
    eng = sglang.Engine(model_path=draftable_ckpt, **SPEC_KW, **ENGINE_KW)
    try:   # submitted together: requests accept different numbers of drafts within one verify batch
        outs = eng.generate(input_ids=prompts, sampling_params=params)
    finally:
        eng.shutdown()
    correct = proposed = 0
    for p, o in zip(prompts, outs):
        m = o["meta_info"]
        print(len(p), {k: v for k, v in m.items() if k.startswith("spec_")})
        correct += m["spec_num_correct_drafts"]
        proposed += m["spec_num_proposed_drafts"]
        assert len(o["output_ids"]) == params["max_new_tokens"], o["output_ids"]
        check_greedy_against(ref_draftable_bf16, p, o["output_ids"], info=len(p))
    # ~0.8 per draft in the reference; a chain's second draft is only tried after the first is accepted
    assert correct >= 0.3 * proposed and correct >= 8, (correct, proposed)
