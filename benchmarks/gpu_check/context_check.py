"""Phase (e) `context`: the decode step of the engine-neutral model against context, DSA on our kernels vs dense
MLA on the same weights and cache (benchmarks/context_curve/decode.py), to 128K on a GPU.

GPU: the `real-width` preset (128 heads, kv_lora 512, indexer 64 x 128, index_topk 2048, hidden 1024, 2 dense
layers, 187 M parameters generated on the GPU), bf16 latent cache, default op dispatch (CUDA extension ->
Triton), contexts 2K..128K, the caches filled directly with the cache-write ops; eager steps timed with a
device sync (host launch overhead included: no CUDA graph yet). Dense = absorbed MLA over every key with
torch bf16 matmuls. Check row: ours' logits vs dense's at a context <= index_topk (DSA == dense there): min
cosine > 0.999. Each time row carries the work model's MACs / bytes (benchmarks/work_model.py decode_work)
and its roofline ratio ours / dense with the ceilings phase (d) measured, when it ran.
Dry run (CPU): the `tiny` preset (index_topk 32), contexts 16 and 96, the PyTorch references, 3 repetitions.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
GPU_CONTEXTS = (2048, 8192, 32768, 65536, 131072)
DRY_CONTEXTS = (16, 96)


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod      # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)
    return mod


def run(ctx) -> None:
    from deepseek_v32_plugin.checkpoint import make_state_dict
    from deepseek_v32_plugin.config import preset_config
    from deepseek_v32_plugin.model import ReferenceModel
    decode = _load("context_curve_decode", os.path.join(BENCH, "context_curve", "decode.py"))
    wm = _load("context_curve_work_model", os.path.join(BENCH, "work_model.py"))

    name, contexts, reps = ("tiny", DRY_CONTEXTS, 3) if ctx.dry else ("real-width", GPU_CONTEXTS, 20)
    cfg = preset_config(name, num_nextn_predict_layers=0)
    torch.manual_seed(ctx.seed_for("context", name))
    model = ReferenceModel(cfg, make_state_dict(cfg, seed=1, device=ctx.dev, include_mtp=False),
                           dtype=torch.bfloat16, device=ctx.dev)
    bench = decode.DecodeBench(model, max(contexts) + 1, seed=ctx.seed_for("context-cache", name))
    path = "torch" if ctx.dry else "default dispatch (cuda -> triton)"
    c_eq = min(cfg.index_topk, min(contexts))
    cos = decode.agree(bench, c_eq)
    ok = cos > 0.999
    ctx.res.add(kind="context", phase="context", op=f"{name} decode ours vs dense logits", shape=f"context {c_eq}",
                backend="ours", path=path, status="pass" if ok else "fail", err=cos, tol=0.999,
                metric="min cosine (higher is better)", reason=None if ok else "DSA != dense where every key is selected")
    from results import load
    ceil = {r["op"]: r.get("value") for r in load(ctx.res.path) if r.get("kind") == "ceiling"}
    flops = (ceil.get("bf16 matmul") or 0) * 1e12
    bw = (ceil.get("copy bandwidth (read+write)") or 0) * 1e9
    for c in contexts:
        ms = {}
        for variant in ("dense", "ours"):
            try:
                ms[variant] = decode.summary(decode.time_steps(bench, c, variant, reps, warmup=2))
            except Exception as e:  # noqa: BLE001
                ctx.res.add(kind="context", phase="context", op=f"{name} decode step", shape=f"context {c}",
                            backend=variant, path=path, status="error", reason=f"{type(e).__name__}: {str(e)[-300:]}")
        if len(ms) < 2:
            continue
        wo, wd = wm.decode_work(cfg, c, "ours"), wm.decode_work(cfg, c, "dense")
        pred = wo.seconds(flops, bw) / wd.seconds(flops, bw) if flops and bw else None
        for variant, w in (("dense", wd), ("ours", wo)):
            s = ms[variant]
            ctx.res.add(kind="context", phase="context", op=f"{name} decode step", shape=f"context {c}",
                        backend=variant, path=path, status="info", ms=s["median"], ms_q1=s["q1"], ms_q3=s["q3"],
                        reps=s["n"], macs=w.macs, bytes=w.bytes,
                        ratio=ms["ours"]["median"] / ms["dense"]["median"] if variant == "ours" else None,
                        pred=pred if variant == "ours" else None)
    del bench, model
    if ctx.dev == "cuda":
        torch.cuda.empty_cache()
