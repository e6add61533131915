"""DeepSeek-V3.2 built from SGLang's layers, for SGLang's ModelRunner (registered as "DeepseekV32ForCausalLM").

Module tree and parameter names follow the HF checkpoint (`prefix=` = checkpoint key), so weights load by
name. Parallelism is SGLang's: Column/RowParallelLinear shard the MLA heads and MLPs over TP, FusedMoE
shards or distributes the experts, VocabParallelEmbedding/ParallelLMHead the vocabulary. The indexer is
replicated (as in SGLang's own V3.2). The math is shared with the engine-neutral reference:
  - rope: deepseek_v32_plugin.model.YarnRope (interleaved for MLA, half-split for the indexer);
  - the MLA projections and output (model/mla.py project / output) on this layer's linears, the indexer's
    q/k/head weights (model/indexer.py indexer_inputs) on its tensors;
  - attention (cache writes, indexer logits/top-k, sparse MLA): the engine-neutral DSA step
    (model/dsa.py), planned per batch and run per layer by our backend (backend.py, `dsa_forward`);
  - routed experts: ops.fp8_moe.fp8_moe_experts on the checkpoint's FP8 blocks (DSV32Fp8MoEMethod),
    routing by SGLang's TopK (sigmoid, bias for choice, grouped, renormalized).
FP8 block-quantized dense linears are dequantized to the model dtype at load (SGLang's FP8 block GEMM
needs CUDA or AMX on CPU); the routed experts stay FP8.
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.distributed.communication_op import tensor_model_parallel_all_reduce
from sglang.srt.layers.dp_attention import dp_gather_replicate, dp_scatter, get_global_dp_buffer, get_local_dp_buffer
from sglang.srt.layers.layernorm import RMSNorm
from sglang.srt.layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear, ReplicatedLinear,
                                      RowParallelLinear)
from sglang.srt.layers.logits_processor import LogitsProcessor
from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
from sglang.srt.layers.moe.topk import TopK
from sglang.srt.layers.quantization.base_config import FusedMoEMethodBase
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.layers.utils import PPMissingLayer
from sglang.srt.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from sglang.srt.model_executor.forward_batch_info import PPProxyTensors
from sglang.srt.model_executor.forward_context import get_attn_backend
from sglang.srt.model_loader.weight_utils import default_weight_loader
from sglang.srt.runtime_context import get_model, get_parallel
from sglang.srt.utils import set_weight_attrs

from ...checkpoint import MLP_PROJS, mtp_prefixes
from ...config import V32Config
from ...host_sync import SYNC_CHECK, decode_step_guard
from .. import common
from ..common import create_fp8_moe_weights
from ...model import YarnRope
from ...model import mla
from ...model.indexer import indexer_inputs, k_layer_norm
from ...ops import fp8_moe, indexer

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# MoE: SGLang's FusedMoE plumbing (weights, loader, TP/EP, dispatch) with our FP8 grouped GEMM as compute
# ---------------------------------------------------------------------------------------------------
class DSV32Fp8MoEMethod(FusedMoEMethodBase):
    """FusedMoE expert compute on the checkpoint's FP8 128x128 blocks via ops.fp8_moe.fp8_moe_experts."""

    def create_weights(self, layer, num_experts, hidden_size, intermediate_size_per_partition, params_dtype,
                       **extra_weight_attrs):
        from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoeWeightScaleSupported

        create_fp8_moe_weights(layer, num_experts, hidden_size, intermediate_size_per_partition, extra_weight_attrs,
                               FusedMoeWeightScaleSupported.BLOCK.value, set_weight_attrs)

    def create_moe_runner(self, layer, moe_runner_config):
        self.moe_runner_config = moe_runner_config

    def get_moe_runner_backend(self, layer):
        return None

    def process_weights_after_loading(self, layer) -> None:
        return None

    def apply(self, layer, dispatch_output):
        from sglang.srt.layers.moe.token_dispatcher import StandardCombineInput

        x = dispatch_output.hidden_states
        topk_weights, topk_ids = dispatch_output.topk_output[0], dispatch_output.topk_output[1]
        scale = self.moe_runner_config.routed_scaling_factor or 1.0
        out = fp8_moe.fp8_moe_experts(x, layer.w13_weight, layer.w13_weight_scale_inv, layer.w2_weight,
                                      layer.w2_weight_scale_inv, topk_weights.float() * scale, topk_ids)
        return StandardCombineInput(hidden_states=out)


