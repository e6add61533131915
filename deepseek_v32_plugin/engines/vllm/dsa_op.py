"""The per-layer DSA step (indexer top-k + sparse MLA, model/dsa.py) as one torch custom op,
`torch.ops.dsv32_vllm.dsa_attention`, in the shape of vLLM's own attention ops (unified_mla_attention_with_output):
it takes the layer's name, reads the step's plan (attention metadata) and the caches from vLLM's forward
context, and writes its output into `out`. So:
  - dynamo traces the model around it (the plan holds host-side structure that must not be traced);
  - mixed batches (prefill chunks with decodes) run it eagerly, with that batch's host-side plan, between
    captured parts: vLLM 0.32 serves DeepseekV32ForCausalLM with "breakable" CUDA graphs by default
    (config/vllm.py DEFAULT_BREAKABLE_CUDAGRAPH_ARCHITECTURES; compilation mode NONE), whose capture
    breaks at ops wrapped by eager_break_during_capture, as this one is; with VLLM_USE_BREAKABLE_CUDAGRAPH=0
    vLLM compiles the model (support_torch_compile) and this op is a splitting op of its piecewise graphs
    (checks.add_splitting_op, from the config hook);
  - in a FULL CUDA graph (uniform decode / MTP-verify batches) it is captured with the rest of the step,
    reading the builder's persistent buffers (backend.py, DSV32MetadataBuilder.graph_plan).
"""
from __future__ import annotations

import torch

from vllm.compilation.breakable_cudagraph import eager_break_during_capture
from vllm.forward_context import get_forward_context

from deepseek_v32_plugin.model import dsa

from .checks import DSA_OP as OP_NAME


def step_plan(layer_name: str):
    """This step's DSAPlan for a cache layer (None: profiling / dummy runs without metadata)."""
    md = get_forward_context().attn_metadata
    if md is None:
        return None
    if isinstance(md, list):
        md = md[0]
    return md.get(layer_name)


@torch.library.custom_op(OP_NAME, mutates_args=("out",))
@eager_break_during_capture   # a no-op unless vLLM enabled breakable CUDA graphs (decided before model import)
def dsa_attention(q576: torch.Tensor, kv_c: torch.Tensor, k_pe: torch.Tensor, k: torch.Tensor,
                  qr: torch.Tensor, x: torch.Tensor, positions: torch.Tensor, out: torch.Tensor, latent_layer: str,
                  index_layer: str, topk: int, scale: float) -> None:
    """Rows [0, plan.num_tokens) of [T, ...] inputs (rows after them are padding): write the new index keys and
    latent rows into the layers' caches, select top-k slots, attend -> out[:num_tokens] [., h, kv_lora].
    The indexer's queries (wq_b(qr), rope, FP8, head weights from x) are computed here, and only when the plan
    scores rows (plan.needs_scores, a host bool; captured graph plans always score): below index_topk a step
    spends nothing on them (model.py Indexer.query)."""
    md = step_plan(latent_layer)
    if md is None:
        return
    layers = get_forward_context().no_compile_layers
    t = md.num_tokens
    q_fp8 = weights = None
    if md.needs_scores:
        q_fp8, weights = layers[index_layer].query(qr[:t], x[:t], positions[:t])
    slots = dsa.select(md, k[:t], q_fp8, weights, layers[index_layer].kv_cache, topk)
    res = dsa.attend(md, q576[:t], kv_c[:t], k_pe[:t], layers[latent_layer].kv_cache, slots, scale, out.shape[-1])
    out[:t] = res.to(out.dtype)


@dsa_attention.register_fake
def _(q576, kv_c, k_pe, k, qr, x, positions, out, latent_layer, index_layer, topk, scale):
    return None
