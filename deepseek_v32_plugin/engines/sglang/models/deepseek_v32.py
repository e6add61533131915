"""Entry module for SGLang's ModelRegistry: the plugin's DeepseekV32ForCausalLM."""
from ..model import DeepseekV32ForCausalLM

EntryClass = [DeepseekV32ForCausalLM]
