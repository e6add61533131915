"""The checkpoint's MTP layer as vLLM's speculative draft model (speculative_config method "mtp"; vLLM maps
the V3.2 checkpoint to the architecture name DeepseekV32MTPModel, which register() points here).

Module names equal checkpoint keys: model.layers.{L}.{embed_tokens, enorm, hnorm, eh_proj, shared_head.{norm,
head}} plus a full MoE decoder layer (indexer included) at model.layers.{L}, L = num_hidden_layers.
Step: x = eh_proj([enorm(embed(t_{i+1})) ; hnorm(h_i)]) (embedding zeroed at position 0), x = decoder layer(x);
returns (x, shared_head.norm(x)): vLLM computes draft logits from the first and feeds the second to the next
draft step (model_returns_tuple() is true for this architecture).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vllm.config import VllmConfig
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ReplicatedLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

from deepseek_v32_plugin.checkpoint import mtp_prefixes
from deepseek_v32_plugin.config import V32Config
from deepseek_v32_plugin.model.mtp import mtp_input
from deepseek_v32_plugin.model.rope import YarnRope

from .model import DecoderLayer, check_indexer_weights, finish_loading, load_v32_weights
from .quant_config import make_quant_config


class SharedHead(nn.Module):
    def __init__(self, cfg, prefix: str):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, prefix=f"{prefix}.head")


class MTPLayer(DecoderLayer):
    def __init__(self, cfg, vllm_config: VllmConfig, quant_config, layer_idx: int, prefix: str):
        super().__init__(cfg, vllm_config, quant_config, layer_idx, prefix)
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, prefix=f"{prefix}.embed_tokens")
        self.enorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.eh_proj = ReplicatedLinear(2 * cfg.hidden_size, cfg.hidden_size, bias=False,
                                        quant_config=quant_config.engine_fp8_config, prefix=f"{prefix}.eh_proj")
        self.shared_head = SharedHead(cfg, f"{prefix}.shared_head")

    def mtp_forward(self, input_ids, positions, previous_hidden_states, rope, inputs_embeds=None):
        emb = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        x = mtp_input(emb, previous_hidden_states, positions, self.enorm, self.hnorm, self.eh_proj)
        x = super().forward(positions, x, rope)
        return x, self.shared_head.norm(x)


class _MTPModel(nn.Module):
    def __init__(self, cfg, vllm_config: VllmConfig, quant_config):
        super().__init__()
        self.start = cfg.num_hidden_layers
        self.layers = nn.ModuleDict({
            str(i): MTPLayer(cfg, vllm_config, quant_config, i, f"model.layers.{i}")
            for i in range(self.start, self.start + cfg.num_nextn_predict_layers)})


class DeepseekV32MTP(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        cfg = V32Config.from_hf(vllm_config.model_config.hf_config)
        if not cfg.num_nextn_predict_layers:
            raise ValueError("deepseek_v32_plugin: the checkpoint has num_nextn_predict_layers=0: no MTP layer "
                             "to draft with")
        self.cfg = cfg
        self.config = vllm_config.model_config.hf_config
        self.quant_config = make_quant_config(vllm_config.quant_config)
        self.model = _MTPModel(cfg, vllm_config, self.quant_config)
        self.rope = YarnRope(cfg)
        self.logits_processor = LogitsProcessor(cfg.vocab_size)

    def _layer(self, spec_step_idx: int) -> MTPLayer:
        return self.model.layers[str(self.model.start + spec_step_idx % self.cfg.num_nextn_predict_layers)]

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._layer(0).embed_tokens(input_ids)

    def forward(self, input_ids, positions, hidden_states, intermediate_tensors=None, inputs_embeds=None,
                spec_step_idx: int = 0):
        return self._layer(spec_step_idx).mtp_forward(input_ids, positions, hidden_states, self.rope, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor, spec_step_idx: int = 0):
        head = self._layer(spec_step_idx).shared_head
        return self.logits_processor(head.head, head.norm(hidden_states))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        prefixes = mtp_prefixes(self.cfg)
        loaded = load_v32_weights(self, ((n, w) for n, w in weights if n.startswith(prefixes)),
                                  self.cfg.n_routed_experts)
        missing = sorted(n for n, _ in self.named_parameters() if n not in loaded)
        if missing:
            raise ValueError(f"deepseek_v32_plugin: the checkpoint lacks MTP-layer tensors, e.g. {missing[:4]}: "
                             f"use a checkpoint with the MTP layer or disable speculative decoding")
        check_indexer_weights(self, loaded)
        finish_loading(self)
        return loaded
