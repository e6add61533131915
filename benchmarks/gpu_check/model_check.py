"""Phase (c): the engine-neutral reference model on our kernels vs the same model on the PyTorch references.

Presets: `tiny` (prompt longer than its index_topk 32, so the indexer really selects), and on a GPU a
memory-safe real-width one: the `bench` preset's per-layer widths (hidden 7168, 128 heads, q_lora 1536,
kv_lora 512, indexer 64 x 128, index_topk 2048, moe_intermediate 2048, 8 active experts), 1 dense + 1 MoE
layer, 32 of the 256 routed experts, vocab 32768, no MTP: 3.2 GB of checkpoint tensors generated once, in GPU memory
(`checkpoint.make_state_dict`), instead of the full bench preset's 31 GB per case. Its prompt (2304 tokens)
is longer than index_topk, prefilled in chunks of 768 (bounded reference memory), then 4 decode steps.

Backends: `triton` (every op forced to Triton), `cuda` (every op with a CUDA kernel forced to it, the rest
to Triton: per-op DSV32_BACKEND_<OP>), both against `torch`. Pass: min cosine of the logits > 0.98 and
argmax agreement > 0.9 (bf16 activations, FP8 selection near-ties)."""
from __future__ import annotations

import os

import torch

REAL_WIDTH = dict(n_routed_experts=32, vocab_size=32768, num_nextn_predict_layers=0)


def _backend_env(backend: str) -> dict:
    from deepseek_v32_plugin.ops import _cuda, _dispatch
    env = {"DSV32_BACKEND": backend}
    if backend == "cuda":
        for op in _dispatch._FAMILY_OF:
            if _cuda.get_op(op) is None:
                env[f"DSV32_BACKEND_{op.upper()}"] = "triton"
    return env


def _logits(model, ids, backend, mla_format, chunk):
    from deepseek_v32_plugin.ops import _dispatch
    env = _backend_env(backend)
    saved = dict(os.environ)
    os.environ.update(env)
    _dispatch._cache.clear()
    try:
        cache = model.new_cache(-(-len(ids) // 64) + 1, mla_format)
        seq = cache.new_sequence()
        outs = []
        n_pre = len(ids) - 4
        for s in range(0, n_pre, chunk):
            outs.append(model.forward(ids[s:min(s + chunk, n_pre)], seq, cache)[0])
        for i in range(n_pre, len(ids)):
            outs.append(model.forward(ids[i:i + 1], seq, cache)[0])
        return torch.cat(outs).float()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _dispatch._cache.clear()


def run(ctx) -> None:
    from deepseek_v32_plugin.checkpoint import make_state_dict
    from deepseek_v32_plugin.config import preset_config
    from deepseek_v32_plugin.model import ReferenceModel

    backends = [b for b, ok in (("triton", ctx.triton_ok), ("cuda", ctx.cuda_ok)) if ok]
    plans = [("tiny", {"num_nextn_predict_layers": 0}, 36 if ctx.dry else 100, 1 << 30,
              ["bf16"] if ctx.dry else ["bf16", "fp8_ds_mla"])]
    if not ctx.dry:
        plans.append(("real-width", REAL_WIDTH, 2304, 768, ["fp8_ds_mla", "bf16"]))
    if not ctx.cuda_ok:
        ctx.res.add(kind="model", phase="model", op="all presets", backend="cuda", status="skip", reason=ctx.cuda_reason)
    for name, overrides, n_tok, chunk, formats in plans:
        base = "bench" if name == "real-width" else name
        cfg = preset_config(base, **overrides)
        torch.manual_seed(ctx.seed_for("model", name))
        try:
            tensors = make_state_dict(cfg, seed=1, device=ctx.dev, include_mtp=False)
            model = ReferenceModel(cfg, tensors, dtype=torch.float32 if ctx.dry else torch.bfloat16, device=ctx.dev)
            del tensors
        except Exception as e:  # noqa: BLE001
            ctx.res.add(kind="model", phase="model", op=name, backend="-", status="error",
                        reason=f"building the model: {type(e).__name__}: {str(e)[-300:]}")
            continue
        ids = torch.randint(2, cfg.vocab_size, (n_tok,), device=ctx.dev)
        for fmt in formats:
            shape = f"{n_tok} tokens (prefill chunks of {min(chunk, n_tok - 4)} + 4 decode), mla cache {fmt}"
            try:
                ref = _logits(model, ids, "torch", fmt, chunk)
            except Exception as e:  # noqa: BLE001
                ctx.res.add(kind="model", phase="model", op=name, shape=shape, backend="torch", status="error",
                            reason=f"reference run: {type(e).__name__}: {str(e)[-300:]}")
                continue
            for be in backends:
                try:
                    got = _logits(model, ids, be, fmt, chunk)
                    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1).min().item()
                    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
                    ok = cos > 0.98 and agree > 0.9 and bool(torch.isfinite(got).all())
                    ctx.res.add(kind="model", phase="model", op=name, shape=shape, backend=be,
                                path=ctx.triton_path if be == "triton" else "cuda+triton", status="pass" if ok else "fail",
                                err=cos, tol=0.98, agree=agree, metric="min cosine of logits (higher is better)",
                                reason=None if ok else "min cos <= 0.98 or argmax agreement <= 0.9")
                except Exception as e:  # noqa: BLE001
                    ctx.res.add(kind="model", phase="model", op=name, shape=shape, backend=be, status="error",
                                reason=f"{type(e).__name__}: {str(e)[-300:]}")
        del model
        if ctx.dev == "cuda":
            torch.cuda.empty_cache()
