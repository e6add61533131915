"""V32Config: parses the real DeepSeek-V3.2 config.json, and rejects each unusable field with one ConfigError
naming that field (never a crash deep inside a kernel later)."""
import copy
import json
import math

import pytest

from deepseek_v32_plugin.config import ARCHITECTURE, PRESETS, ConfigError, V32Config, preset_config

# deepseek-ai/DeepSeek-V3.2 config.json, as published (the fields the model uses and the ones it ignores)
REAL = {
    "architectures": ["DeepseekV32ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu",
    "hidden_size": 7168, "index_head_dim": 128, "index_n_heads": 64, "index_topk": 2048,
    "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
    "model_type": "deepseek_v32", "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8,
    "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1,
    "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "tie_word_embeddings": False,
    "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "transformers_version": "4.44.2",
    "use_cache": True, "v_head_dim": 128, "vocab_size": 129280,
}


def _bad(edit) -> dict:
    d = copy.deepcopy(REAL)
    edit(d)
    return d


def test_real_config_parses():
    cfg = V32Config.from_dict(REAL)
    assert cfg == preset_config("full")
    assert (cfg.qk_head_dim, cfg.mla_cache_dim) == (192, 576)
    m = 0.1 * math.log(40) + 1
    assert cfg.softmax_scale == pytest.approx(192 ** -0.5 * m * m)
    assert cfg.is_fp8 and cfg.quantization_config.weight_block_size == (128, 128)
    assert cfg.rope_scaling.factor == 40 and cfg.rope_scaling.original_max_position_embeddings == 4096
    assert [cfg.is_moe_layer(i) for i in (0, 2, 3, 60)] == [False, False, True, True]


def test_round_trips_and_ignores_unknown_fields(tmp_path):
    for name in PRESETS:
        cfg = preset_config(name)
        assert V32Config.from_dict(cfg.to_dict()) == cfg
        assert V32Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert V32Config.from_dict({**REAL, "some_future_field": 3}) == preset_config("full")
    assert V32Config.from_dict({**REAL, "eos_token_id": [1, 2]}).eos_token_id == 1
    assert V32Config.from_dict({k: v for k, v in REAL.items() if k != "quantization_config"}).is_fp8 is False
    p = tmp_path / "config.json"
    p.write_text(json.dumps(REAL))
    assert V32Config.from_pretrained(str(tmp_path)) == V32Config.from_pretrained(str(p)) == preset_config("full")


def test_presets():
    tiny, bench = preset_config("tiny"), preset_config("bench")
    # tiny: what the engines' CPU paths need, dims multiples of 128, a small index_topk
    assert (tiny.kv_lora_rank, tiny.qk_rope_head_dim, tiny.index_head_dim) == (512, 64, 128)
    assert tiny.index_topk <= 64 and tiny.hidden_size % 128 == 0 and tiny.q_lora_rank % 128 == 0
    assert tiny.first_k_dense_replace < tiny.num_hidden_layers  # both a dense and an MoE layer
    # bench: the real per-layer dims with few layers
    full = preset_config("full")
    for f in ("hidden_size", "num_attention_heads", "q_lora_rank", "n_routed_experts", "moe_intermediate_size",
              "index_n_heads", "index_topk", "vocab_size"):
        assert getattr(bench, f) == getattr(full, f), f
    assert bench.num_hidden_layers < 4
    assert preset_config("tiny", index_topk=64).index_topk == 64
    with pytest.raises(ConfigError, match="preset"):
        preset_config("huge")


REQUIRED = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "moe_intermediate_size", "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "n_group",
            "topk_group", "routed_scaling_factor", "first_k_dense_replace", "q_lora_rank", "kv_lora_rank",
            "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "index_n_heads", "index_head_dim", "index_topk",
            "max_position_embeddings"]


@pytest.mark.parametrize("field", REQUIRED)
def test_missing_required_field_is_named(field):
    with pytest.raises(ConfigError, match=field):
        V32Config.from_dict(_bad(lambda d: d.pop(field)))


def test_v3_config_without_index_fields():
    """A DeepSeek-V3 / V3.1 config (no index_* fields) is not a V3.2 model: say which fields are missing."""
    d = _bad(lambda d: [d.pop(k) for k in ("index_n_heads", "index_head_dim", "index_topk")])
    with pytest.raises(ConfigError) as e:
        V32Config.from_dict(d)
    assert all(k in str(e.value) for k in ("index_n_heads", "index_head_dim", "index_topk"))


def _set(**kw):
    return lambda d: d.update(kw)


