"""Routed experts of vLLM's FusedMoE computed by deepseek_v32_plugin.ops.fp8_moe (see quant_config.py)."""
from __future__ import annotations

import torch

from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
from vllm.model_executor.layers.fused_moe.routed_experts import FusedMoeWeightScaleSupported
from vllm.model_executor.utils import set_weight_attrs

from deepseek_v32_plugin.ops import fp8_moe
from deepseek_v32_plugin.ops.fp8_quant import FP8_DTYPE, GROUP


class DSV32Fp8MoEMethod(FusedMoEMethodBase):
    """Routed experts as e4m3 weights + fp32 128x128 block scales, computed by ops.fp8_moe."""

    def create_weights(self, layer, num_experts: int, hidden_size: int, intermediate_size_per_partition: int,
                       params_dtype: torch.dtype, **extra_weight_attrs):
        i = intermediate_size_per_partition
        if i % GROUP or hidden_size % GROUP:
            raise ValueError(f"deepseek_v32_plugin FP8 experts: moe_intermediate_size per rank ({i}) and "
                             f"hidden_size ({hidden_size}) must be multiples of {GROUP}")

        def param(shape, dtype):
            p = torch.nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)
            set_weight_attrs(p, extra_weight_attrs)
            return p

        layer.register_parameter("w13_weight", param((num_experts, 2 * i, hidden_size), FP8_DTYPE))
        layer.register_parameter("w2_weight", param((num_experts, hidden_size, i), FP8_DTYPE))
        layer.register_parameter("w13_weight_scale_inv",
                                 param((num_experts, 2 * i // GROUP, hidden_size // GROUP), torch.float32))
        layer.register_parameter("w2_weight_scale_inv",
                                 param((num_experts, hidden_size // GROUP, i // GROUP), torch.float32))
        for name in ("w13_weight_scale_inv", "w2_weight_scale_inv"):
            set_weight_attrs(getattr(layer, name), {"quant_method": FusedMoeWeightScaleSupported.BLOCK.value})

    def get_fused_moe_quant_config(self, layer):
        return None

    def apply(self, layer, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
              shared_experts=None, shared_experts_input=None) -> torch.Tensor:
        ids = topk_ids
        expert_map = getattr(layer, "expert_map", None)
        if expert_map is not None:   # expert parallel: global -> local ids, -1 for other ranks' experts
            ids = expert_map[topk_ids.long()]
        return fp8_moe.fp8_moe_experts(x, layer.w13_weight, layer.w13_weight_scale_inv, layer.w2_weight,
                                       layer.w2_weight_scale_inv, topk_weights.float(), ids.int())
