"""The reference model (the oracle) on the generated tiny checkpoint.

Checks: agreement with HF transformers' independent deepseek_v32 implementation; prefill == chunked
prefill == token-by-token decode; DSA == dense MLA while len <= index_topk and != once len > index_topk;
the indexer's selection against HF's bf16/fp32 indexer; FP8 latent cache close to bf16; MTP; bad input.
"""
import pytest
import torch

from deepseek_v32_plugin.check_stats import record_stat
from deepseek_v32_plugin.checkpoint import load_checkpoint, write_checkpoint
from deepseek_v32_plugin.config import ConfigError, preset_config
from deepseek_v32_plugin.model import ReferenceModel
from deepseek_v32_plugin.model.reference import MissingWeightError
from deepseek_v32_plugin.ops.fp8_quant import fp8_dequant_weight

TOPK = 32  # the tiny preset's index_topk


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, request):
    from seeding import seed_for   # module fixtures run before the per-test seeding: seed this one itself
    path = tmp_path_factory.mktemp("tiny")
    write_checkpoint(preset_config("tiny"), str(path), seed=seed_for(request.module.__name__))
    cfg, tensors = load_checkpoint(str(path))
    return cfg, tensors, ReferenceModel(cfg, tensors)


@pytest.fixture(scope="module")
def smooth(tiny):
    """Weight-only experts: a continuous function of its inputs. With FP8 activations a 1e-7 change can
    flip an FP8 rounding or a routing near-tie, so path-consistency checks use this model."""
    cfg, tensors, _ = tiny
    return cfg, tensors, ReferenceModel(cfg, tensors, expert_act_fp8=False)


def _prompt(cfg, n):
    return torch.randint(2, cfg.vocab_size, (n,))


def _run(model, ids, chunks=None, use_indexer=True, mla_format="bf16", return_selected=False):
    cache = model.new_cache(8, mla_format)
    seq = cache.new_sequence()
    outs, sels = [], []
    for part in (ids.split(chunks) if chunks else [ids]):
        logits, _, sel = model.forward(part, seq, cache, use_indexer=use_indexer, return_selected=True)
        outs.append(logits)
        sels.append(sel)
    if not return_selected:
        return torch.cat(outs)
    # per layer, per query row: the set of selected key positions
    per_layer = [torch.cat([s[i] for s in sels]) for i in range(len(sels[0]))]
    return torch.cat(outs), [[frozenset(r[r >= 0].tolist()) for r in layer] for layer in per_layer]


# ---------------------------------------------------------------- against HF transformers
@pytest.fixture(scope="module")
def hf(tiny):
    return _hf_model(*tiny[:2])