class DenseMLP(nn.Module):
    def __init__(self, hidden: int, inter: int, prefix: str, reduce_results: bool = True):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden, [inter, inter], bias=False,
                                                       prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(inter, hidden, bias=False, reduce_results=reduce_results,
                                           prefix=f"{prefix}.down_proj")

    def forward(self, x):
        gu, _ = self.gate_up_proj(x)
        g, u = gu.chunk(2, dim=-1)
        y, _ = self.down_proj(F.silu(g) * u)
        return y


class MoE(nn.Module):
    def __init__(self, cfg: V32Config, layer_id: int, prefix: str):
        super().__init__()
        fused = get_model().shared_experts.num_fused_shared_experts
        if fused:   # SGLang would route the shared expert as an extra top-k slot our expert compute lacks
            raise ValueError(f"shared-experts fusion is on ({fused} fused): deepseek_v32_plugin runs the shared "
                             "expert separately (pass --disable-shared-experts-fusion)")
        self.tp_size = get_parallel().tp_size
        self.gate = ReplicatedLinear(cfg.hidden_size, cfg.n_routed_experts, bias=False, prefix=f"{prefix}.gate")
        self.gate.e_score_correction_bias = nn.Parameter(torch.zeros(cfg.n_routed_experts, dtype=torch.float32),
                                                         requires_grad=False)
        self.topk = TopK(top_k=cfg.num_experts_per_tok, layer_id=layer_id, use_grouped_topk=True,
                         topk_group=cfg.topk_group, num_expert_group=cfg.n_group, renormalize=cfg.norm_topk_prob,
                         scoring_func="sigmoid", correction_bias=self.gate.e_score_correction_bias,
                         routed_scaling_factor=cfg.routed_scaling_factor)
        self.experts = FusedMoE(num_experts=cfg.n_routed_experts, hidden_size=cfg.hidden_size,
                                intermediate_size=cfg.moe_intermediate_size, layer_id=layer_id,
                                top_k=cfg.num_experts_per_tok, reduce_results=False,
                                routed_scaling_factor=cfg.routed_scaling_factor, prefix=f"{prefix}.experts",
                                quant_method=DSV32Fp8MoEMethod(), params_dtype=torch.get_default_dtype())
        self.shared_experts = (DenseMLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts,
                                        f"{prefix}.shared_experts", reduce_results=False)
                               if cfg.n_shared_experts else None)

    def forward(self, x):
        router_logits = F.linear(x.float(), self.gate.weight.float())
        out = self.experts(x, self.topk(x, router_logits))
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        if self.tp_size > 1:
            out = tensor_model_parallel_all_reduce(out)
        return out


# ---------------------------------------------------------------------------------------------------
# Attention: MLA (absorbed) + lightning indexer; the backend does caches, selection and sparse attention
# ---------------------------------------------------------------------------------------------------
class IndexerWeights(nn.Module):
    def __init__(self, cfg: V32Config, prefix: str):
        super().__init__()
        self.wq_b = ReplicatedLinear(cfg.q_lora_rank, cfg.index_n_heads * cfg.index_head_dim, bias=False,
                                     prefix=f"{prefix}.wq_b")
        self.wk = ReplicatedLinear(cfg.hidden_size, cfg.index_head_dim, bias=False, prefix=f"{prefix}.wk")
        self.k_norm = nn.LayerNorm(cfg.index_head_dim, eps=1e-6, dtype=torch.float32)
        for p in self.k_norm.parameters():
            p.requires_grad_(False)
        self.weights_proj = ReplicatedLinear(cfg.hidden_size, cfg.index_n_heads, bias=False,
                                             prefix=f"{prefix}.weights_proj")


