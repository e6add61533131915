"""The checkpoint's MTP layer as SGLang's EAGLE/NEXTN speculative draft model.

SGLang renames a DeepSeek draft's architecture to "DeepseekV3ForCausalLMNextN" (configs/model_config.py), for
V3 and V3.2 alike, and builds the draft with one attention layer (layer_id 0) in its own DSATokenToKVPool,
sharing the target's req_to_token table (same slots). models/deepseek_v3_nextn.py registers a class under
that name which builds this module for V3.2 configs (index_topk set) and SGLang's own draft otherwise.

Checkpoint keys model.layers.{L}.* (L = num_hidden_layers) map to: enorm, hnorm, eh_proj, the decoder layer
(MLA + indexer + MoE), shared_head.norm -> model.*, shared_head.head -> lm_head, embed_tokens ->
model.embed_tokens. SGLang then replaces embed and head with the target's (set_embed_and_head; the V3.2
checkpoint's copies are identical).
Step (same math as ReferenceModel.mtp_forward and the vLLM adapter): x = eh_proj([enorm(embed(t_{i+1}));
hnorm(h_i)]) with the embedding zeroed at position 0, x = decoder(x); returns shared_head.norm(x), from which
SGLang's LogitsProcessor computes the draft logits and which it feeds back as h for the next draft step.
"""
from __future__ import annotations

import os
from typing import Iterable, Tuple

import torch
from torch import nn

from sglang.srt.eplb.expert_distribution import get_global_expert_distribution_recorder
from sglang.srt.layers.layernorm import RMSNorm
from sglang.srt.layers.logits_processor import LogitsProcessor
from sglang.srt.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from sglang.srt.distributed.parallel_state import get_tensor_model_parallel_rank

from ...model import YarnRope
from ...model.mtp import mtp_input
from ...config import V32Config
from .model import DecoderLayer, load_v32_weights

# Test hook (read once, when the draft is built): when set, TP rank 0's draft saves (positions, input_ids,
# previous hidden, output hidden) of its first MAX_DUMPS forwards to this file (torch.save of a list), so
# integration tests can compare the draft with the reference.
MAX_DUMPS = 64
DUMP_ENV = "DSV32_SGLANG_DUMP_DRAFT"


class _NextNModel(nn.Module):
    def __init__(self, cfg, rope: YarnRope):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, prefix="model.embed_tokens")
        self.enorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        # the draft's KV pool has one layer: attention layer 0; the MLP is MoE (as the checkpoint's layer L)
        self.decoder = DecoderLayer(cfg, cfg.num_hidden_layers, "model.decoder", rope, engine_layer_id=0)
        self.shared_head = nn.Module()
        self.shared_head.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self._dump_path = os.environ.get(DUMP_ENV) or None
        if self._dump_path and get_tensor_model_parallel_rank() != 0:
            self._dump_path = None
        self._dumps: list = []

    def forward(self, input_ids, positions, forward_batch):
        emb = self.embed_tokens(input_ids)
        if emb.shape[0] == 0:
            return emb
        prev = forward_batch.spec_info.hidden_states
        x = mtp_input(emb, prev, positions, self.enorm, self.hnorm, self.eh_proj)
        with get_global_expert_distribution_recorder().disable_this_region():   # not target layer 0's routing
            x = self.decoder(positions, x, forward_batch)
        out = self.shared_head.norm(x)
        if self._dump_path and len(self._dumps) < MAX_DUMPS:
            # copies: SGLang advances positions (and reuses buffers) in place after this forward
            self._dumps.append({name: t.detach().cpu().clone() for name, t in (
                ("positions", positions), ("input_ids", input_ids), ("prev_hidden", prev.float()),
                ("hidden", out.float()))})
            torch.save(self._dumps, self._dump_path)
        return out


class DeepseekV32NextN(nn.Module):
    """V3.2's MTP layer as SGLang's draft model (speculative_algorithm EAGLE / NEXTN)."""

    def __init__(self, config, quant_config=None, prefix: str = "", **unused):
        super().__init__()
        self.config = config
        self.cfg = V32Config.from_hf(config)
        if not self.cfg.num_nextn_predict_layers:
            raise ValueError("num_nextn_predict_layers=0: this V3.2 checkpoint has no MTP layer to draft with "
                             "(drop --speculative-algorithm)")
        self.quant_config = None   # FP8 handled by us, as in the target model
        self.model = _NextNModel(self.cfg, YarnRope(self.cfg))
        self.lm_head = ParallelLMHead(self.cfg.vocab_size, self.cfg.hidden_size, prefix="lm_head")
        self.logits_processor = LogitsProcessor(config)

    @torch.no_grad()
    def forward(self, input_ids, positions, forward_batch, input_embeds=None, pp_proxy_tensors=None, **kwargs):
        hidden = self.model(input_ids, positions, forward_batch)
        return self.logits_processor(input_ids, hidden, self.lm_head, forward_batch)

    def _checkpoint_to_param(self, name: str):
        """model.layers.{L}.<x> -> our parameter name, or None for tensors of the target model."""
        mtp = f"model.layers.{self.cfg.num_hidden_layers}."
        if not name.startswith(mtp):
            return None
        rest = name[len(mtp):]
        if rest.startswith("shared_head.head."):
            return "lm_head." + rest[len("shared_head.head."):]
        if rest.startswith(("embed_tokens.", "enorm.", "hnorm.", "eh_proj.", "shared_head.norm.")):
            return "model." + rest
        return "model.decoder." + rest

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]):
        loaded = load_v32_weights(self, weights, self.cfg, rename=self._checkpoint_to_param)
        missing = [n for n, _ in self.named_parameters() if n not in loaded]
        if missing:
            raise KeyError(f"checkpoint is missing MTP tensors (model.layers.{self.cfg.num_hidden_layers}.*) for: "
                           f"{missing[:6]}")
        self.post_load_weights()

    def post_load_weights(self):
        """Also called by SGLang's loaders that bypass load_weights (dummy, remote, sharded state)."""
        self.model.decoder.self_attn.post_load_weights()

    # SGLang's EAGLE worker shares the target's embedding and LM head with the draft
    def get_embed_and_head(self):
        return self.model.embed_tokens.weight, self.lm_head.weight

    def set_embed_and_head(self, embed, head):
        del self.model.embed_tokens.weight
        del self.lm_head.weight
        self.model.embed_tokens.weight = embed
        self.lm_head.weight = head
