"""Checkpoint format: the name table, the random-weight writer, the validating loader, the tokenizer, the CLI.

Independent checks: the table against HF transformers' own deepseek_v32 module tree (names and shapes),
tensors written vs tensors generated in memory (bitwise), FP8 blocks against the fp32 weights they encode,
and every bad-input path raising one error that names the shard / tensor / field.
"""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepseek_v32_plugin import checkpoint as ck
from deepseek_v32_plugin.checkpoint import (CheckpointError, expected_tensors, iter_checkpoint, load_checkpoint,
                                            make_state_dict, write_checkpoint)
from deepseek_v32_plugin.config import ConfigError, V32Config, preset_config
from deepseek_v32_plugin.tokenizer import BOS, EOS, SPECIAL_TOKENS

SEED = 7


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: extra OpenMP threads only add contention on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cfg():
    return preset_config("tiny")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, cfg):
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    write_checkpoint(cfg, path, seed=SEED)
    return path


@pytest.fixture
def copy_dir(tiny_dir, tmp_path):
    """A private copy of the tiny checkpoint to damage."""
    dst = str(tmp_path / "copy")
    shutil.copytree(tiny_dir, dst)
    return dst


def _index(path):
    with open(os.path.join(path, ck.INDEX_FILE)) as f:
        return json.load(f)


def _shard_of(path, name):
    return _index(path)["weight_map"][name]