class MLAAttention(nn.Module):
    def __init__(self, cfg: V32Config, layer_id: int, prefix: str, rope: YarnRope):
        super().__init__()
        tp = get_parallel().attn_tp_size   # = tp_size, or tp_size / attn_dp_size under DP attention
        if cfg.num_attention_heads % tp:
            raise ValueError(f"num_attention_heads={cfg.num_attention_heads} is not divisible by the attention's "
                             f"{tp} tensor-parallel ranks")
        self.cfg, self.rope = cfg, rope
        self.h = cfg.num_attention_heads // tp
        self.q_a_proj = ReplicatedLinear(cfg.hidden_size, cfg.q_lora_rank, bias=False, prefix=f"{prefix}.q_a_proj")
        self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, eps=cfg.rms_norm_eps)
        self.q_b_proj = ColumnParallelLinear(cfg.q_lora_rank, cfg.num_attention_heads * cfg.qk_head_dim,
                                             bias=False, prefix=f"{prefix}.q_b_proj", parallel_group="attn_tp")
        self.kv_a_proj_with_mqa = ReplicatedLinear(cfg.hidden_size, cfg.kv_lora_rank + cfg.qk_rope_head_dim,
                                                   bias=False, prefix=f"{prefix}.kv_a_proj_with_mqa")
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, eps=cfg.rms_norm_eps)
        self.kv_b_proj = ColumnParallelLinear(cfg.kv_lora_rank,
                                              cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                                              bias=False, prefix=f"{prefix}.kv_b_proj", parallel_group="attn_tp")
        self.o_proj = RowParallelLinear(cfg.num_attention_heads * cfg.v_head_dim, cfg.hidden_size, bias=False,
                                        reduce_results=True, prefix=f"{prefix}.o_proj", parallel_group="attn_tp")
        self.indexer = IndexerWeights(cfg, f"{prefix}.indexer")
        self.attn = RadixAttention(self.h, cfg.mla_cache_dim, cfg.softmax_scale, num_kv_heads=1,
                                   layer_id=layer_id, v_head_dim=cfg.kv_lora_rank, prefix=f"{prefix}.attn")
        self.w_uk: Optional[torch.Tensor] = None   # [h, nope, kv_lora]: absorbed into q (model/mla.py)
        self.w_uv: Optional[torch.Tensor] = None   # [h, v, kv_lora]: applied to the latent output

    def post_load_weights(self):
        cfg = self.cfg
        self.w_uk, self.w_uv = mla.split_kv_b(self.kv_b_proj.weight, self.h, cfg.qk_nope_head_dim, cfg.v_head_dim,
                                              cfg.kv_lora_rank)

    def forward(self, positions, x, forward_batch):
        cfg, w = self.cfg, self.indexer
        qr, q_nope, q_pe, kv_c, k_pe = mla.project(x, positions, self.rope, cfg, self.h, self.q_a_proj,
                                                   self.q_a_layernorm, self.q_b_proj, self.kv_a_proj_with_mqa,
                                                   self.kv_a_layernorm)
        md = get_attn_backend().forward_metadata   # a batch whose rows all fit in top-k is not scored
        # the indexer's projections on plain weights, in the reference's formulation (bit-equal in bf16)
        ik, q_fp8, weights = indexer_inputs(
            x, qr, positions, self.rope, cfg, mla.linear_of(w.wq_b.weight), mla.linear_of(w.wk.weight),
            lambda k: k_layer_norm(k, w.k_norm.weight, w.k_norm.bias),
            lambda t: t.float() @ w.weights_proj.weight.float().t(), indexer.indexer_quant,
            with_q=md is None or md.needs_scores)
        q576 = mla.absorb_query(q_nope, q_pe, self.w_uk)
        # the forward context's attention backend (what RadixAttention would call) is ours, dsv32_sparse: it
        # runs the shared DSA step (model/dsa.py) for this layer
        out_lat = get_attn_backend().dsa_forward(self.attn, forward_batch, q576, kv_c, k_pe, ik, q_fp8, weights)
        return mla.output(out_lat, self.w_uv, self.o_proj)


