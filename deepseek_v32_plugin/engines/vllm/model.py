"""DeepSeek-V3.2 for vLLM, built from vLLM's own layers (parallel linears / embedding / norms / FusedMoE),
with our lightning indexer and sparse-MLA backend (backend.py) and FP8 experts (quant.py).

Module names follow the checkpoint (`prefix=` = checkpoint key), so an unchanged HF V3.2 directory loads:
  model.embed_tokens, model.layers.{i}.{input_layernorm, post_attention_layernorm,
  self_attn.{q_a_proj, q_a_layernorm, q_b_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj,
             indexer.{wq_b, wk, k_norm, weights_proj}},
  mlp.{gate_up_proj (<- gate_proj, up_proj), down_proj} | mlp.{gate, shared_experts, experts}}, model.norm,
  lm_head. The MTP layer (model.layers.{num_hidden_layers}) belongs to mtp.py.
Tensor parallelism: attention heads are split (q_b_proj / kv_b_proj column-parallel, o_proj row-parallel);
the latent and indexer caches and the indexer are replicated per rank (one latent row per token, MQA).
Pipeline parallelism (SupportsPP): each stage builds its layers (vLLM's make_layers: PPMissingLayer elsewhere),
the embedding on the first stage, the final norm and lm_head on the last; the hidden states cross stages as
IntermediateTensors({"hidden_states"}) (no separate residual: our layers add theirs in place).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

import torch
from torch import nn

from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig, get_current_vllm_config
from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size
from vllm.forward_context import get_forward_context
from vllm.logger import init_logger
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
from vllm.model_executor.layers.fused_moe import FusedMoEFactory, GateLinear, fused_moe_make_expert_params_mapping
from vllm.model_executor.layers.layernorm import LayerNorm, RMSNorm
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
    UnquantizedLinearMethod,
)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsPP
from vllm.model_executor.models.utils import (PPMissingLayer, is_pp_missing_parameter,
                                              make_empty_intermediate_tensors_factory, make_layers)
from vllm.platforms import current_platform
from vllm.sequence import IntermediateTensors
from vllm.v1.kv_cache_interface import MLAAttentionSpec, SparseCacheRole

from deepseek_v32_plugin.checkpoint import MLP_PROJS, mtp_prefixes
from deepseek_v32_plugin.config import ARCHITECTURE, V32Config
from deepseek_v32_plugin.engines import common
from deepseek_v32_plugin.model import dsa
from deepseek_v32_plugin.host_sync import SYNC_CHECK, decode_step_guard
from deepseek_v32_plugin.model import mla
from deepseek_v32_plugin.model.indexer import indexer_keys, indexer_queries
from deepseek_v32_plugin.model.rope import YarnRope
from deepseek_v32_plugin.ops import PAGE_SIZE, custom_ops
from deepseek_v32_plugin.ops.indexer import BYTES_PER_TOKEN
from deepseek_v32_plugin.ops.sparse_mla import FP8_BYTES, HEAD_576

from . import dsa_op  # noqa: F401  (registers torch.ops.dsv32_vllm.dsa_attention)
from .backend import DSV32IndexerBackend, DSV32SparseMLABackend
from .checks import BF16_CACHE_DTYPES, FP8_CACHE_DTYPES, is_supported
from .quant_config import make_quant_config

logger = init_logger("vllm.plugins.deepseek_v32")   # under "vllm": printed by vLLM's handler

class CacheLayer(nn.Module, AttentionLayerBase):
    """A paged cache vLLM's KV-cache manager allocates (its own spec) in the same block table as the
    other cache of the layer; `kv_cache` is bound to [num_pages, PAGE_SIZE, bytes-or-width]."""
    # Read by vLLM's model runner v2 on every cache layer (v1/worker/gpu/attn_utils.py); vLLM 0.34 declares
    # both on AttentionLayerBase, 0.32 only the first. The speculator sets is_draft_layer on the MTP's layers.
    is_draft_layer: bool = False
    kv_sharing_target_layer_name: Optional[str] = None   # each layer owns its cache

    def __init__(self, prefix: str, head_size: int, dtype: torch.dtype, backend, role: SparseCacheRole,
                 cache_dtype_str: Optional[str] = None):
        super().__init__()
        self.layer_name, self.head_size, self.dtype = prefix, head_size, dtype
        self.backend, self.role, self.cache_dtype_str = backend, role, cache_dtype_str
        self.kv_cache = torch.tensor([])
        ctx = get_current_vllm_config().compilation_config.static_forward_context
        if prefix in ctx:
            raise ValueError(f"Duplicate layer name: {prefix}")
        ctx[prefix] = self

    def get_kv_cache_spec(self, vllm_config: VllmConfig):
        return MLAAttentionSpec(block_size=PAGE_SIZE, num_kv_heads=1, max_tp_shards=1, head_size=self.head_size,
                                dtype=self.dtype, cache_role=self.role, cache_dtype_str=self.cache_dtype_str)

    def bind_kv_cache(self, kv_cache: torch.Tensor) -> None:
        self.kv_cache = kv_cache.squeeze(1)   # [pages, 1, PAGE, C] -> [pages, PAGE, C]

    def get_attn_backend(self):
        return self.backend

    def forward(self):  # storage only; the attention module reads self.kv_cache
        raise RuntimeError("CacheLayer is storage only")


class Indexer(nn.Module):
    def __init__(self, cfg: V32Config, cache_config, prefix: str):
        super().__init__()
        self.cfg = cfg
        self.wq_b = ReplicatedLinear(cfg.q_lora_rank, cfg.index_n_heads * cfg.index_head_dim, bias=False,
                                     quant_config=None, prefix=f"{prefix}.wq_b")
        self.wk = ReplicatedLinear(cfg.hidden_size, cfg.index_head_dim, bias=False, quant_config=None,
                                   prefix=f"{prefix}.wk")
        self.k_norm = LayerNorm(cfg.index_head_dim, eps=1e-6, dtype=torch.float32)
        self.weights_proj = ReplicatedLinear(cfg.hidden_size, cfg.index_n_heads, bias=False, quant_config=None,
                                             prefix=f"{prefix}.weights_proj")
        self.k_cache = CacheLayer(f"{prefix}.k_cache", BYTES_PER_TOKEN, torch.uint8, DSV32IndexerBackend,
                                  SparseCacheRole.INDEXER)
        # The queries are projected inside the DSA op, only for a batch whose plan scores rows (host bool; the
        # compiled graph cannot branch on the plan): the op finds this method on the cache layer it is given.
        self.rope = YarnRope(cfg)          # inv_freq only: the same rotation as the model's
        self.k_cache.query = self.query

    def query(self, qr, x, positions):
        """-> what dsa.select scores with: q_fp8 [T, H, 128] e4m3, weights [T, H] fp32 (q scale folded in)."""
        return indexer_queries(x, qr, positions, self.rope, self.cfg, self.wq_b, self.weights_proj,
                               custom_ops.indexer_quant)


class MLAAttention(nn.Module):
    """Multi-head latent attention with DSA: indexer top-k, then sparse MLA in the absorbed form."""

    def __init__(self, cfg: V32Config, vllm_config: VllmConfig, quant_config, prefix: str):
        super().__init__()
        self.cfg = cfg
        tp = get_tensor_model_parallel_world_size()
        if cfg.num_attention_heads % tp:
            raise ValueError(f"num_attention_heads={cfg.num_attention_heads} is not divisible by "
                             f"tensor_parallel_size={tp}")
        self.num_heads = cfg.num_attention_heads // tp
        self.q_a_proj = ReplicatedLinear(cfg.hidden_size, cfg.q_lora_rank, bias=False, quant_config=quant_config,
                                         prefix=f"{prefix}.q_a_proj")
        self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, eps=cfg.rms_norm_eps)
        self.q_b_proj = ColumnParallelLinear(cfg.q_lora_rank, cfg.num_attention_heads * cfg.qk_head_dim, bias=False,
                                             quant_config=quant_config, prefix=f"{prefix}.q_b_proj")
        self.kv_a_proj_with_mqa = ReplicatedLinear(cfg.hidden_size, cfg.mla_cache_dim, bias=False,
                                                   quant_config=quant_config, prefix=f"{prefix}.kv_a_proj_with_mqa")
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, eps=cfg.rms_norm_eps)
        # kv_b is absorbed (W_UK into the query, W_UV after attention): kept dense, dequantized at load
        self.kv_b_proj = ColumnParallelLinear(cfg.kv_lora_rank,
                                              cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                                              bias=False, quant_config=None, prefix=f"{prefix}.kv_b_proj")
        self.o_proj = RowParallelLinear(cfg.num_attention_heads * cfg.v_head_dim, cfg.hidden_size, bias=False,
                                        quant_config=quant_config, prefix=f"{prefix}.o_proj")
        self.indexer = Indexer(cfg, vllm_config.cache_config, f"{prefix}.indexer")
        cache_dtype = vllm_config.cache_config.cache_dtype
        if cache_dtype in FP8_CACHE_DTYPES:
            self.attn = CacheLayer(f"{prefix}.attn", FP8_BYTES, torch.uint8, DSV32SparseMLABackend,
                                   SparseCacheRole.SPARSE, "fp8_ds_mla")
        elif cache_dtype in BF16_CACHE_DTYPES:   # FlashMLA's bf16 layout, whatever the activation dtype
            self.attn = CacheLayer(f"{prefix}.attn", HEAD_576, torch.bfloat16, DSV32SparseMLABackend,
                                   SparseCacheRole.SPARSE)
        else:
            raise ValueError(f"kv_cache_dtype={cache_dtype!r}: deepseek_v32_plugin serves 'auto'/'bfloat16' "
                             f"(576 x bf16 latent rows) or 'fp8_ds_mla' (656 B rows)")

    def forward(self, positions: torch.Tensor, x: torch.Tensor, rope: YarnRope) -> torch.Tensor:
        # Traceable by dynamo on every row; the DSA step itself (caches, the step's plan) is one opaque op
        # (dsa_op.py) that uses the plan's first num_tokens rows (the rest is padding).
        cfg, h, ix = self.cfg, self.num_heads, self.indexer
        qr, q_nope, q_pe, kv_c, k_pe = mla.project(x, positions, rope, cfg, h, self.q_a_proj, self.q_a_layernorm,
                                                   self.q_b_proj, self.kv_a_proj_with_mqa, self.kv_a_layernorm)
        k = indexer_keys(x, positions, rope, cfg, ix.wk, ix.k_norm)   # the queries: in the op, if scored
        q576 = mla.absorb_query(q_nope, q_pe, self.w_uk)
        out_lat = torch.zeros(x.shape[0], h, cfg.kv_lora_rank, dtype=x.dtype, device=x.device)
        torch.ops.dsv32_vllm.dsa_attention(q576, kv_c, k_pe, k, qr, x, positions, out_lat, self.attn.layer_name,
                                           ix.k_cache.layer_name, cfg.index_topk, cfg.softmax_scale)
        return mla.output(out_lat, self.w_uv, self.o_proj)

    def process_weights_after_loading(self):
        cfg = self.cfg
        self.w_uk, self.w_uv = mla.split_kv_b(self.kv_b_proj.weight, self.num_heads, cfg.qk_nope_head_dim,
                                              cfg.v_head_dim, cfg.kv_lora_rank)


class MLP(nn.Module):
    def __init__(self, hidden: int, inter: int, quant_config, prefix: str, reduce_results: bool = True):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden, [inter, inter], bias=False, quant_config=quant_config,
                                                       prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(inter, hidden, bias=False, quant_config=quant_config,
                                           reduce_results=reduce_results, prefix=f"{prefix}.down_proj")
        self.act_fn = SiluAndMul()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_up_proj(x)[0]))[0]


class MoE(nn.Module):
    """vLLM's FusedMoE (router: sigmoid + noaux_tc grouped top-k; shared expert; TP/EP all-reduce) with our
    FP8 expert compute (quant.DSV32Fp8MoEMethod)."""

    def __init__(self, cfg: V32Config, quant_config, prefix: str):
        super().__init__()
        self.gate = GateLinear(cfg.hidden_size, cfg.n_routed_experts, out_dtype=torch.float32, prefix=f"{prefix}.gate")
        self.gate.e_score_correction_bias = nn.Parameter(torch.empty(cfg.n_routed_experts, dtype=torch.float32),
                                                         requires_grad=False)
        self.shared_experts = None
        if cfg.n_shared_experts:
            self.shared_experts = MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts,
                                      quant_config.engine_fp8_config, f"{prefix}.shared_experts",
                                      reduce_results=False)
        self.experts = FusedMoEFactory(
            shared_experts=self.shared_experts, gate=self.gate, num_experts=cfg.n_routed_experts,
            top_k=cfg.num_experts_per_tok, hidden_size=cfg.hidden_size, intermediate_size=cfg.moe_intermediate_size,
            renormalize=cfg.norm_topk_prob, quant_config=quant_config, use_grouped_topk=True,
            num_expert_group=cfg.n_group, topk_group=cfg.topk_group, prefix=f"{prefix}.experts",
            scoring_func=cfg.scoring_func, routed_scaling_factor=cfg.routed_scaling_factor,
            e_score_correction_bias=self.gate.e_score_correction_bias, reduce_results=True,
            router_logits_dtype=torch.float32)

    def forward(self, x):
        return self.experts(hidden_states=x, router_logits=x)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: V32Config, vllm_config: VllmConfig, quant_config, layer_idx: int, prefix: str):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        lin = quant_config.engine_fp8_config
        self.self_attn = MLAAttention(cfg, vllm_config, lin, f"{prefix}.self_attn")
        if cfg.is_moe_layer(layer_idx):
            self.mlp = MoE(cfg, quant_config, f"{prefix}.mlp")
        else:
            self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, lin, f"{prefix}.mlp")

    def forward(self, positions, x, rope):
        x = x + self.self_attn(positions, self.input_layernorm(x), rope)
        return x + self.mlp(self.post_attention_layernorm(x))


# Compiled under vLLM's compilation mode (dynamo; on CUDA piecewise + full CUDA graphs): our kernels are
# opaque custom ops (ops/custom_ops.py) and the DSA step is a splitting op (dsa_op.py).
@support_torch_compile(dynamic_arg_dims={"input_ids": 0, "positions": 0, "intermediate_tensors": 0, "inputs_embeds": 0})
class DSV32Model(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        cfg = V32Config.from_hf(vllm_config.model_config.hf_config)
        ok, why = is_supported(cfg.index_topk)
        if not ok:
            raise ValueError(f"deepseek_v32_plugin cannot serve this model: {why}")
        self.cfg = cfg
        self.quant_config = make_quant_config(vllm_config.quant_config)
        pp = get_pp_group()
        self.embed_tokens = (VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, prefix=f"{prefix}.embed_tokens")
                             if pp.is_first_rank else PPMissingLayer())
        self.start_layer, self.end_layer, self.layers = make_layers(
            cfg.num_hidden_layers,
            lambda prefix: DecoderLayer(cfg, vllm_config, self.quant_config, int(prefix.rsplit(".", 1)[1]), prefix),
            prefix=f"{prefix}.layers")
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps) if pp.is_last_rank else PPMissingLayer()
        self.rope = YarnRope(cfg)
        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors_factory(["hidden_states"],
                                                                                       cfg.hidden_size)

    def forward(self, input_ids, positions, intermediate_tensors: Optional[IntermediateTensors] = None,
                inputs_embeds=None):
        pp = get_pp_group()
        if pp.is_first_rank:
            x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        else:
            x = intermediate_tensors["hidden_states"]
        for layer in self.layers[self.start_layer: self.end_layer]:
            x = layer(positions, x, self.rope)
        if not pp.is_last_rank:
            return IntermediateTensors({"hidden_states": x})
        return self.norm(x)


class DeepseekV32ForCausalLM(nn.Module, SupportsPP):
    """Registered by deepseek_v32_plugin.engines.vllm.register() under the checkpoint's architecture name."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        self.vllm_config = vllm_config
        self.model = DSV32Model(vllm_config=vllm_config, prefix="model")
        cfg = self.model.cfg
        self.config = vllm_config.model_config.hf_config
        self.lm_head = (ParallelLMHead(cfg.vocab_size, cfg.hidden_size, prefix="lm_head")
                        if get_pp_group().is_last_rank else PPMissingLayer())
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors
        if vllm_config.parallel_config.pipeline_parallel_size > 1 and current_platform.is_cpu():
            from .cpu_pp import ensure_pp_receive_buffer
            ensure_pp_receive_buffer()
        self.logits_processor = LogitsProcessor(cfg.vocab_size)
        logger.info("deepseek_v32_plugin: serving %s (%d layers, index_topk %d) with our sparse-MLA backend, "
                    "lightning indexer and FP8 experts; latent cache %s, %d-token pages",
                    ARCHITECTURE, cfg.num_hidden_layers, cfg.index_topk,
                    vllm_config.cache_config.cache_dtype, PAGE_SIZE)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors: Optional[IntermediateTensors] = None,
                inputs_embeds=None, **kwargs):
        if SYNC_CHECK:   # DSV32_SYNC_CHECK / _REPORT: decode steps (no prefill rows) run in host_sync.SyncGuard
            md = get_forward_context().attn_metadata
            md = md[0] if isinstance(md, list) else md
            plan = next((m for m in (md or {}).values() if isinstance(m, dsa.DSAPlan)), None)
            with decode_step_guard(plan is not None and not plan.ragged_spans, f"vllm T={input_ids.shape[0]}"):
                return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor):
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        cfg = self.model.cfg
        mtp = mtp_prefixes(cfg)
        # pipeline parallel: this stage loads only its own layers (and embedding / norm + lm_head)
        loaded = load_v32_weights(self, ((n, w) for n, w in weights
                                         if not n.startswith(mtp) and not is_pp_missing_parameter(n, self)),
                                  cfg.n_routed_experts)
        check_indexer_weights(self, loaded)
        finish_loading(self)
        return loaded