BAD = [  # (id, edit, the field the error must name)
    ("vocab_size=0", _set(vocab_size=0), "vocab_size"),
    ("hidden_size=str", _set(hidden_size="7168"), "hidden_size"),
    ("num_hidden_layers=0", _set(num_hidden_layers=0), "num_hidden_layers"),
    ("heads=-1", _set(num_attention_heads=-1), "num_attention_heads"),
    ("q_lora_rank=0", _set(q_lora_rank=0), "q_lora_rank"),
    ("index_topk=0", _set(index_topk=0), "index_topk"),
    ("index_topk=float", _set(index_topk=2048.0), "index_topk"),
    ("index_n_heads=0", _set(index_n_heads=0), "index_n_heads"),
    ("index_head_dim=64", _set(index_head_dim=64), "index_head_dim"),
    ("kv_lora_rank=256", _set(kv_lora_rank=256), "kv_lora_rank"),
    ("qk_rope_head_dim=32", _set(qk_rope_head_dim=32), "qk_rope_head_dim"),
    ("qk_nope_head_dim=0", _set(qk_nope_head_dim=0), "qk_nope_head_dim"),
    ("kv_heads!=heads", _set(num_key_value_heads=8), "num_key_value_heads"),
    ("max_pos=0", _set(max_position_embeddings=0), "max_position_embeddings"),
    ("first_k_dense>layers", _set(first_k_dense_replace=62), "first_k_dense_replace"),
    ("experts_per_tok>experts", _set(num_experts_per_tok=300), "num_experts_per_tok"),
    ("experts_per_tok=0", _set(num_experts_per_tok=0), "num_experts_per_tok"),
    ("n_group!|experts", _set(n_group=7), "n_group"),
    ("topk_group>n_group", _set(topk_group=9), "topk_group"),
    ("topk_group=0", _set(topk_group=0), "topk_group"),
    ("groups too few", _set(topk_group=1, num_experts_per_tok=64), "topk_group"),
    ("scoring=softmax", _set(scoring_func="softmax"), "scoring_func"),
    ("topk_method=greedy", _set(topk_method="greedy"), "topk_method"),
    ("act=gelu", _set(hidden_act="gelu"), "hidden_act"),
    ("mtp=2", _set(num_nextn_predict_layers=2), "num_nextn_predict_layers"),
    ("arch", _set(architectures=["DeepseekV3ForCausalLM"]), "architectures"),
    ("rope type", lambda d: d["rope_scaling"].update(type="linear"), "rope_scaling"),
    ("rope not dict", _set(rope_scaling=[40]), "rope_scaling"),
    ("quant method", lambda d: d["quantization_config"].update(quant_method="awq"), "quant_method"),
    ("quant fmt", lambda d: d["quantization_config"].update(fmt="e5m2"), "fmt"),
    ("block 64", lambda d: d["quantization_config"].update(weight_block_size=[64, 64]), "weight_block_size"),
    ("static act", lambda d: d["quantization_config"].update(activation_scheme="static"), "activation_scheme"),
    ("v_head_dim=0", _set(v_head_dim=0), "v_head_dim"),
    ("moe_layer_freq=0", _set(moe_layer_freq=0), "moe_layer_freq"),
    ("first_k_dense<0", _set(first_k_dense_replace=-1), "first_k_dense_replace"),
    ("moe_intermediate=0", _set(moe_intermediate_size=0), "moe_intermediate_size"),
    ("intermediate=0", _set(intermediate_size=0), "intermediate_size"),
    ("n_shared<0", _set(n_shared_experts=-1), "n_shared_experts"),
    ("routed_scaling=0", _set(routed_scaling_factor=0), "routed_scaling_factor"),
    ("rms_eps=0", _set(rms_norm_eps=0), "rms_norm_eps"),
    ("eos>=vocab", _set(eos_token_id=129280), "eos_token_id"),
    ("bos<0", _set(bos_token_id=-1), "bos_token_id"),
]


