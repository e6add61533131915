"""A typed, validated view of a Hugging Face DeepSeek-V3.2 `config.json`.

`V32Config.from_dict` / `from_pretrained` accept the real checkpoint's config unchanged and raise one
`ConfigError` naming the field at fault for anything the model cannot run with (a missing index_* field,
inconsistent dims, an unsupported quantization scheme), so no engine crashes deep inside a kernel later.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

ARCHITECTURE = "DeepseekV32ForCausalLM"
MODEL_TYPE = "deepseek_v32"
# The same checkpoint as a speculative draft: vLLM names it MTP_ARCHITECTURE (config/speculative.py),
# SGLang renames a V3/V3.2 draft to NEXTN_ARCHITECTURE (configs/model_config.py).
MTP_ARCHITECTURE = "DeepseekV32MTPModel"
NEXTN_ARCHITECTURE = "DeepseekV3ForCausalLMNextN"

# Fixed by the cache byte layouts our kernels share with FlashMLA / DeepGEMM (FACTS.md).
SUPPORTED_KV_LORA_RANK = 512
SUPPORTED_QK_ROPE_HEAD_DIM = 64
SUPPORTED_INDEX_HEAD_DIM = 128
FP8_BLOCK = 128


class ConfigError(ValueError):
    """A config.json field is missing or unusable; the message names the field."""


@dataclass(frozen=True)
class RopeScaling:
    type: str = "yarn"
    factor: float = 40.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 1.0


@dataclass(frozen=True)
class QuantConfig:
    quant_method: str = "fp8"
    fmt: str = "e4m3"
    activation_scheme: str = "dynamic"
    weight_block_size: tuple = (128, 128)
    scale_fmt: str = "ue8m0"


@dataclass(frozen=True)
class V32Config:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    moe_intermediate_size: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    first_k_dense_replace: int
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    num_key_value_heads: Optional[int] = None
    moe_layer_freq: int = 1
    norm_topk_prob: bool = True
    scoring_func: str = "sigmoid"
    topk_method: str = "noaux_tc"
    hidden_act: str = "silu"
    num_nextn_predict_layers: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 1
    tie_word_embeddings: bool = False
    rope_scaling: Optional[RopeScaling] = None
    quantization_config: Optional[QuantConfig] = None
    torch_dtype: str = "bfloat16"

    # ---- derived quantities (one place, so no adapter recomputes them differently) ----
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def mla_cache_dim(self) -> int:
        """Latent row per token: compressed kv (kv_lora_rank) + rope key (qk_rope_head_dim) = 576."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """qk_head_dim^-0.5 x mscale^2, mscale = 0.1 * mscale_all_dim * ln(factor) + 1 (YaRN)."""
        scale = self.qk_head_dim ** -0.5
        rs = self.rope_scaling
        if rs is not None and rs.mscale_all_dim and rs.factor > 1:
            m = 0.1 * rs.mscale_all_dim * math.log(rs.factor) + 1.0
            scale *= m * m
        return scale

    @property
    def is_fp8(self) -> bool:
        return self.quantization_config is not None

    def is_moe_layer(self, layer_idx: int) -> bool:
        return (self.n_routed_experts > 0 and layer_idx >= self.first_k_dense_replace
                and layer_idx % self.moe_layer_freq == 0)

    # ---- construction ----
    @classmethod
    def from_hf(cls, hf_config) -> "V32Config":
        """The one HF config -> V32Config conversion every engine adapter uses: `hf_config` is a config.json
        dict or a transformers config object (anything with `to_dict()`). The engine already dispatched on
        the architecture name (drafts carry MTP_ARCHITECTURE / NEXTN_ARCHITECTURE), so the name is not
        checked here; everything else is `from_dict`'s (tests/test_config.py::test_from_hf_settles_*)."""
        d = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
        d["architectures"] = [ARCHITECTURE]
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict) -> "V32Config":
        d = dict(d)
        archs = d.get("architectures") or [ARCHITECTURE]
        if ARCHITECTURE not in archs:
            raise ConfigError(f"architectures={archs!r}: expected {ARCHITECTURE!r}")
        known = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is dataclass_missing()]
        missing = [k for k in required if d.get(k) is None]
        if missing:
            raise ConfigError(f"config.json is missing required field(s) {missing} for a DeepSeek-V3.2 model")
        kw: dict[str, Any] = {k: d[k] for k in known if k in d and d[k] is not None}   # null = absent
        rs, theta = _rope_fields(d)
        if theta is not None:
            kw["rope_theta"] = theta
        kw.pop("rope_scaling", None)
        if rs is not None:
            kw["rope_scaling"] = RopeScaling(**{k: rs[k] for k in
                                                ("factor", "original_max_position_embeddings", "beta_fast",
                                                 "beta_slow", "mscale", "mscale_all_dim") if k in rs})
        qc = d.get("quantization_config")
        if qc is not None:
            kw["quantization_config"] = QuantConfig(
                quant_method=qc.get("quant_method", "fp8"), fmt=qc.get("fmt", "e4m3"),
                activation_scheme=qc.get("activation_scheme", "dynamic"),
                weight_block_size=tuple(qc.get("weight_block_size", (128, 128))),
                scale_fmt=qc.get("scale_fmt", "ue8m0"))
        if isinstance(kw.get("eos_token_id"), list):
            kw["eos_token_id"] = kw["eos_token_id"][0]
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    @classmethod
    def from_pretrained(cls, path: str) -> "V32Config":
        p = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.exists(p):
            raise ConfigError(f"no config.json at {p}")
        with open(p) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["architectures"] = [ARCHITECTURE]
        d["model_type"] = MODEL_TYPE
        if self.num_key_value_heads is None:
            d["num_key_value_heads"] = self.num_attention_heads
        if self.quantization_config is not None:
            q = asdict(self.quantization_config)
            q["weight_block_size"] = list(q["weight_block_size"])
            d["quantization_config"] = q
        else:
            d.pop("quantization_config")
        return d

    def validate(self) -> None:
        def need(cond: bool, fieldname: str, msg: str):
            if not cond:
                raise ConfigError(f"{fieldname}={getattr(self, fieldname)!r}: {msg}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "q_lora_rank",
                     "index_n_heads", "index_topk", "max_position_embeddings", "num_experts_per_tok"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, "must be a positive int")
        need(self.kv_lora_rank == SUPPORTED_KV_LORA_RANK, "kv_lora_rank",
             f"the latent cache layout (656 B/token) needs {SUPPORTED_KV_LORA_RANK}")
        need(self.qk_rope_head_dim == SUPPORTED_QK_ROPE_HEAD_DIM, "qk_rope_head_dim",
             f"the latent cache layout needs {SUPPORTED_QK_ROPE_HEAD_DIM}")
        need(self.index_head_dim == SUPPORTED_INDEX_HEAD_DIM, "index_head_dim",
             f"the indexer's Hadamard/FP8 layout (132 B/token) needs {SUPPORTED_INDEX_HEAD_DIM}")
        need(self.index_head_dim >= self.qk_rope_head_dim, "index_head_dim", "must hold the rope dims")
        for name in ("qk_nope_head_dim", "v_head_dim", "intermediate_size", "moe_intermediate_size",
                     "moe_layer_freq"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, "must be a positive int")
        need(self.first_k_dense_replace >= 0, "first_k_dense_replace", "must be >= 0")
        need(self.n_shared_experts >= 0 and self.n_routed_experts >= 0, "n_shared_experts", "must be >= 0")
        need(self.routed_scaling_factor > 0, "routed_scaling_factor", "must be > 0")
        need(self.rms_norm_eps > 0, "rms_norm_eps", "must be > 0")
        for name in ("bos_token_id", "eos_token_id"):
            need(0 <= getattr(self, name) < self.vocab_size, name, f"must be a token id in [0, {self.vocab_size})")
        if self.num_key_value_heads is not None:
            need(self.num_key_value_heads == self.num_attention_heads, "num_key_value_heads",
                 "MLA keeps one latent per token; V3.2 configs set it equal to num_attention_heads")
        need(self.first_k_dense_replace <= self.num_hidden_layers, "first_k_dense_replace",
             "cannot exceed num_hidden_layers")
        if self.n_routed_experts > 0:
            need(self.num_experts_per_tok <= self.n_routed_experts, "num_experts_per_tok",
                 f"cannot exceed n_routed_experts={self.n_routed_experts}")
            need(self.n_group >= 1 and self.n_routed_experts % self.n_group == 0, "n_group",
                 f"must divide n_routed_experts={self.n_routed_experts}")
            need(1 <= self.topk_group <= self.n_group, "topk_group", f"must be in [1, n_group={self.n_group}]")
            per_group = self.n_routed_experts // self.n_group
            need(self.topk_group * per_group >= self.num_experts_per_tok, "topk_group",
                 "the chosen groups hold fewer experts than num_experts_per_tok")
            need(self.scoring_func == "sigmoid", "scoring_func", "V3.2 routes with 'sigmoid'")
            need(self.topk_method == "noaux_tc", "topk_method", "V3.2 routes with 'noaux_tc'")
        need(self.hidden_act == "silu", "hidden_act", "only 'silu' is supported")
        need(self.num_nextn_predict_layers in (0, 1), "num_nextn_predict_layers", "0 or 1 MTP layers")
        if self.quantization_config is not None:
            q = self.quantization_config
            if q.quant_method != "fp8" or q.fmt != "e4m3":
                raise ConfigError(f"quantization_config.quant_method/fmt={q.quant_method}/{q.fmt}: only fp8/e4m3")
            if tuple(q.weight_block_size) != (FP8_BLOCK, FP8_BLOCK):
                raise ConfigError(f"quantization_config.weight_block_size={list(q.weight_block_size)}: "
                                  f"only [128, 128] block scales are supported")
            if q.activation_scheme != "dynamic":
                raise ConfigError(f"quantization_config.activation_scheme={q.activation_scheme!r}: only 'dynamic'")

    def check_positions(self, max_position: int, what: str = "prompt") -> None:
        """Raise if a sequence would run past max_position_embeddings."""
        if max_position > self.max_position_embeddings:
            raise ConfigError(f"{what} needs {max_position} positions > max_position_embeddings="
                              f"{self.max_position_embeddings}")


