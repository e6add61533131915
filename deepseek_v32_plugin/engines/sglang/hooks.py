"""The SGLang-side registrations behind register(): model, attention backend, server-arg defaults, probes.

Everything SGLang keys on the string "DeepseekV32ForCausalLM" and what we do about it (SGLang 0.5.23):
  - configs/model_config.py is_deepseek_dsa() and the MLA name list -> MLA attention arch and the
    DSATokenToKVPool with an index-key cache: kept, our backend uses that pool.
  - arg_groups/model_overrides/deepseek_v2.py _deepseek_family_overrides -> attention_backend "dsa",
    page_size 64: we append our own override for the arch (last writer wins) that picks our backend.
  - arg_groups/model_hook.py handle_model_specific_adjustments and the passes it runs
    (overrides.py _dsa_kv_cache_dtype_default, _dsa_split_backend_resolution) call
    torch.cuda.get_device_capability() on any non-NPU/XPU platform, which raises on a CPU torch: on a torch
    without CUDA we run that hook with the probe answering (0, 0) (-> bf16 KV cache, as SGLang picks below sm100).
"""
from __future__ import annotations

import contextlib
import logging

import torch

from . import ARCH
from .backend import BACKEND_NAME

logger = logging.getLogger(__name__)

MODELS_PACKAGE = "deepseek_v32_plugin.engines.sglang.models"


def register_model() -> None:
    from sglang.srt.models.registry import ModelRegistry

    ModelRegistry.register(MODELS_PACKAGE, overwrite=True, strict=True)


def register_attention_backend() -> None:
    from sglang.srt.arg_groups.choices import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices
    from sglang.srt.layers.attention.attention_registry import register_attention_backend as reg

    from .backend import create_backend

    reg(BACKEND_NAME)(create_backend)
    if BACKEND_NAME not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([BACKEND_NAME])


def _v32_overrides(server_args, hf_config) -> dict:
    """Appended after SGLang's DeepSeek family override: our backend instead of "dsa", 64-token pages.

    Reads the user's own choice from the raw record: platform defaults declared earlier in the resolution
    (e.g. "intel_amx" on CPU) are not a user choice and are replaced too.
    Also the earliest point where SGLang hands us the HF config in the launching process: an unservable
    config fails here, naming the field, before any scheduler process starts."""
    from .model import v32_config

    v32_config(hf_config).validate()
    out = {"page_size": 64}
    if _our_backend_chosen(server_args):
        out["attention_backend"] = BACKEND_NAME
    return out


def _our_backend_chosen(server_args) -> bool:
    """True unless the user picked another (non-DSA) attention backend."""
    user = [getattr(server_args, f, None) for f in
            ("attention_backend", "prefill_attention_backend", "decode_attention_backend")]
    return all(b in (None, "dsa", "nsa", BACKEND_NAME) for b in user)


def register_server_arg_overrides() -> None:
    import sglang.srt.arg_groups.overrides  # noqa: F401  (registers SGLang's own overrides first)
    from sglang.srt.arg_groups.model_override_base import register_model_override

    register_model_override(ARCH)(_v32_overrides)


def _around_draft_backend(original, factory, backend_name, backend_map, error_template, stamps_children=False):
    """SGLang's EAGLE worker picks draft backends from fixed per-name tables: add ours to them. The decode
    table (stamps_children=True) wants a multi-step container, the draft-extend table a plain backend."""
    from sglang.srt.runtime_context import attention_backends

    from .backend import DSV32MultiStepDraftBackend, create_backend

    prefill, decode = attention_backends()
    chosen = factory.draft_attn_backend or (decode if backend_name == "decode_attention_backend" else prefill)
    if chosen == BACKEND_NAME:
        runner = factory.draft_model_runner
        if stamps_children:
            make = lambda: (BACKEND_NAME, DSV32MultiStepDraftBackend(runner, factory.topk,  # noqa: E731
                                                                     factory.speculative_num_steps))
        else:
            make = lambda: (BACKEND_NAME, create_backend(runner))  # noqa: E731
        backend_map = dict(backend_map, **{BACKEND_NAME: make})
    return original(factory, backend_name, backend_map, error_template, stamps_children)


def register_draft_backend_hook() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register("sglang.srt.speculative.draft_utils.DraftBackendFactory._create_backend",
                          _around_draft_backend, HookType.AROUND)


@contextlib.contextmanager
def _cpu_capability_probe():
    orig = torch.cuda.get_device_capability

    def probe(device=None):
        return (0, 0)

    torch.cuda.get_device_capability = probe
    try:
        yield
    finally:
        torch.cuda.get_device_capability = orig


def _around_model_adjustments(original, server_args, *args, **kwargs):
    if torch.cuda.is_available():
        out = original(server_args, *args, **kwargs)
    else:
        with _cpu_capability_probe():
            out = original(server_args, *args, **kwargs)
    _declare_no_cuda_graphs(server_args)
    return out


def _declare_no_cuda_graphs(server_args) -> None:
    """Our backend has no CUDA-graph capture path yet, and SGLang captures by default on a GPU (model
    overrides may not declare disable_cuda_graph, so it is declared here, in the model-adjustment pass)."""
    from sglang.srt.arg_groups.overrides import declare_resolution, model_config_of

    try:
        arch = model_config_of(server_args).hf_config.architectures[0]
    except Exception:   # no HF config to key on (e.g. an instance connector): not ours to adjust
        return
    if arch == ARCH and _our_backend_chosen(server_args):
        declare_resolution(server_args, "deepseek_v32_plugin", disable_cuda_graph=True)


def _around_get_last_loc(original, req_to_token, req_pool_indices, prefix_lens):
    # SGLang picks its Triton kernel here by backend name alone; without a Triton driver use its torch twin
    from sglang.srt.mem_cache import allocation

    return allocation.get_last_loc_torch(req_to_token, req_pool_indices, prefix_lens)


def register_cpu_speculative_fixes() -> None:
    """On a torch without CUDA, route the Triton-only helpers of SGLang's EAGLE path to their torch versions."""
    if torch.cuda.is_available():
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register("sglang.srt.mem_cache.allocation.get_last_loc", _around_get_last_loc, HookType.AROUND)


def register_model_adjustments_hook() -> None:
    """Around SGLang's model-specific server-argument pass: answer its CUDA capability probes on a torch
    without CUDA, and turn CUDA graphs off when our backend serves V3.2."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register("sglang.srt.arg_groups.model_hook.handle_model_specific_adjustments",
                          _around_model_adjustments, HookType.AROUND)