class DecoderLayer(nn.Module):
    """Checkpoint layer `layer_idx`; `engine_layer_id` is its index in SGLang's KV pool and MoE bookkeeping
    (the layer index for the target model, 0 for the MTP layer in the draft model's own one-layer pool)."""

    def __init__(self, cfg: V32Config, layer_idx: int, prefix: str, rope: YarnRope,
                 engine_layer_id: Optional[int] = None):
        super().__init__()
        engine_layer_id = layer_idx if engine_layer_id is None else engine_layer_id
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.self_attn = MLAAttention(cfg, engine_layer_id, f"{prefix}.self_attn", rope)
        is_moe = cfg.is_moe_layer(layer_idx) or layer_idx >= cfg.num_hidden_layers  # the MTP layer is MoE
        self.mlp = MoE(cfg, engine_layer_id, f"{prefix}.mlp") if is_moe else DenseMLP(
            cfg.hidden_size, cfg.intermediate_size, f"{prefix}.mlp")
        # DP attention: each attention-DP group runs its own requests, the MLPs are split over the whole TP
        # group; SGLang's DP gather/scatter carry the rows across (norms and residuals stay local)
        self.gather_mlp_rows = get_parallel().attn_dp_size > 1

    def forward(self, positions, x, forward_batch):
        x = x + self.self_attn(positions, self.input_layernorm(x), forward_batch)
        return x + self._mlp(self.post_attention_layernorm(x), forward_batch)

    def _mlp(self, x, forward_batch):
        if not self.gather_mlp_rows:
            return self.mlp(x)
        tp_group = get_parallel().tp_group
        rows = get_global_dp_buffer(tp_group)
        dp_gather_replicate(rows, x, forward_batch)
        out = get_local_dp_buffer(tp_group)
        dp_scatter(out, self.mlp(rows), forward_batch)
        return out


