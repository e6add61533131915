"""The engine-neutral DeepSeek-V3.2 reference model: the oracle for kernels and engine adapters.

Built from a `(V32Config, {hf_name: tensor})` pair (see checkpoint.load_checkpoint) and the ops in
deepseek_v32_plugin.ops (so on a GPU the same forward runs our kernels; on CPU the naive references).
Every forward appends `n` new tokens of one sequence to the paged caches, so prefill (n = prompt),
chunked prefill (several calls) and decode (n = 1) are one code path:

  layer: x -> MLA query latent qr, latent kv row (written to the MLA cache), indexer q/k (k written to
         the indexer cache) -> indexer logits over the sequence's cached keys -> top-k positions -> slots
         -> sparse MLA in the absorbed form (q_nope @ W_UK, attend over 576-wide rows, @ W_UV) -> o_proj
         -> dense MLP or MoE (routed experts through ops.fp8_moe, as on the GPU).
Compute is fp32 by default (dtype=): it is the oracle; engines run bf16 and are compared with a tolerance.
Linears other than routed experts use dequantized FP8 weights (no activation quantization).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..config import V32Config
from ..ops import PAGE_SIZE, fp8_moe, indexer, sparse_mla
from ..ops.fp8_quant import FP8_DTYPE, fp8_dequant_weight, fp8_quant_weight
from .cache import PagedCache, Sequence
from .indexer import ascending, indexer_inputs, k_layer_norm
from .mla import absorb_query, linear_of, output, project, split_kv_b
from .mtp import mtp_input
from .moe import route
from .rope import YarnRope


class MissingWeightError(KeyError):
    pass


class _Weights:
    """Name-prefixed access to the checkpoint dict, dequantizing FP8 linears on first use."""

    def __init__(self, tensors: dict, dtype: torch.dtype, device):
        self.t, self.dtype, self.device = tensors, dtype, device

    def raw(self, name: str) -> torch.Tensor:
        if name not in self.t:
            raise MissingWeightError(f"checkpoint has no tensor {name!r}")
        return self.t[name].to(self.device)

    def linear(self, prefix: str) -> torch.Tensor:
        w = self.raw(f"{prefix}.weight")
        if w.dtype == FP8_DTYPE:
            w = fp8_dequant_weight(w, self.raw(f"{prefix}.weight_scale_inv"), name=f"{prefix}.weight")
        return w.to(self.dtype)

    def fp8linear_of(self, prefix: str):
        """(W_fp8, scale_inv) for expert GEMMs; quantizes a non-FP8 checkpoint's weight on the fly."""
        w = self.raw(f"{prefix}.weight")
        if w.dtype == FP8_DTYPE:
            return w, self.raw(f"{prefix}.weight_scale_inv").float()
        return fp8_quant_weight(w.float())

    def vec(self, name: str) -> torch.Tensor:
        return self.raw(name).to(self.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


class Attention:
    """MLA + lightning indexer of one layer."""

    def __init__(self, cfg: V32Config, w: _Weights, prefix: str, rope: YarnRope):
        p = f"{prefix}.self_attn"
        self.cfg, self.rope = cfg, rope
        self.q_a = w.linear(f"{p}.q_a_proj")
        self.q_a_norm = w.vec(f"{p}.q_a_layernorm.weight")
        self.q_b = w.linear(f"{p}.q_b_proj")
        self.kv_a = w.linear(f"{p}.kv_a_proj_with_mqa")
        self.kv_a_norm = w.vec(f"{p}.kv_a_layernorm.weight")
        # [h, nope, 512] absorbed into the query, [h, v, 512] applied after attention (model/mla.py)
        self.w_uk, self.w_uv = split_kv_b(w.linear(f"{p}.kv_b_proj"), cfg.num_attention_heads,
                                          cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank)
        self.o = w.linear(f"{p}.o_proj")
        ip = f"{p}.indexer"
        self.idx_wq_b = w.linear(f"{ip}.wq_b")
        self.idx_wk = w.linear(f"{ip}.wk")
        self.idx_k_norm_w = w.raw(f"{ip}.k_norm.weight").float()
        self.idx_k_norm_b = w.raw(f"{ip}.k_norm.bias").float()
        self.idx_weights_proj = w.linear(f"{ip}.weights_proj")

    def _norm(self, weight):
        return lambda t: rms_norm(t, weight, self.cfg.rms_norm_eps)

    def project(self, x, positions):
        """-> qr, q_nope, q_pe, kv_c, k_pe (model/mla.project on this layer's weights)."""
        return project(x, positions, self.rope, self.cfg, self.cfg.num_attention_heads, linear_of(self.q_a),
                       self._norm(self.q_a_norm), linear_of(self.q_b), linear_of(self.kv_a),
                       self._norm(self.kv_a_norm))

    def indexer_inputs(self, x, qr, positions, with_q: bool = True):
        """-> k [n, 128] (roped), q_fp8 [n, H_i, 128], weights [n, H_i] fp32 (model/indexer.indexer_inputs)."""
        return indexer_inputs(x, qr, positions, self.rope, self.cfg, linear_of(self.idx_wq_b),
                              linear_of(self.idx_wk), lambda k: k_layer_norm(k, self.idx_k_norm_w, self.idx_k_norm_b),
                              lambda t: t.float() @ self.idx_weights_proj.float().t(), indexer.indexer_quant, with_q)

    def output(self, out_lat):
        """Latent attention output [n, h, kv_lora] -> [n, D]."""
        return output(out_lat, self.w_uv, linear_of(self.o))

    def forward(self, x, positions, seq: Sequence, cache_mla, cache_idx, use_indexer: bool = True):
        cfg = self.cfg
        n = x.shape[0]
        qr, q_nope, q_pe, kv_c, k_pe = self.project(x, positions)
        new_slots = seq.slots(positions)
        sparse_mla.mla_cache_write(kv_c, k_pe, cache_mla, new_slots)

        ik, q_fp8, weights = self.indexer_inputs(x, qr, positions, with_q=use_indexer)
        indexer.indexer_k_quant_and_cache(ik, cache_idx, new_slots)
        total = int(positions[-1]) + 1
        if use_indexer:
            table = seq.block_table(x.device)
            if n <= indexer.PAGED_MAX_NEXT_N:   # decode / MTP-verify shape: the paged kernel
                logits = indexer.fp8_paged_indexer_logits(
                    q_fp8[None], cache_idx, weights, torch.tensor([total], dtype=torch.int32, device=x.device),
                    table[None], total)
            else:        # prefill shape: ragged logits over the gathered keys
                k_fp8, k_scale = indexer.indexer_cache_gather(cache_idx, seq.slots(
                    torch.arange(total, device=x.device)))
                logits = indexer.fp8_indexer_logits(q_fp8, k_fp8, k_scale, weights,
                                                    torch.zeros(n, dtype=torch.int32, device=x.device),
                                                    (positions + 1).int())
            pos_idx = ascending(indexer.indexer_topk(logits, cfg.index_topk, ke=(positions + 1).int()))
        else:            # dense causal MLA: every past position (what DSA equals when len <= index_topk)
            ar = torch.arange(total, device=x.device)
            pos_idx = torch.where(ar[None, :] <= positions[:, None], ar[None, :], -1).int()
        slots = indexer.indices_to_slots(pos_idx, seq.block_table(x.device)[None].expand(n, -1))

        q576 = absorb_query(q_nope, q_pe, self.w_uk)
        out_lat, _ = sparse_mla.sparse_mla_decode(q576[None].contiguous(), cache_mla, slots[None].contiguous(),
                                                  cfg.softmax_scale)
        return self.output(out_lat[0]), pos_idx


class MLP:
    def __init__(self, w: _Weights, prefix: str):
        self.gate, self.up, self.down = (w.linear(f"{prefix}.{n}") for n in ("gate_proj", "up_proj", "down_proj"))

    def forward(self, x):
        return (F.silu(x @ self.gate.t()) * (x @ self.up.t())) @ self.down.t()


class MoE:
    def __init__(self, cfg: V32Config, w: _Weights, prefix: str, expert_act_fp8: bool = True):
        self.cfg, self.expert_act_fp8, self.dtype = cfg, expert_act_fp8, w.dtype
        self.gate = w.raw(f"{prefix}.gate.weight").float()
        self.bias = w.raw(f"{prefix}.gate.e_score_correction_bias").float()
        w13, s13, w2, s2 = [], [], [], []
        for j in range(cfg.n_routed_experts):
            g, gs = w.fp8linear_of(f"{prefix}.experts.{j}.gate_proj")
            u, us = w.fp8linear_of(f"{prefix}.experts.{j}.up_proj")
            d, ds = w.fp8linear_of(f"{prefix}.experts.{j}.down_proj")
            w13.append(torch.cat([g, u])), s13.append(torch.cat([gs, us])), w2.append(d), s2.append(ds)
        self.w13, self.s13 = torch.stack(w13), torch.stack(s13)
        self.w2, self.s2 = torch.stack(w2), torch.stack(s2)
        self.shared = MLP(w, f"{prefix}.shared_experts") if cfg.n_shared_experts else None

    def forward(self, x):
        weights, ids = route(x.float() @ self.gate.t(), self.bias, self.cfg)
        if self.expert_act_fp8:
            out = fp8_moe.fp8_moe_experts(x, self.w13, self.s13, self.w2, self.s2, weights, ids)
        else:
            out = self._experts_dequantized(x, weights, ids)
        if self.shared is not None:
            out = out + self.shared.forward(x)
        return out


    def _experts_dequantized(self, x, weights, ids):
        """Weight-only formulation (no activation FP8): what HF transformers computes."""
        out = torch.zeros_like(x)
        for e in ids.unique().tolist():
            tok, slot = (ids == e).nonzero(as_tuple=True)
            w13 = fp8_dequant_weight(self.w13[e], self.s13[e]).to(self.dtype)
            w2 = fp8_dequant_weight(self.w2[e], self.s2[e]).to(self.dtype)
            gate, up = (x[tok] @ w13.t()).chunk(2, dim=-1)
            y = (F.silu(gate) * up) @ w2.t()
            out.index_add_(0, tok, y * weights[tok, slot, None].to(self.dtype))
        return out


class DecoderLayer:
    def __init__(self, cfg: V32Config, w: _Weights, idx: int, rope: YarnRope, expert_act_fp8: bool = True):
        p = f"model.layers.{idx}"
        self.cfg, self.idx = cfg, idx
        self.in_norm = w.vec(f"{p}.input_layernorm.weight")
        self.post_norm = w.vec(f"{p}.post_attention_layernorm.weight")
        self.attn = Attention(cfg, w, p, rope)
        self.mlp = MoE(cfg, w, f"{p}.mlp", expert_act_fp8) if cfg.is_moe_layer(idx) else MLP(w, f"{p}.mlp")

    def forward(self, x, positions, seq, cache: PagedCache, slot: int, use_indexer=True):
        a, sel = self.attn.forward(rms_norm(x, self.in_norm, self.cfg.rms_norm_eps), positions, seq,
                                   cache.mla[slot], cache.index[slot], use_indexer)
        x = x + a
        return x + self.mlp.forward(rms_norm(x, self.post_norm, self.cfg.rms_norm_eps)), sel


class ReferenceModel:
    """DeepSeek-V3.2 main model + MTP module over paged caches. Not an nn.Module: it is an oracle."""

    def __init__(self, cfg: V32Config, tensors: dict, dtype: torch.dtype = torch.float32, device="cpu",
                 expert_act_fp8: bool = True):
        """expert_act_fp8: routed experts quantize activations to FP8 (1x128) like the GPU kernels;
        False gives the weight-only formulation (dequantized weights), as HF transformers computes."""
        self.cfg, self.dtype, self.device = cfg, dtype, torch.device(device)
        w = _Weights(tensors, dtype, self.device)
        rope = YarnRope(cfg)
        self.embed = w.vec("model.embed_tokens.weight")
        self.layers = [DecoderLayer(cfg, w, i, rope, expert_act_fp8) for i in range(cfg.num_hidden_layers)]
        self.norm = w.vec("model.norm.weight")
        self.lm_head = w.linear("lm_head")
        self.mtp = None
        if cfg.num_nextn_predict_layers:
            m = f"model.layers.{cfg.num_hidden_layers}"
            self.mtp = dict(layer=DecoderLayer(cfg, w, cfg.num_hidden_layers, rope, expert_act_fp8),
                            enorm=w.vec(f"{m}.enorm.weight"), hnorm=w.vec(f"{m}.hnorm.weight"),
                            eh_proj=w.linear(f"{m}.eh_proj"), embed=w.vec(f"{m}.embed_tokens.weight"),
                            head_norm=w.vec(f"{m}.shared_head.norm.weight"), head=w.linear(f"{m}.shared_head.head"))

    @property
    def num_cache_layers(self) -> int:
        return self.cfg.num_hidden_layers + (1 if self.mtp else 0)

    def new_cache(self, num_pages: int, mla_format: str = "bf16") -> PagedCache:
        return PagedCache(self.num_cache_layers, num_pages, self.device, mla_format)

    def _positions(self, seq: Sequence, n: int) -> torch.Tensor:
        self.cfg.check_positions(seq.length + n, "sequence")
        return torch.arange(seq.length, seq.length + n, device=self.device)

    @torch.no_grad()
    def forward(self, token_ids, seq: Sequence, cache: PagedCache, use_indexer: bool = True,
                return_selected: bool = False):
        """Append token_ids [n] to seq -> (logits [n, vocab] fp32, hidden [n, D] (after the final norm))."""
        token_ids = torch.as_tensor(token_ids, device=self.device).long()
        n = token_ids.shape[0]
        if n and int(token_ids.max()) >= self.cfg.vocab_size:
            raise ValueError(f"token id {int(token_ids.max())} >= vocab_size {self.cfg.vocab_size}")
        positions = self._positions(seq, n)
        cache.reserve(seq, n)
        x = self.embed[token_ids]
        selected = []
        for i, layer in enumerate(self.layers):
            x, sel = layer.forward(x, positions, seq, cache, i, use_indexer)
            selected.append(sel)
        seq.length += n
        hidden = rms_norm(x, self.norm, self.cfg.rms_norm_eps)
        logits = (hidden @ self.lm_head.t()).float()
        return (logits, hidden, selected) if return_selected else (logits, hidden)

    @torch.no_grad()
    def mtp_forward(self, token_ids, prev_hidden, seq: Sequence, cache: PagedCache, use_indexer: bool = True):
        """MTP draft step in vLLM's convention: input i (at position seq.length + i of the MTP layer's own
        sequence) pairs token t[i+1] = token_ids[i] with prev_hidden[i] = the main model's final hidden
        state of token t[i]; the draft logits [n, vocab] fp32 predict t[i+2]. The embedding at position 0
        is zeroed (as vLLM does). `seq` is the MTP layer's own Sequence in the same PagedCache."""
        if self.mtp is None:
            raise ValueError("config has num_nextn_predict_layers=0: no MTP module")
        m = self.mtp
        token_ids = torch.as_tensor(token_ids, device=self.device).long()
        n = token_ids.shape[0]
        positions = self._positions(seq, n)
        cache.reserve(seq, n)
        eps = self.cfg.rms_norm_eps
        x = mtp_input(m["embed"][token_ids], prev_hidden, positions, lambda t: rms_norm(t, m["enorm"], eps),
                      lambda t: rms_norm(t, m["hnorm"], eps), linear_of(m["eh_proj"]))
        x, _ = m["layer"].forward(x, positions, seq, cache, self.cfg.num_hidden_layers, use_indexer)
        seq.length += n
        logits = (rms_norm(x, m["head_norm"], self.cfg.rms_norm_eps) @ m["head"].t()).float()
        return logits, x

    def generate(self, prompt_ids, max_new_tokens: int, cache: Optional[PagedCache] = None,
                 ignore_eos: bool = False):
        """Greedy decoding (prefill then one token at a time) -> list of new token ids (stopping after EOS
        unless ignore_eos)."""
        cache = cache or self.new_cache(-(-(len(prompt_ids) + max_new_tokens) // PAGE_SIZE) + 1)
        seq = cache.new_sequence()
        logits, _ = self.forward(prompt_ids, seq, cache)
        out = []
        for _ in range(max_new_tokens):
            tok = int(logits[-1].argmax())
            out.append(tok)
            if (tok == self.cfg.eos_token_id and not ignore_eos) or len(out) == max_new_tokens:
                break
            logits, _ = self.forward([tok], seq, cache)
        cache.release(seq)
        return out