def _hf_model(cfg, tensors):
    from transformers import DeepseekV32Config, DeepseekV32ForCausalLM
    d = cfg.to_dict()
    d.pop("quantization_config", None)
    d["rope_parameters"] = {"rope_type": "yarn", "rope_theta": cfg.rope_theta, **d.pop("rope_scaling")}
    d["rope_parameters"].pop("type", None)
    hf_cfg = DeepseekV32Config(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")})
    hf_cfg._attn_implementation = "eager"
    hf = DeepseekV32ForCausalLM(hf_cfg).float().eval()
    sd = {}
    for name, t in tensors.items():
        if name.endswith("weight_scale_inv") or f"layers.{cfg.num_hidden_layers}." in name:
            continue
        if t.dtype == torch.float8_e4m3fn:
            t = fp8_dequant_weight(t, tensors[name + "_scale_inv"])
        sd[name] = t.float()
    for i in range(cfg.first_k_dense_replace, cfg.num_hidden_layers):
        p = f"model.layers.{i}.mlp.experts"
        e = range(cfg.n_routed_experts)
        sd[f"{p}.gate_up_proj"] = torch.stack([torch.cat([sd.pop(f"{p}.{j}.gate_proj.weight"),
                                                          sd.pop(f"{p}.{j}.up_proj.weight")]) for j in e])
        sd[f"{p}.down_proj"] = torch.stack([sd.pop(f"{p}.{j}.down_proj.weight") for j in e])
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all("rotary" in m for m in missing), missing
    return hf


def test_matches_hf_transformers_below_topk(tiny, hf):
    """len <= index_topk selects every past token, so HF's dense-masked attention must agree with our
    paged sparse path to fp32 precision (weight-only experts, as HF computes them)."""
    cfg, tensors, model = tiny
    ids = _prompt(cfg, TOPK)
    weight_only = ReferenceModel(cfg, tensors, expert_act_fp8=False)
    cache = weight_only.new_cache(8, mla_format="fp32")        # fp32 latents: nothing but fp32 rounding differs
    ours = weight_only.forward(ids, cache.new_sequence(), cache)[0]
    with torch.no_grad():
        theirs = hf(ids[None]).logits[0].float()
    # measured over seeds 0-14: max |ours - HF| <= 2.5e-5 ~ 1.5e-6 of the logit scale; bugs are O(scale)
    atol = 1e-4 * theirs.abs().max().item()
    record_stat("unit:reference-vs-hf:max-abs", {"max": atol}, max=(ours - theirs).abs().max().item())
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)
    # the default path (FP8 activations in routed experts, as on the GPU) stays close: rows typically within
    # ~3% of the logit scale; in ~1 run in 10 one e4m3 rounding / routing near-tie flips and moves a single
    # row by ~35% (measured over 12 checkpoint seeds x 4 prompts), so allow a few such rows, not more
    fp8 = _run(model, ids)
    row = (fp8 - theirs).abs().max(-1).values / theirs.abs().max()
    assert row.median() < 0.05 and (row > 0.05).sum() <= max(1, len(ids) // 10), row


def test_indexer_selection_matches_hf_indexer_above_topk(tiny, hf):
    """len > index_topk: our FP8 + Hadamard selection vs HF's fp32 indexer on the same layer inputs.
    FP8 rounding may swap near-ties, so compare set overlap, not order."""
    cfg, tensors, model = tiny
    n = TOPK + 40
    ids = _prompt(cfg, n)
    cache = model.new_cache(8)
    seq = cache.new_sequence()
    _, _, selected = model.forward(ids, seq, cache, return_selected=True)
    captured = {}
    attn0 = hf.model.layers[0].self_attn
    hook = attn0.indexer.register_forward_hook(lambda m, a, out: captured.setdefault("idx", out))
    with torch.no_grad():
        hf(ids[None])
    hook.remove()
    theirs = captured["idx"][0]                                   # [n, topk]
    ours = selected[0]
    overlaps = []
    for t in range(TOPK, n):
        a = set(ours[t].tolist()) - {-1}
        b = set(theirs[t].tolist())
        assert len(a) == TOPK and max(a) <= t
        overlaps.append(len(a & b) / TOPK)
    missed = 1 - sum(overlaps) / len(overlaps)
    # FP8 rounding swaps near-ties: missed <= 0.017 over seeds 0-14; the indexer rope interleaved instead of
    # half-split (a planted bug, scripts/mutation_check.py) misses ~0.2
    record_stat("unit:indexer-selection-vs-hf:missed", {"missed": 0.05}, missed=missed)
    assert missed < 0.05, overlaps


# ---------------------------------------------------------------- internal consistency
def test_prefill_equals_chunked_and_decode(smooth):
    """One path: chunked prefill and token-by-token decode give the prefill's logits, up to the first row
    where the FP8 indexer's top-k differs. A batch shape changes fp32 summation order (~1e-7), which can flip
    an FP8 rounding of an indexer query/key and swap a near-tied key at rank index_topk: from that row on
    (later rows and layers read its keys) outputs may part. Such swaps must stay rare."""
    cfg, _, model = smooth
    ids = _prompt(cfg, TOPK + 30)                                 # past index_topk: sparse for real
    full, sel_full = _run(model, ids, return_selected=True)
    # fp32 summation-order noise (~1e-6) is amplified by the random tiny network; bugs are O(scale)
    tol = 2e-3 * full.abs().max().item()
    for chunks in (17, 1):
        got, sel = _run(model, ids, chunks=chunks, return_selected=True)
        swapped = [r for r in range(len(ids)) if any(a[r] != b[r] for a, b in zip(sel, sel_full))]
        first = swapped[0] if swapped else len(ids)
        assert len(swapped) <= 0.1 * len(ids), (chunks, swapped)
        torch.testing.assert_close(got[:first], full[:first], atol=tol, rtol=0)
        assert first > TOPK   # up to index_topk every key is selected: nothing to swap


def test_dsa_equals_dense_up_to_topk_then_differs(smooth):
    cfg, _, model = smooth
    ids = _prompt(cfg, TOPK + 40)
    sparse = _run(model, ids)
    dense = _run(model, ids, use_indexer=False)
    scale = dense.abs().max().item()
    torch.testing.assert_close(sparse[:TOPK], dense[:TOPK], atol=2e-3 * scale, rtol=0)
    assert (sparse[TOPK + 8:] - dense[TOPK + 8:]).abs().max() > 5e-2 * scale


def test_fp8_latent_cache_close_to_bf16(smooth):
    cfg, _, model = smooth
    ids = _prompt(cfg, 24)
    a = _run(model, ids)
    b = _run(model, ids, mla_format="fp8_ds_mla")
    # e4m3 latents carry ~2-6% per-element error, which random tiny weights amplify (the op-level tests
    # check the FP8 cache path exactly against dequantized rows); here: same ballpark, clearly not broken.
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).mean() > 0.9
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.6