# ---- presets used by `deepseek-v32 make-checkpoint --preset` ----
_REAL = dict(
    vocab_size=129280, hidden_size=7168, num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128,
    intermediate_size=18432, moe_intermediate_size=2048, n_routed_experts=256, n_shared_experts=1,
    num_experts_per_tok=8, n_group=8, topk_group=4, routed_scaling_factor=2.5, first_k_dense_replace=3,
    q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
    index_n_heads=64, index_head_dim=128, index_topk=2048, max_position_embeddings=163840,
    rope_scaling=asdict(RopeScaling()), quantization_config={**asdict(QuantConfig()), "weight_block_size": [128, 128]},
)
PRESETS: dict[str, dict] = {
    # The real DeepSeek-V3.2 shape (for reference and validation; far too big to generate here).
    "full": dict(_REAL),
    # Real per-layer dims, 2 layers (1 dense + 1 MoE) + MTP: GPU benchmarks, generated in memory there.
    "bench": dict(_REAL, num_hidden_layers=2, first_k_dense_replace=1),
    # CPU tests: kv_lora 512 + rope 64 (the engines' MLA CPU paths need head 576) and index_head_dim 128 kept;
    # everything else small multiples of 128. index_topk 32 so short prompts already exercise sparsity.
    "tiny": dict(_REAL, vocab_size=1024, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, intermediate_size=512, moe_intermediate_size=256, n_routed_experts=8,
                 num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1, q_lora_rank=256,
                 index_n_heads=8, index_topk=32, max_position_embeddings=4096),
    # benchmarks/context_curve (issue 15): the tiny widths with the real indexer (64 heads, index_topk 2048),
    # 3 layers (1 dense + 2 MoE of 8 experts), no MTP; 163840 positions so the cost curve reaches 32K+.
    "topk2048": dict(_REAL, vocab_size=1024, hidden_size=256, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=4, intermediate_size=512, moe_intermediate_size=256, n_routed_experts=8,
                     num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1, q_lora_rank=256,
                     num_nextn_predict_layers=0),
    # benchmarks/context_curve: the real attention widths (128 heads, q_lora 1536, kv_lora 512, qk 128+64,
    # v 128, indexer 64 x 128, index_topk 2048) around a narrow residual stream (hidden 1024), 2 dense-MLP
    # layers (intermediate 2048), vocab 1024, no MTP: 185M parameters, 188 MB as FP8, 370 MB as bf16, so an
    # engine serves it in a few GB while attention + indexer cost per token is the real model's per layer.
    "real-width": dict(_REAL, vocab_size=1024, hidden_size=1024, num_hidden_layers=2, intermediate_size=2048,
                       first_k_dense_replace=2, n_routed_experts=8, num_experts_per_tok=2, n_group=4,
                       topk_group=2, moe_intermediate_size=256, num_nextn_predict_layers=0),
}