class DeepseekV32Model(nn.Module):
    """Pipeline parallel: this stage builds layers [start_layer, end_layer) (SGLang's get_pp_indices),
    PPMissingLayer elsewhere; the embedding on the first stage, the final norm on the last; hidden states
    cross stages as PPProxyTensors({"hidden_states"})."""

    def __init__(self, cfg: V32Config, prefix: str = "model"):
        super().__init__()
        from sglang.srt.distributed import get_pp_indices
        rope = YarnRope(cfg)
        self.pp = get_parallel().pp_group
        self.start_layer, self.end_layer = get_pp_indices(cfg.num_hidden_layers, self.pp.rank_in_group,
                                                          self.pp.world_size)
        # DP attention: the token rows differ between attention-DP groups, so the vocabulary is split over the
        # attention's TP group only (SGLang's own models do the same)
        self.embed_tokens = (VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, prefix=f"{prefix}.embed_tokens",
                                                    use_attn_tp_group=get_parallel().attn_dp_enabled)
                             if self.pp.is_first_rank else PPMissingLayer())
        self.layers = nn.ModuleList([DecoderLayer(cfg, i, f"{prefix}.layers.{i}", rope)
                                     if self.start_layer <= i < self.end_layer else PPMissingLayer()
                                     for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps) if self.pp.is_last_rank else PPMissingLayer()

    def owns(self, name: str) -> bool:
        """Whether checkpoint tensor `name` lives on this pipeline stage."""
        if name.startswith("model.layers."):
            return self.start_layer <= int(name.split(".")[2]) < self.end_layer
        if name.startswith("model.embed_tokens."):
            return self.pp.is_first_rank
        return self.pp.is_last_rank   # model.norm, lm_head

    def forward(self, input_ids, positions, forward_batch, input_embeds=None, pp_proxy_tensors=None):
        if self.pp.is_first_rank:
            x = self.embed_tokens(input_ids) if input_embeds is None else input_embeds
        else:
            x = pp_proxy_tensors["hidden_states"]
        for layer in self.layers[self.start_layer: self.end_layer]:
            x = layer(positions, x, forward_batch)
        if not self.pp.is_last_rank:
            return PPProxyTensors({"hidden_states": x})
        return self.norm(x)


# ---------------------------------------------------------------------------------------------------
# Weight loading: HF names -> our params; FP8 dense linears dequantized, routed experts kept FP8
# ---------------------------------------------------------------------------------------------------
def load_v32_weights(module: nn.Module, weights: Iterable[Tuple[str, torch.Tensor]], cfg: V32Config,
                     rename=None) -> set:
    """engines.common.load_v32_weights with SGLang's expert mapping; dense FP8 linears are dequantized to the
    model dtype (SGLang's FP8 block GEMM needs CUDA or AMX on CPU), routed experts stay FP8."""
    gate, up, down = MLP_PROJS
    expert_map = FusedMoE.make_expert_params_mapping(gate, down, up, cfg.n_routed_experts)
    return common.load_v32_weights(dict(module.named_parameters()), weights, expert_map=expert_map,
                                   default_loader=default_weight_loader, dequant_dtype=torch.get_default_dtype(),
                                   rename=rename)


class DeepseekV32ForCausalLM(nn.Module):
    """DeepSeek-V3.2 for SGLang through deepseek_v32_plugin (indexer + sparse MLA + FP8 MoE ops)."""

    def __init__(self, config, quant_config=None, prefix: str = ""):
        super().__init__()
        self.config = config
        self.cfg = V32Config.from_hf(config)
        # FP8 is handled by us (dequantized dense linears, FP8 experts): SGLang's FP8 config is not used.
        self.quant_config = None
        self.model = DeepseekV32Model(self.cfg)
        # split over the whole TP group (LogitsProcessor gathers the DP groups' rows) unless --enable-dp-lm-head
        self.lm_head = (ParallelLMHead(self.cfg.vocab_size, self.cfg.hidden_size, prefix="lm_head",
                                       use_attn_tp_group=get_parallel().enable_dp_lm_head)
                        if self.model.pp.is_last_rank else PPMissingLayer())
        # SGLang sizes this stage's KV pool from these (model_runner_components/layer_setup.py)
        self.start_layer, self.end_layer = self.model.start_layer, self.model.end_layer
        self.logits_processor = LogitsProcessor(config)

    @torch.no_grad()
    def forward(self, input_ids, positions, forward_batch, input_embeds=None, get_embedding: bool = False,
                pp_proxy_tensors=None):
        # DSV32_SYNC_CHECK / _REPORT: decode steps run in host_sync.SyncGuard (seq_lens_cpu: SGLang's host copy)
        with decode_step_guard(SYNC_CHECK and forward_batch.forward_mode.is_decode(), f"sglang T={input_ids.shape[0]}",
                               host=[t for t in (forward_batch.seq_lens_cpu,) if t is not None]):
            hidden = self.model(input_ids, positions, forward_batch, input_embeds, pp_proxy_tensors)
        if not self.model.pp.is_last_rank:
            return hidden
        return self.logits_processor(input_ids, hidden, self.lm_head, forward_batch)

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]):
        mtp = mtp_prefixes(self.cfg)   # the MTP layer belongs to the draft model (NextN)
        loaded = load_v32_weights(self, weights, self.cfg, rename=lambda name: None if name.startswith(mtp) or
                                  not self.model.owns(name) else name)
        self._check_loaded(loaded)
        self.post_load_weights()

    def post_load_weights(self):
        """Also called by SGLang's loaders that bypass load_weights (dummy, remote, sharded state)."""
        for layer in self.model.layers[self.model.start_layer: self.model.end_layer]:
            layer.self_attn.post_load_weights()

    # SGLang's EAGLE worker hands these to the draft model (mtp.py)
    def get_embed_and_head(self):
        return self.model.embed_tokens.weight, self.lm_head.weight

    def _check_loaded(self, loaded: set):
        missing = [name for name, _ in self.named_parameters() if name not in loaded]
        if missing:
            raise KeyError(f"checkpoint is missing tensors for: {missing[:6]}{' ...' if len(missing) > 6 else ''}")


EntryClass = [DeepseekV32ForCausalLM]