@pytest.mark.parametrize("edit,field", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_field_is_named(edit, field):
    with pytest.raises(ConfigError, match=field):
        V32Config.from_dict(_bad(edit))


def test_check_positions():
    cfg = preset_config("tiny")
    cfg.check_positions(cfg.max_position_embeddings)
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        cfg.check_positions(cfg.max_position_embeddings + 1, "prompt")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        V32Config.from_pretrained(str(tmp_path))


def test_transformers5_rope_parameters_are_understood():
    """transformers 5 configs carry rope_theta + YaRN in rope_parameters (rope_scaling None): same config."""
    cfg = preset_config("tiny")
    d = cfg.to_dict()
    rs = d.pop("rope_scaling")
    d["rope_scaling"] = None
    d["rope_theta"] = None
    d["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, **{k: v for k, v in rs.items() if k != "type"}}
    again = V32Config.from_dict(d)
    assert again.rope_scaling == cfg.rope_scaling and again.rope_theta == 10000.0
    assert again.softmax_scale == cfg.softmax_scale


# ---- V32Config.from_hf: the one HF config -> V32Config conversion ----
# Before it, three conversions existed (config.py from_dict, the vLLM adapter's checks.v32_config, the SGLang
# adapter's model.v32_config) and disagreed on these inputs; each test below settles one of them.
def _yarn_params(cfg):
    rs = cfg.to_dict()["rope_scaling"]
    return {k: v for k, v in rs.items() if k != "type"}


class _HFObject:   # what the engines hand over: a transformers config object
    def __init__(self, d):
        self.d = d

    def to_dict(self):
        return dict(self.d)


def test_from_hf_accepts_objects_and_dicts_and_draft_architectures():
    """vLLM's took objects only, SGLang's both, from_dict dicts only; both adapters forced the architecture
    (drafts are named DeepseekV32MTPModel by vLLM, DeepseekV3ForCausalLMNextN by SGLang) while from_dict
    rejects them. Settled: from_hf takes both and trusts the engine's dispatch; from_dict keeps the check."""
    from deepseek_v32_plugin.config import MTP_ARCHITECTURE, NEXTN_ARCHITECTURE
    cfg = preset_config("tiny")
    for arch in (ARCHITECTURE, MTP_ARCHITECTURE, NEXTN_ARCHITECTURE):
        d = dict(cfg.to_dict(), architectures=[arch])
        assert V32Config.from_hf(d) == cfg and V32Config.from_hf(_HFObject(d)) == cfg
    with pytest.raises(ConfigError, match="architectures"):
        V32Config.from_dict(dict(cfg.to_dict(), architectures=[MTP_ARCHITECTURE]))


def test_from_hf_settles_default_rope_type():
    """rope_scaling {"type": "default"}: vLLM's read plain rope, SGLang's and from_dict raised. Settled:
    plain rope (HF's meaning of "default"), in rope_scaling and in rope_parameters alike."""
    cfg = preset_config("tiny")
    for d in (dict(cfg.to_dict(), rope_scaling={"type": "default"}),
              dict(cfg.to_dict(), rope_scaling=None, rope_theta=None,
                   rope_parameters={"rope_type": "default", "rope_theta": 5e4})):
        got = V32Config.from_hf(d)
        assert got.rope_scaling is None and got.softmax_scale == cfg.qk_head_dim ** -0.5
    assert V32Config.from_hf(d).rope_theta == 5e4


def test_from_hf_settles_null_rope_theta():
    """rope_theta null and no rope_parameters: SGLang's dropped it (default 10000), vLLM's and from_dict kept
    None (a rope without a base). Settled: null = absent, for every field."""
    cfg = preset_config("tiny")
    assert V32Config.from_hf(dict(cfg.to_dict(), rope_theta=None)).rope_theta == 10000.0
    assert V32Config.from_hf(dict(cfg.to_dict(), num_key_value_heads=None)).num_key_value_heads is None
    with pytest.raises(ConfigError, match="index_topk"):
        V32Config.from_hf(dict(cfg.to_dict(), index_topk=None))


def test_from_hf_settles_rope_theta_in_both_places():
    """rope_theta at the top level and in rope_parameters, different: vLLM's took rope_parameters', SGLang's
    and from_dict the top-level one. Settled: the top-level field (config.json's own) when set."""
    cfg = preset_config("tiny")
    d = dict(cfg.to_dict(), rope_theta=20000.0, rope_scaling=None,
             rope_parameters={"rope_type": "yarn", "rope_theta": 30000.0, **_yarn_params(cfg)})
    got = V32Config.from_hf(d)
    assert got.rope_theta == 20000.0 and got.rope_scaling == cfg.rope_scaling


def test_from_hf_settles_empty_rope_scaling():
    """rope_scaling {} beside transformers 5's rope_parameters: both adapters read rope_parameters, from_dict
    raised (type None). Settled: empty = absent, YaRN from rope_parameters."""
    cfg = preset_config("tiny")
    d = dict(cfg.to_dict(), rope_scaling={}, rope_parameters={"rope_type": "yarn", **_yarn_params(cfg)})
    got = V32Config.from_hf(d)
    assert got.rope_scaling == cfg.rope_scaling and got.softmax_scale == cfg.softmax_scale


def test_from_hf_agrees_on_everything_else():
    """Where the three agreed (deepseek_yarn = yarn, rope_scaling beats rope_parameters, unknown rope types
    refused, eos lists), from_hf does the same."""
    cfg = preset_config("tiny")
    d = dict(cfg.to_dict(), rope_scaling={"type": "deepseek_yarn", **_yarn_params(cfg)},
             rope_parameters={"rope_type": "yarn", "factor": 2.0}, eos_token_id=[1, 2])
    got = V32Config.from_hf(d)
    assert got.rope_scaling == cfg.rope_scaling and got.eos_token_id == 1
    with pytest.raises(ConfigError, match="rope_scaling.type"):
        V32Config.from_hf(dict(cfg.to_dict(), rope_scaling={"type": "linear", "factor": 2.0}))