def preset_config(name: str, **overrides) -> V32Config:
    if name not in PRESETS:
        raise ConfigError(f"preset={name!r}: choose one of {sorted(PRESETS)}")
    return V32Config.from_dict({"architectures": [ARCHITECTURE], **PRESETS[name], **overrides})


def _rope_fields(d: dict):
    """(YaRN rope_scaling dict or None, rope_theta or None) from a config dict, transformers 4 or 5 style.
    Settled rules (the adapters' former conversions disagreed on each; tests/test_config.py):
      - rope_scaling null, missing or {} -> taken from rope_parameters (transformers 5 folds it there);
      - rope type "default" (in either place) = plain rope: no scaling (not an error);
      - rope_theta: the top-level field when set, else rope_parameters["rope_theta"], else the default;
      - any other rope type than yarn / deepseek_yarn is a ConfigError naming rope_scaling.type."""
    rs, rp = d.get("rope_scaling"), d.get("rope_parameters")
    theta = d.get("rope_theta")
    if isinstance(rp, dict):
        if theta is None:
            theta = rp.get("rope_theta")
        if not rs and rp.get("rope_type", rp.get("type")) is not None:
            rs = rp
    if not rs:
        return None, theta
    if not isinstance(rs, dict):
        raise ConfigError(f"rope_scaling must be an object, got {type(rs).__name__}")
    rtype = rs.get("type", rs.get("rope_type"))
    if rtype == "default":
        return None, theta
    if rtype not in ("yarn", "deepseek_yarn"):
        raise ConfigError(f"rope_scaling.type={rtype!r}: only 'yarn' is supported")
    return rs, theta


def dataclass_missing():
    from dataclasses import MISSING
    return MISSING
