"""What both engine adapters do the same way, without importing either engine: load checkpoint tensors into
an engine's parameters by checkpoint.py's name table, and create the routed experts' FP8 parameters.

The engines differ only in what they pass in: their expert mapping (`(param, checkpoint name, expert id,
shard id)` tuples from vLLM's `fused_moe_make_expert_params_mapping` / SGLang's
`FusedMoE.make_expert_params_mapping`, same shape), their `default_weight_loader` and `set_weight_attrs`, which
dense linears keep FP8 (vLLM's Fp8 linear method on CUDA; otherwise dequantized at load), and the dtype
dequantized weights are produced in.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn

from ..checkpoint import EXPERTS, STACKED_PARAMS, pair_fp8, scale_inv_name
from ..ops.fp8_quant import FP8_DTYPE, GROUP, fp8_dequant_weight, fp8_quant_weight


def load_v32_weights(params: dict, weights: Iterable, *, expert_map, default_loader: Callable,
                     dequant_dtype: torch.dtype, keeps_fp8: Callable[[str], bool] = lambda param: False,
                     rename: Optional[Callable[[str], Optional[str]]] = None) -> set:
    """Load (checkpoint name, tensor) pairs into `params` ({name: parameter}) -> the set of loaded parameter
    names. `rename(name)` maps a checkpoint name to a parameter name (None: skip the tensor). FP8 weights are
    paired with their `weight_scale_inv` (checkpoint.pair_fp8); routed experts go through `expert_map` with
    their scales (a bf16 expert is FP8-quantized first); `gate_proj`/`up_proj` load into the fused
    `gate_up_proj` (checkpoint.STACKED_PARAMS); other FP8 linears are dequantized unless `keeps_fp8(param)`,
    in which case their scale loads into `<param>_scale_inv`."""
    loaded: set = set()

    def put(target: str, tensor: torch.Tensor, *args, **kwargs) -> None:
        p = params[target]
        getattr(p, "weight_loader", default_loader)(p, tensor, *args, **kwargs)
        loaded.add(target)

    if rename is not None:
        weights = ((new, w) for new, w in ((rename(n), w) for n, w in weights) if new is not None)
    for name, w, scale in pair_fp8(weights):
        if "rotary_emb.inv_freq" in name:
            continue
        if EXPERTS in name:
            if scale is None and w.dtype != FP8_DTYPE and w.dim() == 2:   # a bf16 checkpoint: quantize at load
                w, scale = fp8_quant_weight(w.float())
            for item, tensor in ((name, w), (scale_inv_name(name), scale)):
                if tensor is None:
                    continue
                for param_name, weight_name, expert_id, shard_id in expert_map:
                    if weight_name in item:
                        target = item.replace(weight_name, param_name)
                        put(target, tensor, target, shard_id=shard_id, expert_id=expert_id)
                        break
                else:
                    raise ValueError(f"deepseek_v32_plugin: no expert parameter for checkpoint tensor {item!r}")
            continue
        target, shard = name, ()
        for param_name, shard_name, shard_id in STACKED_PARAMS:
            if f".{shard_name}." in name:
                target, shard = name.replace(shard_name, param_name), (shard_id,)
                break
        if target not in params:
            raise ValueError(f"deepseek_v32_plugin: checkpoint tensor {name!r} has no parameter in the model")
        keep = scale is not None and keeps_fp8(target)
        if scale is not None and not keep:
            w = fp8_dequant_weight(w, scale.float(), out_dtype=dequant_dtype, name=name)
        put(target, w, *shard)
        if keep:
            put(scale_inv_name(target), scale, *shard)
    return loaded


def create_fp8_moe_weights(layer: nn.Module, num_experts: int, hidden_size: int, intermediate_size: int,
                           weight_attrs: dict, block_quant_method: str, set_weight_attrs: Callable) -> None:
    """The routed experts' parameters as the checkpoint stores them (ops.fp8_moe's layout):
    w13_weight [E, 2I, D] / w2_weight [E, D, I] e4m3, w13_weight_scale_inv [E, 2I/128, D/128] /
    w2_weight_scale_inv [E, D/128, I/128] fp32; I = intermediate size per rank. The scales carry
    `quant_method=block_quant_method` so the engine's expert loader copies 128x128 blocks."""
    i, h = intermediate_size, hidden_size
    if i % GROUP or h % GROUP:
        raise ValueError(f"deepseek_v32_plugin FP8 experts: moe_intermediate_size per rank ({i}) and "
                         f"hidden_size ({h}) must be multiples of the FP8 block {GROUP}")
    scale_attrs = dict(weight_attrs, quant_method=block_quant_method)
    for name, shape, dtype, attrs in (
            ("w13_weight", (num_experts, 2 * i, h), FP8_DTYPE, weight_attrs),
            ("w2_weight", (num_experts, h, i), FP8_DTYPE, weight_attrs),
            ("w13_weight_scale_inv", (num_experts, 2 * i // GROUP, h // GROUP), torch.float32, scale_attrs),
            ("w2_weight_scale_inv", (num_experts, h // GROUP, i // GROUP), torch.float32, scale_attrs)):
        p = nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)
        layer.register_parameter(name, p)
        set_weight_attrs(p, attrs)
