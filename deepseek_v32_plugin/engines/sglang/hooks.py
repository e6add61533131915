"""The SGLang-side registrations behind register(): model, attention backend, server-arg defaults, probes.

Everything SGLang keys on the string "DeepseekV32ForCausalLM" and what we do about it (SGLang 0.5.23):
  - configs/model_config.py is_deepseek_dsa() and the MLA name list -> MLA attention arch and the
    DSATokenToKVPool with an index-key cache: kept, our backend uses that pool.
  - arg_groups/model_overrides/deepseek_v2.py _deepseek_family_overrides -> attention_backend "dsa",
    page_size 64: we append our own override for the arch (last writer wins) that picks our backend.
  - arg_groups/model_hook.py handle_model_specific_adjustments and the passes it runs
    (overrides.py _dsa_kv_cache_dtype_default, _dsa_split_backend_resolution) call
    torch.cuda.get_device_capability() on any non-NPU/XPU platform, which raises on a CPU torch: on a torch
    without CUDA we run that hook with the probe answering (0, 0) (-> bf16 KV cache, as SGLang picks below sm100),
    and after it declare prefill CUDA graphs off while our backend serves V3.2 (it captures decode only).
Speculative decoding (EAGLE/NEXTN with the MTP layer, see mtp.py): our backend is added to the draft-backend
tables of speculative/draft_utils.py; on a torch without CUDA, mem_cache/allocation.get_last_loc (which picks
a Triton kernel by backend name) is routed to its torch twin.
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
    from sglang.srt.arg_groups import choices
    from sglang.srt.layers.attention.attention_registry import register_attention_backend as reg

    from .backend import create_backend

    reg(BACKEND_NAME)(create_backend)
    if BACKEND_NAME not in choices.ATTENTION_BACKEND_CHOICES:
        choices.add_attention_backend_choices([BACKEND_NAME])
    if BACKEND_NAME not in choices.DRAFT_ATTENTION_BACKEND_CHOICES:   # --speculative-draft-attention-backend
        choices.add_draft_attention_backend_choices([BACKEND_NAME])


def _v32_overrides(server_args, hf_config) -> dict:
    """Appended after SGLang's DeepSeek family override: our backend instead of "dsa", 64-token pages.

    Reads the user's own choice from the raw record: platform defaults declared earlier in the resolution
    (e.g. "intel_amx" on CPU) are not a user choice and are replaced too.
    Also the earliest point where SGLang hands us the HF config in the launching process: an unservable
    config or server argument fails here, naming the field, before any scheduler process starts."""
    from ...config import V32Config
    from ...ops import PAGE_SIZE

    cfg = V32Config.from_hf(hf_config)
    out = {"page_size": PAGE_SIZE}
    if _our_backend_chosen(server_args):
        out["attention_backend"] = BACKEND_NAME
        _check_servable_with_our_backend(server_args, cfg)
    return out


def _check_servable_with_our_backend(server_args, cfg) -> None:
    spec = getattr(server_args, "speculative_algorithm", None)
    if spec not in (None, "", "NONE"):
        if not cfg.num_nextn_predict_layers:
            raise ValueError(f"speculative_algorithm={spec}: this V3.2 checkpoint has num_nextn_predict_layers=0, "
                             "no MTP layer to draft with")
        topk = getattr(server_args, "speculative_eagle_topk", None)
        if topk is not None and int(topk) > 1:
            raise ValueError(f"speculative_eagle_topk={topk}: the {BACKEND_NAME} attention backend drafts chains "
                             "only (pass --speculative-eagle-topk 1)")
    from deepseek_v32_plugin.parallel import LayoutError, check_layout, sglang_layout
    g = lambda name: int(getattr(server_args, name, 1) or 1)   # noqa: E731
    # DP attention: --attn-dp-size N, or its deprecated spelling --dp-size N --enable-dp-attention (SGLang turns
    # the latter into the former, arg_groups/parallel_hook.py _handle_deprecated_dp_attention)
    attn_dp, dp = g("attn_dp_size"), g("dp_size")
    if attn_dp == 1 and getattr(server_args, "enable_dp_attention", False):
        attn_dp, dp = dp, 1
    if attn_dp > 1 and spec not in (None, "", "NONE"):
        raise ValueError(f"enable_dp_attention with speculative_algorithm={spec}: the {BACKEND_NAME} attention "
                         "backend serves DP attention without speculative decoding only (untested together)")
    try:   # heads, pipeline stages, FP8 expert blocks per rank (parallel.check_layout)
        lay = (sglang_layout(tp=g("tp_size"), pp=g("pp_size"), dp=attn_dp, ep=g("ep_size"), dp_attention=True)
               if attn_dp > 1 else sglang_layout(tp=g("tp_size"), pp=g("pp_size"), dp=dp, ep=g("ep_size")))
        check_layout(cfg, lay)
    except LayoutError as e:
        raise ValueError(f"deepseek_v32_plugin cannot serve this parallel layout: {e}") from None


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
    """SGLang's EAGLE worker picks draft backends from fixed per-name tables: add ours to them (entries are
    built only when chosen). The decode table (stamps_children=True) wants a multi-step container, the
    draft-extend table a plain backend."""
    from .backend import DSV32MultiStepDraftBackend, create_backend

    runner = factory.draft_model_runner
    if stamps_children:
        make = lambda: (BACKEND_NAME, DSV32MultiStepDraftBackend(runner, factory.topk,  # noqa: E731
                                                                 factory.speculative_num_steps))
    else:
        make = lambda: (BACKEND_NAME, create_backend(runner))  # noqa: E731
    return original(factory, backend_name, dict(backend_map, **{BACKEND_NAME: make}), error_template,
                    stamps_children)


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
    _declare_no_prefill_graphs(server_args)
    return out


def _declare_no_prefill_graphs(server_args) -> None:
    """Our backend captures decode-like batches (decode, draft decode, target verify: see backend.py) but has
    no prefill capture path, and SGLang turns breakable prefill graphs on by default on CUDA. Model overrides
    may not declare graph settings (the publish gate refuses them), so the prefill phase of
    cuda_graph_config is declared off here, in the model-adjustment pass (as SGLang's own model_hook does
    for models that cannot be captured); decode graphs stay as SGLang and the user set them."""
    from sglang.srt.arg_groups.model_override_base import model_config_of, resolving_view
    from sglang.srt.arg_groups.overrides import declare_resolution
    from sglang.srt.connector import ConnectorType
    from sglang.srt.model_executor.cuda_graph_config import Backend, Phase, with_phase
    from sglang.srt.utils.common import parse_connector_type

    view = resolving_view(server_args)
    if parse_connector_type(view.model_path) == ConnectorType.INSTANCE:
        return   # no HF config to key on
    if model_config_of(server_args).hf_config.architectures[0] != ARCH or not _our_backend_chosen(server_args):
        return
    from ...ops.indexer import PAGED_MAX_NEXT_N

    graphs = view.cuda_graph_config
    if graphs.prefill.backend != Backend.DISABLED:
        graphs = with_phase(graphs, Phase.PREFILL, backend=Backend.DISABLED)
    # captured verify / draft-extend batches take the paged indexer, which serves <= PAGED_MAX_NEXT_N rows
    # per request; longer drafts run eagerly (the general plan)
    draft_tokens = getattr(view, "speculative_num_draft_tokens", None)
    if draft_tokens and int(draft_tokens) > PAGED_MAX_NEXT_N and graphs.decode.backend != Backend.DISABLED:
        logger.warning("speculative_num_draft_tokens=%s > %d: the %s backend captures no decode graphs",
                       draft_tokens, PAGED_MAX_NEXT_N, BACKEND_NAME)
        graphs = with_phase(graphs, Phase.DECODE, backend=Backend.DISABLED)
    if graphs is not view.cuda_graph_config:
        declare_resolution(server_args, "deepseek_v32_plugin", cuda_graph_config=graphs)


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


def _around_register_fake_ops(original, *args, **kwargs):
    # CPUGraphRunner gives sgl_kernel's compiled CPU ops fake kernels for torch.compile; our CPU stand-in for
    # sgl_kernel defines no torch ops (our model calls none of them), so there is nothing to register
    import sgl_kernel

    if getattr(sgl_kernel, "DSV32_CPU_STUB", False):
        return None
    return original(*args, **kwargs)


def register_cpu_graph_fixes() -> None:
    """On a torch without CUDA, let SGLang's CPUGraphRunner (--enable-torch-compile) start without sgl_kernel."""
    if torch.cuda.is_available():
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register("sglang.srt.model_executor.cpu_graph_runner.register_fake_ops", _around_register_fake_ops,
                          HookType.AROUND)


def register_model_adjustments_hook() -> None:
    """Around SGLang's model-specific server-argument pass: answer its CUDA capability probes on a torch
    without CUDA, and turn prefill CUDA graphs off when our backend serves V3.2 (decode graphs stay on)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register("sglang.srt.arg_groups.model_hook.handle_model_specific_adjustments",
                          _around_model_adjustments, HookType.AROUND)
