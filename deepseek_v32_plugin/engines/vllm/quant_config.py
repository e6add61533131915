"""FP8 block-quantized DeepSeek-V3.2 checkpoints in vLLM, on every platform (kept light: register()
imports this module in every vLLM process).

`DSV32QuantConfig` ("dsv32_fp8") claims V3.2 `quant_method: fp8` checkpoints through vLLM's
`override_quantization_method` hook, then hands vLLM's layers:
  - routed experts (vLLM's FusedMoE / RoutedExperts): moe_method.DSV32Fp8MoEMethod keeps the checkpoint's
    e4m3 weights + 128x128 `weight_scale_inv` blocks and runs the experts with ops.fp8_moe (our grouped FP8
    GEMM; vLLM's router picks the experts, vLLM's runner adds the shared expert and all-reduces);
  - dense linears: on CUDA, vLLM's own Fp8 linear method (its FP8 GEMMs); elsewhere (CPU: vLLM's FP8 block
    path needs AMX) unquantized -- the model's load_weights dequantizes the FP8 blocks at load time.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.platforms import current_platform

from deepseek_v32_plugin.config import ARCHITECTURE, MTP_ARCHITECTURE

QUANT_NAME = "dsv32_fp8"
_OUR_ARCHS = (ARCHITECTURE, MTP_ARCHITECTURE)


class DSV32QuantConfig(QuantizationConfig):
    """Claims DeepSeek-V3.2 `quant_method: fp8` checkpoints (registered as "dsv32_fp8" by register()),
    so they load on any platform and in any activation dtype (vLLM's Fp8Config refuses fp32 and needs AMX
    on CPU)."""

    def __init__(self, hf_quant_config: Optional[dict] = None):
        super().__init__()
        self.hf_quant_config = dict(hf_quant_config or {})
        self._engine_fp8 = None

    @property
    def engine_fp8_config(self) -> Optional[QuantizationConfig]:
        """vLLM's Fp8Config for dense linears where its block-FP8 GEMMs run (CUDA); None -> dequantized bf16."""
        if self._engine_fp8 is None and self.hf_quant_config and current_platform.is_cuda():
            from vllm.model_executor.layers.quantization.fp8 import Fp8Config
            self._engine_fp8 = Fp8Config.from_config(self.hf_quant_config)
        return self._engine_fp8

    def get_name(self):
        return QUANT_NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "DSV32QuantConfig":
        return cls(config)

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant, hf_config=None):
        archs = getattr(hf_config, "architectures", None) or []
        if (hf_quant_cfg or {}).get("quant_method") == "fp8" and any(a in _OUR_ARCHS for a in archs) \
                and user_quant in (None, "fp8", QUANT_NAME):
            return QUANT_NAME
        return None

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
        from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod

        if isinstance(layer, RoutedExperts):
            from .moe_method import DSV32Fp8MoEMethod
            return DSV32Fp8MoEMethod(layer.moe_config)
        if isinstance(layer, LinearBase):
            if self.engine_fp8_config is not None:
                return self.engine_fp8_config.get_quant_method(layer, prefix)
            return UnquantizedLinearMethod()
        return None


def make_quant_config(vllm_quant_config: Optional[QuantizationConfig]) -> DSV32QuantConfig:
    if isinstance(vllm_quant_config, DSV32QuantConfig):
        return vllm_quant_config
    if vllm_quant_config is None:   # a bf16 checkpoint: experts are FP8-quantized at load
        return DSV32QuantConfig()
    raise ValueError(f"deepseek_v32_plugin: quantization {vllm_quant_config.get_name()!r} is not supported; "
                     f"V3.2 checkpoints use quant_method 'fp8' (128x128 blocks), served as {QUANT_NAME!r}")