def test_logits_are_not_uniform(tiny):
    cfg, _, model = tiny
    p = _run(model, _prompt(cfg, 16)).softmax(-1).amax(-1)
    assert p.median() > 10.0 / cfg.vocab_size


def test_generate_greedy_matches_forward(tiny):
    cfg, _, model = tiny
    ids = _prompt(cfg, 10)
    out = model.generate(ids.tolist(), 6)
    full = _run(model, torch.cat([ids, torch.tensor(out[:-1])]))
    assert full[len(ids) - 1:].argmax(-1).tolist() == out[: len(full) - len(ids) + 1]


def test_mtp_draft_step(smooth):
    cfg, _, model = smooth
    ids = _prompt(cfg, 12)
    cache = model.new_cache(8)
    main, mtp_seq = cache.new_sequence(), cache.new_sequence()
    logits, hidden = model.forward(ids, main, cache)
    nxt = logits[-1].argmax()
    shifted = torch.cat([ids[1:], nxt[None]])
    draft, _ = model.mtp_forward(shifted, hidden, mtp_seq, cache)
    assert draft.shape == (12, cfg.vocab_size) and torch.isfinite(draft).all()
    # incremental MTP (one token at a time) equals the batched MTP prefill
    mtp2 = cache.new_sequence()
    step = torch.cat([model.mtp_forward(shifted[i:i + 1], hidden[i:i + 1], mtp2, cache)[0] for i in range(12)])
    torch.testing.assert_close(step, draft, atol=2e-3 * draft.abs().max().item(), rtol=0)
    # position 0's embedding is masked: changing token t1 must not change the first draft row
    other = shifted.clone()
    other[0] = (other[0] + 1) % cfg.vocab_size
    d2, _ = model.mtp_forward(other[:1], hidden[:1], cache.new_sequence(), cache)
    torch.testing.assert_close(d2[0], draft[0])


# ---------------------------------------------------------------- bad input
def test_bad_inputs_name_the_problem(tiny):
    cfg, tensors, model = tiny
    cache = model.new_cache(2)
    with pytest.raises(ValueError, match="vocab_size"):
        model.forward([cfg.vocab_size + 3], cache.new_sequence(), cache)
    seq = cache.new_sequence()
    seq.length = cfg.max_position_embeddings - 1
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        model.forward([5, 6], seq, cache)
    broken = dict(tensors)
    del broken["model.layers.0.self_attn.indexer.wk.weight"]
    with pytest.raises(MissingWeightError, match="indexer.wk.weight"):
        ReferenceModel(cfg, broken)
