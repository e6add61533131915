"""Routed experts of vLLM's FusedMoE computed by deepseek_v32_plugin.ops.fp8_moe (see quant_config.py)."""
from __future__ import annotations

import torch

from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
from vllm.model_executor.layers.fused_moe.routed_experts import FusedMoeWeightScaleSupported
from vllm.model_executor.utils import set_weight_attrs

from deepseek_v32_plugin.engines.common import create_fp8_moe_weights
from deepseek_v32_plugin.ops import custom_ops


class DSV32Fp8MoEMethod(FusedMoEMethodBase):
    """Routed experts as e4m3 weights + fp32 128x128 block scales, computed by ops.fp8_moe."""

    def create_weights(self, layer, num_experts: int, hidden_size: int, intermediate_size_per_partition: int,
                       params_dtype: torch.dtype, **extra_weight_attrs):
        create_fp8_moe_weights(layer, num_experts, hidden_size, intermediate_size_per_partition, extra_weight_attrs,
                               FusedMoeWeightScaleSupported.BLOCK.value, set_weight_attrs)

    def get_fused_moe_quant_config(self, layer):
        return None

    def apply(self, layer, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
              shared_experts=None, shared_experts_input=None) -> torch.Tensor:
        ids = topk_ids
        expert_map = getattr(layer, "expert_map", None)
        if expert_map is not None:   # expert parallel: global -> local ids, -1 for other ranks' experts
            ids = expert_map[topk_ids.long()]
        return custom_ops.fp8_moe_experts(x, layer.w13_weight, layer.w13_weight_scale_inv, layer.w2_weight,
                                          layer.w2_weight_scale_inv, topk_weights.float(), ids.int())
