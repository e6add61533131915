"""SGLang adapter for DeepSeek-V3.2 (entry point group ``sglang.srt.plugins`` -> ``register``).

SGLang calls ``register()`` through ``load_plugins()`` in every process it starts (engine/server, scheduler
and TP workers, detokenizer), before it builds ServerArgs. It:
  1. applies the CPU shims when torch is a CPU build (a no-op on GPU installs; see cpu_shims.py);
  2. registers our ``DeepseekV32ForCausalLM`` over SGLang's built-in one (``ModelRegistry.register(...,
     overwrite=True)``), unless ``DSV32_SGLANG_BUILTIN=1`` hands the architecture back to SGLang;
  3. registers our attention backend ``dsv32_sparse`` and makes it the default for this architecture
     (SGLang would force its "dsa" backend, which needs Hopper/Blackwell kernels);
  4. around SGLang's model-specific server-argument pass: on a torch without CUDA answers its CUDA
     capability probes (torch.cuda.get_device_capability, called unconditionally) with (0, 0), and turns
     prefill CUDA graphs off while our backend serves V3.2 (it captures decode-like batches only);
  5. fills the gaps of SGLang's EAGLE path for our backend and for CPU (hooks.py, cpu_spec_ops.py), and
     lets SGLang's CPUGraphRunner start without sgl_kernel's compiled CPU ops.
SGLang itself keeps choosing, from the architecture name, the MLA attention arch, 64-token pages and its
``DSATokenToKVPool`` (latent cache + index-key cache), which our backend uses as they are.
"""
from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

from ...config import ARCHITECTURE as ARCH

BUILTIN_ENV = "DSV32_SGLANG_BUILTIN"
_REGISTERED = False


def plugin_active() -> bool:
    return os.environ.get(BUILTIN_ENV, "0") != "1"


def register() -> None:
    global _REGISTERED
    from . import cpu_shims

    cpu_shims.install()
    if _REGISTERED:
        return
    _REGISTERED = True
    if not plugin_active():
        logger.info("%s=1: leaving %s to SGLang's built-in implementation", BUILTIN_ENV, ARCH)
        return
    from . import hooks

    hooks.register_model()
    hooks.register_attention_backend()
    hooks.register_server_arg_overrides()
    hooks.register_model_adjustments_hook()
    hooks.register_draft_backend_hook()
    hooks.register_cpu_speculative_fixes()
    hooks.register_cpu_graph_fixes()