# ---------------------------------------------------------------- weight loading

def _dequantizes(module: nn.Module) -> bool:
    """True when `module` holds plain (bf16/fp32) weights: FP8 checkpoint blocks are dequantized at load."""
    qm = getattr(module, "quant_method", None)
    return qm is None or isinstance(qm, UnquantizedLinearMethod)


def load_v32_weights(model: nn.Module, weights, n_routed_experts: int) -> set[str]:
    """engines.common.load_v32_weights with vLLM's expert mapping; dense FP8 linears stay FP8 where vLLM's
    Fp8 linear method serves them (CUDA), else they are dequantized (fp32, cast by the parameter's loader)."""
    modules = dict(model.named_modules())
    gate, up, down = MLP_PROJS
    expert_map = fused_moe_make_expert_params_mapping(model, ckpt_gate_proj_name=gate, ckpt_down_proj_name=down,
                                                      ckpt_up_proj_name=up, num_experts=n_routed_experts)
    return common.load_v32_weights(
        dict(model.named_parameters()), weights, expert_map=expert_map, default_loader=default_weight_loader,
        dequant_dtype=torch.float32, keeps_fp8=lambda param: not _dequantizes(modules[param.rsplit(".", 1)[0]]))


def check_indexer_weights(model: nn.Module, loaded: set[str]) -> None:
    """A checkpoint without the lightning indexer's weights is not a V3.2 checkpoint: say so by name."""
    missing = sorted(n for n, _ in model.named_parameters() if ".indexer." in n and n not in loaded)
    if missing:
        raise ValueError(f"deepseek_v32_plugin: the checkpoint is missing indexer weights, e.g. {missing[:4]} "
                         f"({len(missing)} tensors): is this a DeepSeek-V3.2 checkpoint?")


def finish_loading(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, MLAAttention):
            m.process_weights_after_loading()
