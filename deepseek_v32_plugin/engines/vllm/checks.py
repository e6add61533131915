"""Engine-start checks for the vLLM adapter (light: no vLLM model code, no kernels imported).

One clear error naming the field for anything our backend cannot serve, raised when vLLM builds its config
(register() wraps vLLM's per-architecture config hook) or builds the model. The HF config itself is
converted and validated by V32Config.from_hf."""
from __future__ import annotations

from deepseek_v32_plugin.config import V32Config
from deepseek_v32_plugin.parallel import LayoutError, check_layout, vllm_layout
from deepseek_v32_plugin.ops import PAGE_SIZE

FP8_CACHE_DTYPES = ("fp8", "fp8_e4m3", "fp8_ds_mla")
BF16_CACHE_DTYPES = ("auto", "bfloat16")


def is_supported(index_topk: int, block_size: int = PAGE_SIZE) -> tuple[bool, str]:
    """Whether our sparse-MLA backend can serve this: (ok, reason)."""
    if block_size != PAGE_SIZE:
        return False, (f"block_size={block_size}: the latent and indexer caches use {PAGE_SIZE}-token pages "
                       f"(FlashMLA / DeepGEMM layout); pass --block-size {PAGE_SIZE} or leave it unset")
    if not isinstance(index_topk, int) or index_topk <= 0:
        return False, f"index_topk={index_topk!r} must be a positive int"
    return True, ""


def check_servable(cfg: V32Config, vllm_config) -> None:
    cc = vllm_config.cache_config
    block = cc.block_size if getattr(cc, "user_specified_block_size", False) else PAGE_SIZE
    ok, why = is_supported(cfg.index_topk, block)
    if not ok:
        raise ValueError(f"deepseek_v32_plugin cannot serve this model: {why}")
    if cc.cache_dtype not in FP8_CACHE_DTYPES + BF16_CACHE_DTYPES:
        raise ValueError(f"deepseek_v32_plugin: kv_cache_dtype={cc.cache_dtype!r} is not served; use 'auto' / "
                         f"'bfloat16' (576 x bf16 latent rows) or 'fp8_ds_mla' (656 B rows)")
    pc = vllm_config.parallel_config
    try:   # the parallel layout: heads, pipeline stages, FP8 expert blocks per rank (parallel.check_layout)
        check_layout(cfg, vllm_layout(tp=pc.tensor_parallel_size, pp=pc.pipeline_parallel_size,
                                      dp=pc.data_parallel_size, ep=bool(pc.enable_expert_parallel)))
    except LayoutError as e:
        raise ValueError(f"deepseek_v32_plugin cannot serve this parallel layout: {e}") from None


# The DSA step's torch custom op (dsa_op.py); named here so the config hook needs no model code.
DSA_OP = "dsv32_vllm::dsa_attention"


def add_splitting_op(vllm_config) -> None:
    """Make our DSA op a splitting op of vLLM's piecewise compilation, like vLLM's own attention ops: mixed
    batches (prefill chunks, decodes) run it eagerly with their host-side plan; only uniform batches have a
    plan a full CUDA graph can replay (backend.py). Runs from the model config hook, before vLLM fills its
    default list (VllmConfig.__post_init__ -> CompilationConfig.set_splitting_ops_for_v1): we extend the
    attention-op list that default is made from, so vLLM's own additions to it still happen."""
    from vllm.config import CompilationMode

    cc = vllm_config.compilation_config
    if cc.mode not in (None, CompilationMode.VLLM_COMPILE):   # None: vLLM picks its default mode later
        return
    if cc.splitting_ops is not None:   # the user's list
        if DSA_OP not in cc.splitting_ops:
            cc.splitting_ops.append(DSA_OP)
    elif DSA_OP not in cc._attention_ops:   # an instance attribute over the class-level list
        object.__setattr__(cc, "_attention_ops", [*type(cc)._attention_ops, DSA_OP])