def _rewrite_shard(path, shard, fn):
    fp = os.path.join(path, shard)
    tensors = load_file(fp)
    fn(tensors)
    save_file(tensors, fp, metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------- the table
def test_table_matches_hf_transformers_module_tree(cfg):
    """Every non-expert name and shape equals HF transformers' DeepseekV32ForCausalLM state dict; the fused
    expert parameters have the stacked shapes of our per-expert tensors."""
    transformers = pytest.importorskip("transformers")
    fields = {k: v for k, v in ck.config_json(cfg).items() if k != "model_type"}
    hf_cfg = transformers.AutoConfig.for_model("deepseek_v32", **fields)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    hf = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = {k: s for k, s in expected_tensors(cfg, include_mtp=False).items() if not k.endswith("_scale_inv")}
    is_routed = lambda k: ".mlp.experts." in k  # noqa: E731
    assert {k: s.shape for k, s in ours.items() if not is_routed(k)} == {k: v for k, v in hf.items()
                                                                         if not is_routed(k)}
    for i in range(cfg.first_k_dense_replace, cfg.num_hidden_layers):
        e, h, inter = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        assert hf[f"model.layers.{i}.mlp.experts.gate_up_proj"] == (e, 2 * inter, h)
        assert hf[f"model.layers.{i}.mlp.experts.down_proj"] == (e, h, inter)
        assert ours[f"model.layers.{i}.mlp.experts.{e - 1}.gate_proj.weight"].shape == (inter, h)
        assert ours[f"model.layers.{i}.mlp.experts.{e - 1}.down_proj.weight"].shape == (h, inter)


def test_table_real_v32_shapes_and_dtypes():
    """Spot checks against the real DeepSeek-V3.2 checkpoint's tensors (the "full" preset)."""
    specs = expected_tensors(preset_config("full"))
    L = 61

    def spec(name):
        return specs[name].shape, specs[name].dtype

    assert spec("model.embed_tokens.weight") == ((129280, 7168), "bfloat16")
    assert spec("lm_head.weight") == ((129280, 7168), "bfloat16")
    a = "model.layers.0.self_attn"
    assert spec(f"{a}.q_a_proj.weight") == ((1536, 7168), "float8_e4m3fn")
    assert spec(f"{a}.q_a_proj.weight_scale_inv") == ((12, 56), "float32")
    assert spec(f"{a}.q_b_proj.weight") == ((128 * 192, 1536), "float8_e4m3fn")
    assert spec(f"{a}.kv_a_proj_with_mqa.weight") == ((576, 7168), "float8_e4m3fn")
    assert spec(f"{a}.kv_a_proj_with_mqa.weight_scale_inv") == ((5, 56), "float32")  # ceil(576 / 128)
    assert spec(f"{a}.kv_b_proj.weight") == ((128 * 256, 512), "float8_e4m3fn")
    assert spec(f"{a}.o_proj.weight") == ((7168, 128 * 128), "float8_e4m3fn")
    assert spec(f"{a}.q_a_layernorm.weight") == ((1536,), "bfloat16")
    assert spec(f"{a}.kv_a_layernorm.weight") == ((512,), "bfloat16")
    assert spec(f"{a}.indexer.wq_b.weight") == ((64 * 128, 1536), "float8_e4m3fn")
    assert spec(f"{a}.indexer.wk.weight") == ((128, 7168), "float8_e4m3fn")
    assert spec(f"{a}.indexer.wk.weight_scale_inv") == ((1, 56), "float32")
    assert spec(f"{a}.indexer.k_norm.weight") == ((128,), "float32")
    assert spec(f"{a}.indexer.k_norm.bias") == ((128,), "float32")
    assert spec(f"{a}.indexer.weights_proj.weight") == ((64, 7168), "bfloat16")
    assert f"{a}.indexer.weights_proj.weight_scale_inv" not in specs
    for i in range(3):  # first_k_dense_replace = 3: dense MLP
        assert spec(f"model.layers.{i}.mlp.gate_proj.weight") == ((18432, 7168), "float8_e4m3fn")
        assert f"model.layers.{i}.mlp.gate.weight" not in specs
    for i in (3, L - 1, L):  # MoE layers, the MTP layer included
        m = f"model.layers.{i}.mlp"
        assert spec(f"{m}.gate.weight") == ((256, 7168), "bfloat16")
        assert spec(f"{m}.gate.e_score_correction_bias") == ((256,), "float32")
        assert spec(f"{m}.experts.255.down_proj.weight") == ((7168, 2048), "float8_e4m3fn")
        assert spec(f"{m}.experts.255.down_proj.weight_scale_inv") == ((56, 16), "float32")
        assert spec(f"{m}.shared_experts.up_proj.weight") == ((2048, 7168), "float8_e4m3fn")
        assert f"{m}.experts.256.down_proj.weight" not in specs
    p = f"model.layers.{L}"
    assert spec(f"{p}.eh_proj.weight") == ((7168, 2 * 7168), "bfloat16")
    for n in ("enorm", "hnorm", "shared_head.norm"):
        assert spec(f"{p}.{n}.weight") == ((7168,), "bfloat16")
    assert spec(f"{p}.shared_head.head.weight") == ((129280, 7168), "bfloat16")
    assert spec(f"{p}.embed_tokens.weight") == ((129280, 7168), "bfloat16")
    assert spec(f"{p}.self_attn.indexer.wq_b.weight")[0] == (8192, 1536)
    assert not any(k.startswith(f"model.layers.{L + 1}.") for k in specs)
    # every FP8 weight has exactly one scale, and nothing else is FP8
    fp8 = [k for k, s in specs.items() if s.fp8]
    assert all(specs[k].dtype == "float8_e4m3fn" and k + "_scale_inv" in specs for k in fp8)
    assert sum(k.endswith("_scale_inv") for k in specs) == len(fp8)
    assert all(s.dtype != "float8_e4m3fn" for k, s in specs.items() if not s.fp8)
    # 3 dense + 58 MoE layers + 1 MTP layer
    assert sum(k.endswith(".experts.0.gate_proj.weight") for k in specs) == 59
    assert sum(k.endswith("indexer.wq_b.weight") for k in specs) == 62
    assert list(expected_tensors(preset_config("full"), include_mtp=False)) == [
        k for k in specs if not k.startswith(f"model.layers.{L}.")]


def test_table_parameter_counts_match_published_totals():
    """DeepSeek-V3's published sizes: 671B parameters in the main model, 685B with the MTP module (V3.2 adds
    the indexers, ~0.9B)."""
    specs = expected_tensors(preset_config("full"))
    params = lambda pred: sum(s.numel for k, s in specs.items() if pred(k) and not k.endswith("_scale_inv"))  # noqa
    main = params(lambda k: not k.startswith("model.layers.61.") and ".indexer." not in k)
    mtp = params(lambda k: k.startswith("model.layers.61.") and ".indexer." not in k)
    assert 670.5e9 < main < 671.5e9
    assert 684.0e9 < main + mtp < 685.5e9
    assert 0.8e9 < params(lambda k: ".indexer." in k) < 1.0e9


def test_table_without_quantization_config_is_bf16():
    cfg = preset_config("tiny", quantization_config=None)
    specs = expected_tensors(cfg)
    assert not any(k.endswith("_scale_inv") or s.fp8 for k, s in specs.items())
    assert specs["model.layers.0.self_attn.q_a_proj.weight"].dtype == "bfloat16"


def test_checkpoint_module_imports_without_torch():
    code = ("import sys; from deepseek_v32_plugin.checkpoint import expected_tensors; "
            "from deepseek_v32_plugin.config import preset_config; "
            "n = len(expected_tensors(preset_config('full'))); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(n)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 90000


# ------------------------------------------------------------------------------------------- write / load
def test_write_load_bitwise_identical(tiny_dir, cfg):
    cfg2, loaded = load_checkpoint(tiny_dir)
    assert cfg2 == cfg
    specs = expected_tensors(cfg)
    assert list(loaded) == list(specs)
    generated = make_state_dict(cfg, seed=SEED)
    for name, spec in specs.items():
        t = loaded[name]
        assert tuple(t.shape) == spec.shape and t.dtype == spec.torch_dtype, name
        assert _equal(t, generated[name]), name
    # streaming gives the same tensors
    streamed = dict(iter_checkpoint(tiny_dir))
    assert streamed.keys() == loaded.keys() and all(_equal(streamed[k], loaded[k]) for k in loaded)
    only = dict(iter_checkpoint(tiny_dir, names=lambda n: n.startswith("model.layers.0.")))
    assert only and all(k.startswith("model.layers.0.") for k in only)


def test_write_is_deterministic_and_seed_dependent(tiny_dir, cfg, tmp_path):
    again = str(tmp_path / "again")
    write_checkpoint(cfg, again, seed=SEED)
    for f in sorted(os.listdir(tiny_dir)):
        with open(os.path.join(tiny_dir, f), "rb") as a, open(os.path.join(again, f), "rb") as b:
            assert a.read() == b.read(), f
    other = make_state_dict(cfg, seed=SEED + 1)
    _, mine = load_checkpoint(tiny_dir)
    assert not _equal(other["model.layers.0.self_attn.q_a_proj.weight"],
                      mine["model.layers.0.self_attn.q_a_proj.weight"])


def test_index_covers_every_tensor_once(tiny_dir, cfg):
    idx = _index(tiny_dir)
    wm = idx["weight_map"]
    specs = expected_tensors(cfg)
    assert set(wm) == set(specs)
    shards = sorted(set(wm.values()))
    n = len(shards)
    assert n > 1, "the tiny checkpoint should be sharded like the real one"
    assert shards == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    seen = []
    for shard in shards:
        hdr = ck.read_safetensors_header(os.path.join(tiny_dir, shard))
        assert set(hdr) == {k for k, v in wm.items() if v == shard}, shard
        seen += list(hdr)
    assert sorted(seen) == sorted(specs)  # each exactly once
    assert idx["metadata"]["total_size"] == sum(s.nbytes for s in specs.values())
    # an FP8 weight and its scale sit in the same shard
    assert all(wm[k] == wm[k + "_scale_inv"] for k, s in specs.items() if s.fp8)


def test_mtp_copies_main_embedding_and_head(tiny_dir, cfg):
    _, sd = load_checkpoint(tiny_dir)
    L = cfg.num_hidden_layers
    assert _equal(sd[f"model.layers.{L}.embed_tokens.weight"], sd["model.embed_tokens.weight"])
    assert _equal(sd[f"model.layers.{L}.shared_head.head.weight"], sd["lm_head.weight"])
    assert not _equal(sd[f"model.layers.{L}.self_attn.q_a_proj.weight"], sd["model.layers.1.self_attn.q_a_proj.weight"])
    no_mtp = make_state_dict(cfg, seed=SEED, include_mtp=False)
    assert not any(k.startswith(f"model.layers.{L}.") for k in no_mtp)
    _, loaded = load_checkpoint(tiny_dir, include_mtp=False)
    assert loaded.keys() == no_mtp.keys()


def test_config_files(tiny_dir, cfg):
    assert V32Config.from_pretrained(tiny_dir) == cfg
    with open(os.path.join(tiny_dir, "config.json")) as f:
        d = json.load(f)
    real_fields = {  # the keys of deepseek-ai/DeepSeek-V3.2's config.json
        "architectures", "attention_bias", "attention_dropout", "bos_token_id", "eos_token_id", "ep_size",
        "first_k_dense_replace", "hidden_act", "hidden_size", "index_head_dim", "index_n_heads", "index_topk",
        "initializer_range", "intermediate_size", "kv_lora_rank", "max_position_embeddings", "model_type",
        "moe_intermediate_size", "moe_layer_freq", "n_group", "n_routed_experts", "n_shared_experts",
        "norm_topk_prob", "num_attention_heads", "num_experts_per_tok", "num_hidden_layers",
        "num_key_value_heads", "num_nextn_predict_layers", "q_lora_rank", "qk_nope_head_dim",
        "qk_rope_head_dim", "quantization_config", "rms_norm_eps", "rope_scaling", "rope_theta",
        "routed_scaling_factor", "scoring_func", "tie_word_embeddings", "topk_group", "topk_method",
        "torch_dtype", "transformers_version", "use_cache", "v_head_dim", "vocab_size"}
    assert real_fields <= set(d), real_fields - set(d)
    assert d["architectures"] == ["DeepseekV32ForCausalLM"] and d["model_type"] == "deepseek_v32"
    assert d["quantization_config"] == {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                        "weight_block_size": [128, 128], "scale_fmt": "ue8m0"}
    assert d["rope_scaling"]["type"] == "yarn" and d["rope_scaling"]["factor"] == 40
    with open(os.path.join(tiny_dir, "generation_config.json")) as f:
        g = json.load(f)
    assert (g["bos_token_id"], g["eos_token_id"]) == (cfg.bos_token_id, cfg.eos_token_id)


# ------------------------------------------------------------------------------------------- FP8 blocks
def test_fp8_scales_are_powers_of_two_and_encode_the_weights(tiny_dir, cfg):
    _, sd = load_checkpoint(tiny_dir)
    specs = expected_tensors(cfg)
    fp8_names = [k for k, s in specs.items() if s.fp8]
    assert len(fp8_names) > 50
    for name in fp8_names:
        q, s = sd[name], sd[name + "_scale_inv"]
        assert s.dtype == torch.float32 and (s > 0).all(), name
        e = torch.log2(s)
        assert torch.equal(e, e.round()), f"{name}_scale_inv is not a power of two"
        w = ck.random_weight(cfg, name, seed=SEED)  # the fp32 weight the block encodes
        full_s = s.repeat_interleave(128, 0)[: q.shape[0]].repeat_interleave(128, 1)[:, : q.shape[1]]
        deq = q.float() * full_s
        # e4m3: 3 mantissa bits -> relative error <= 2^-4 for normals, absolute <= 2^-10 * scale for subnormals
        assert ((deq - w).abs() <= w.abs() * 2 ** -4 + full_s * 2 ** -10).all(), name
        # ue8m0 = 2^ceil(log2(amax / 448)): each block's largest value lands in (224, 448]
        a = torch.nn.functional.pad(q.float().abs(), (0, -q.shape[1] % 128, 0, -q.shape[0] % 128))
        blk = a.reshape(a.shape[0] // 128, 128, a.shape[1] // 128, 128).amax(dim=(1, 3))
        assert ((blk >= 224) & (blk <= 448)).all(), name
        # not flushed: the weights keep their N(0, 1/fan_in) spread and almost no zeros
        assert (q.float() == 0).float().mean() < 0.01, name
        assert abs(deq.std().item() * math.sqrt(q.shape[1]) - 1) < 0.15, name


def test_other_tensors_are_well_scaled(tiny_dir, cfg):
    _, sd = load_checkpoint(tiny_dir)
    for name, t in sd.items():
        assert torch.isfinite(t.float()).all(), name
        if name.endswith("norm.weight"):
            assert (t.float() - 1).abs().max() < 0.2, name
    bias = sd["model.layers.1.mlp.gate.e_score_correction_bias"]
    assert bias.dtype == torch.float32 and 0 < bias.abs().max() < 0.5
    assert sd["model.layers.0.self_attn.indexer.k_norm.bias"].abs().max() < 0.2
    head = sd["lm_head.weight"].float()
    # logits of a unit-RMS hidden state have std ~ head_std * sqrt(hidden): peaked, not uniform
    assert head.std().item() * math.sqrt(cfg.hidden_size) > 3.0


def test_lm_head_gives_peaked_next_token_distributions(tiny_dir, cfg):
    """Through the whole reference model: greedy next-token distributions on random prompts are peaked."""
    model_mod = pytest.importorskip("deepseek_v32_plugin.model")
    c, sd = load_checkpoint(tiny_dir)
    m = model_mod.ReferenceModel(c, sd)
    g = torch.Generator().manual_seed(0)
    top1 = []
    for _ in range(3):
        cache = m.new_cache(2)
        seq = cache.new_sequence()
        logits, _ = m.forward(torch.randint(3, 900, (24,), generator=g), seq, cache)
        top1.append(logits.softmax(-1).max(-1).values)
    top1 = torch.cat(top1)
    assert (top1 > 0.2).float().mean() > 0.5, top1


# ------------------------------------------------------------------------------------------- bad input
def test_missing_shard(copy_dir):
    shard = _shard_of(copy_dir, "lm_head.weight")
    os.remove(os.path.join(copy_dir, shard))
    with pytest.raises(CheckpointError, match=rf"shard {shard}: file missing"):
        load_checkpoint(copy_dir)
    with pytest.raises(CheckpointError, match=shard):
        iter_checkpoint(copy_dir)  # raised before iterating


def test_truncated_shard(copy_dir):
    shard = _shard_of(copy_dir, "lm_head.weight")
    fp = os.path.join(copy_dir, shard)
    size = os.path.getsize(fp)
    with open(fp, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(CheckpointError, match=rf"shard {shard}: tensor .* past the end"):
        load_checkpoint(copy_dir)


def test_missing_tensor_not_in_index(copy_dir):
    name = "model.layers.1.self_attn.indexer.wk.weight_scale_inv"
    idx = _index(copy_dir)
    del idx["weight_map"][name]
    with open(os.path.join(copy_dir, ck.INDEX_FILE), "w") as f:
        json.dump(idx, f)
    with pytest.raises(CheckpointError, match=rf"tensor {name}: missing"):
        load_checkpoint(copy_dir)


def test_missing_tensor_in_shard(copy_dir):
    name = "model.layers.0.self_attn.indexer.k_norm.bias"
    _rewrite_shard(copy_dir, _shard_of(copy_dir, name), lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"tensor {name}: missing from shard"):
        load_checkpoint(copy_dir)


def test_wrong_shape(copy_dir):
    name = "model.layers.1.mlp.experts.3.up_proj.weight"

    def damage(t):
        t[name] = t[name][:128].contiguous()
    _rewrite_shard(copy_dir, _shard_of(copy_dir, name), damage)
    with pytest.raises(CheckpointError, match=rf"tensor {name}: shape \[128, 256\], expected \[256, 256\]"):
        load_checkpoint(copy_dir)


@pytest.mark.parametrize("name,dtype", [
    ("model.layers.0.self_attn.q_b_proj.weight", torch.bfloat16),         # should be FP8
    ("model.layers.0.self_attn.q_b_proj.weight_scale_inv", torch.bfloat16),  # should be fp32
    ("model.layers.1.mlp.gate.e_score_correction_bias", torch.bfloat16),  # should be fp32
    ("model.norm.weight", torch.float32),                                 # should be bf16
])
def test_wrong_dtype(copy_dir, name, dtype):
    def damage(t):
        t[name] = t[name].float().to(dtype)
    _rewrite_shard(copy_dir, _shard_of(copy_dir, name), damage)
    with pytest.raises(CheckpointError, match=rf"tensor {name}: dtype {str(dtype)[6:]}, expected"):
        load_checkpoint(copy_dir)


def test_unexpected_tensor(copy_dir):
    name = "model.layers.0.self_attn.rotary_emb.inv_freq"
    shard = _shard_of(copy_dir, "model.norm.weight")
    _rewrite_shard(copy_dir, shard, lambda t: t.__setitem__(name, torch.ones(32)))
    idx = _index(copy_dir)
    idx["weight_map"][name] = shard
    with open(os.path.join(copy_dir, ck.INDEX_FILE), "w") as f:
        json.dump(idx, f)
    with pytest.raises(CheckpointError, match=rf"tensor {name}: not part of"):
        load_checkpoint(copy_dir)
    _, sd = load_checkpoint(copy_dir, strict=False)
    assert name not in sd and "model.norm.weight" in sd


def test_all_problems_reported_in_one_error(copy_dir):
    a, b = "model.norm.weight", "model.layers.0.mlp.up_proj.weight"
    idx = _index(copy_dir)
    del idx["weight_map"][a], idx["weight_map"][b]
    with open(os.path.join(copy_dir, ck.INDEX_FILE), "w") as f:
        json.dump(idx, f)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(copy_dir)
    assert a in str(e.value) and b in str(e.value)


@pytest.mark.parametrize("edit,field", [
    (lambda d: d.pop("index_topk"), "index_topk"),
    (lambda d: d.pop("index_n_heads"), "index_n_heads"),
    (lambda d: d.update(kv_lora_rank=256), "kv_lora_rank"),
    (lambda d: d.update(num_experts_per_tok=16), "num_experts_per_tok"),
    (lambda d: d["quantization_config"].update(weight_block_size=[64, 64]), "weight_block_size"),
])
def test_bad_config_names_the_field(copy_dir, edit, field):
    p = os.path.join(copy_dir, "config.json")
    with open(p) as f:
        d = json.load(f)
    edit(d)
    with open(p, "w") as f:
        json.dump(d, f)
    with pytest.raises(ConfigError, match=field):
        load_checkpoint(copy_dir)


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="config.json"):
        load_checkpoint(str(tmp_path))
    with open(tmp_path / "config.json", "w") as f:
        json.dump(ck.config_json(preset_config("tiny")), f)
    with pytest.raises(CheckpointError, match=ck.INDEX_FILE):
        load_checkpoint(str(tmp_path))


def test_single_file_checkpoint(tiny_dir, cfg, tmp_path):
    """A checkpoint without an index (one model.safetensors) loads too."""
    _, sd = load_checkpoint(tiny_dir)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(tiny_dir, "config.json"), tmp_path)
    _, sd2 = load_checkpoint(str(tmp_path))
    assert sd2.keys() == sd.keys() and all(_equal(sd[k], sd2[k]) for k in sd)


def test_write_refuses_non_empty_dir_and_tiny_vocab(tiny_dir, tmp_path):
    with pytest.raises(FileExistsError):
        write_checkpoint(preset_config("tiny"), tiny_dir)
    with pytest.raises(ConfigError, match="vocab_size"):
        write_checkpoint(preset_config("tiny", vocab_size=200), str(tmp_path / "x"))


# ------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_loads_offline_and_round_trips(tiny_dir, cfg):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    assert len(tok) <= cfg.vocab_size
    assert tok.bos_token == BOS and tok.bos_token_id == cfg.bos_token_id == 0
    assert tok.eos_token == EOS and tok.eos_token_id == cfg.eos_token_id == 1
    text = "Hello, world! The answer is 12345.\n  def f(x): return x * 2  # ünïcödé 你好 🙂"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_token_id  # add_bos_token, like the real V3.2
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert max(ids) < cfg.vocab_size
    # every V3.2 marker is one token; the chat encoding vLLM's deepseek_v32 mode produces tokenizes cleanly
    for s in SPECIAL_TOKENS:
        one = tok.encode(s, add_special_tokens=False)
        assert len(one) == 1 and one[0] == tok.convert_tokens_to_ids(s) < cfg.vocab_size, s
    prompt = f"{BOS}You are helpful.<｜User｜>hi there<｜Assistant｜><think>hmm</think>Hello!{EOS}<｜User｜>2+2?<｜Assistant｜></think>"
    ids = tok.encode(prompt, add_special_tokens=False)
    assert ids[0] == 0 and ids.count(1) == 1 and tok.decode(ids) == prompt
    with open(os.path.join(tiny_dir, "tokenizer_config.json")) as f:
        tc = json.load(f)
    assert tc["add_bos_token"] is True and "chat_template" not in tc
    assert tc["model_max_length"] == min(cfg.max_position_embeddings, 131072)


def test_tokenizer_is_deterministic():
    from deepseek_v32_plugin.tokenizer import build_tokenizer
    assert build_tokenizer(1024).to_str() == build_tokenizer(1024).to_str()
    assert build_tokenizer(129280).get_vocab_size() <= 129280


# ------------------------------------------------------------------------------------------- CLI
def _cli(*args, env=None):
    exe = os.path.join(os.path.dirname(sys.executable), "deepseek-v32")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "deepseek_v32_plugin.cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_cli_make_checkpoint_and_inspect(tmp_path):
    """The console script as a subprocess (the other commands run in-process below)."""
    out = str(tmp_path / "cli")
    r = _cli("make-checkpoint", out, "--preset", "tiny", "--seed", "3", "--set", "index_topk=64")
    assert r.returncode == 0, r.stderr
    cfg, sd = load_checkpoint(out)
    assert cfg.index_topk == 64
    assert _equal(sd["lm_head.weight"], make_state_dict(cfg, seed=3)["lm_head.weight"])
    r = _cli("inspect", out, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["tensors"] == len(expected_tensors(cfg)) and s["layers"] == 2 and s["shards"] > 1


def test_cli_errors_and_tiny_path(tmp_path, capsys, monkeypatch):
    from deepseek_v32_plugin.cli import main
    monkeypatch.setenv("DSV32_CACHE", str(tmp_path / "cache"))
    assert main(["tiny-path"]) == 0
    assert capsys.readouterr().out.strip() == os.path.join(str(tmp_path / "cache"), "tiny-seed0")
    out = str(tmp_path / "cli")
    assert main(["make-checkpoint", out, "--seed", "1"]) == 0
    assert main(["inspect", out, "--load"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["make-checkpoint", out]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err
    assert main(["make-checkpoint", str(tmp_path / "x"), "--set", "kv_lora_rank=256"]) == 2
    assert "kv_lora_rank" in capsys.readouterr().err
    os.remove(os.path.join(out, _shard_of(out, "lm_head.weight")))
    assert main(["inspect", out]) == 2
    err = capsys.readouterr().err
    assert "file missing" in err and _shard_of(out, "lm_head.weight") in err


def test_default_tiny_checkpoint(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("DSV32_CACHE", cache)
    path = ck.default_tiny_checkpoint()
    assert path == os.path.join(cache, "tiny-seed0")
    assert os.listdir(cache) == ["tiny-seed0"]  # no temp dirs left behind
    mtime = os.path.getmtime(os.path.join(path, "config.json"))
    assert ck.default_tiny_checkpoint() == path  # reused, not rewritten
    assert os.path.getmtime(os.path.join(path, "config.json")) == mtime
    cfg, sd = load_checkpoint(path)
    assert cfg == preset_config("tiny")
    assert _equal(sd["model.embed_tokens.weight"], make_state_dict(cfg, seed=0)["model.embed_tokens.weight"])
    # a stale (older generator) or half-written cache entry is replaced, atomically
    os.remove(os.path.join(path, ck._MARKER))
    os.remove(os.path.join(path, _shard_of(path, "lm_head.weight")))
    assert ck.default_tiny_checkpoint() == path
    assert sorted(os.listdir(cache)) == ["tiny-seed0"]
    load_checkpoint(path)


# ------------------------------------------------------------------------------------------- bench on GPU
@pytest.mark.gpu
def test_bench_state_dict_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = preset_config("bench")
    sd = make_state_dict(cfg, seed=0, device="cuda")
    specs = expected_tensors(cfg)
    assert sd.keys() == specs.keys()
    assert all(tuple(sd[k].shape) == s.shape and sd[k].dtype == s.torch_dtype and sd[k].is_cuda
               for k, s in specs.items())
    some = {"lm_head.weight", "model.layers.1.mlp.experts.200.up_proj.weight",
            "model.layers.1.mlp.experts.200.up_proj.weight_scale_inv"}
    again = dict(ck.iter_random_tensors(cfg, seed=0, device="cuda", names=some))
    assert again.keys() == some and all(_equal(sd[k], again[k]) for k in some)
    assert sum(t.numel() * t.element_size() for t in sd.values()) == sum(s.nbytes for s in specs.values())


def test_pair_fp8_joins_weights_and_scales_in_any_order():
    """checkpoint.pair_fp8 (both engine loaders): each FP8 weight meets its weight_scale_inv, either first."""
    import torch
    from deepseek_v32_plugin.checkpoint import CheckpointError, pair_fp8
    w = torch.zeros(128, 128).to(torch.float8_e4m3fn)
    s = torch.ones(1, 1)
    b = torch.zeros(4, dtype=torch.bfloat16)
    got = list(pair_fp8([("a.weight", w), ("n.weight", b), ("c.weight_scale_inv", s), ("a.weight_scale_inv", s),
                         ("c.weight", w)]))
    assert [(n, x is w, sc is s) for n, x, sc in got] == [("n.weight", False, False), ("a.weight", True, True),
                                                           ("c.weight", True, True)]
    with pytest.raises(CheckpointError, match="d.weight"):
        list(pair_fp8([("d.weight", w)]))
