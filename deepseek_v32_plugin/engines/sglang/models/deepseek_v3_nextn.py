"""Entry module for SGLang's ModelRegistry: "DeepseekV3ForCausalLMNextN", the name SGLang gives every
DeepSeek V3/V3.2 MTP draft. V3.2 configs (index_topk set) get the plugin's draft (engines/sglang/mtp.py);
anything else gets SGLang's own class unchanged (this one subclasses it).

SGLang's loader asks the registered *class* about its layout before building it
(layers/moe/utils.resolve_shared_experts_config: shared-expert fusion into the routed-expert top-k), so the
class-level hooks inherited from SGLang must answer for V3.2 configs as our draft needs: no fusion (our MoE
runs the shared expert itself)."""
from sglang.srt.models.deepseek_nextn import DeepseekV3ForCausalLMNextN as _SGLangNextN


def _is_v32(config) -> bool:
    return getattr(config, "index_topk", None) is not None


class DeepseekV3ForCausalLMNextN(_SGLangNextN):
    def __new__(cls, config, *args, **kwargs):
        if _is_v32(config):
            from ..mtp import DeepseekV32NextN
            # not an instance of cls, so Python does not run cls.__init__ on it
            return DeepseekV32NextN(config, *args, **kwargs)
        return super().__new__(cls)

    @classmethod
    def shared_experts_fusion_disable_reason(cls, hf_config, quant_config):
        if _is_v32(hf_config):
            return "deepseek_v32_plugin's V3.2 draft runs its shared expert beside the routed FP8 experts."
        return super().shared_experts_fusion_disable_reason(hf_config, quant_config)


EntryClass = [DeepseekV3ForCausalLMNextN]
