"""Entry module for SGLang's ModelRegistry: "DeepseekV3ForCausalLMNextN", the name SGLang gives every
DeepSeek V3/V3.2 MTP draft. V3.2 configs (index_topk set) get the plugin's draft (engines/sglang/mtp.py);
anything else gets SGLang's own class unchanged (this one subclasses it, so class-level attributes SGLang
reads before construction are SGLang's)."""
from sglang.srt.models.deepseek_nextn import DeepseekV3ForCausalLMNextN as _SGLangNextN


class DeepseekV3ForCausalLMNextN(_SGLangNextN):
    def __new__(cls, config, *args, **kwargs):
        if getattr(config, "index_topk", None) is not None:
            from ..mtp import DeepseekV32NextN
            # not an instance of cls, so Python does not run cls.__init__ on it
            return DeepseekV32NextN(config, *args, **kwargs)
        return super().__new__(cls)


EntryClass = [DeepseekV3ForCausalLMNextN]
