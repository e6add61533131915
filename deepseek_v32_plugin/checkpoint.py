"""The Hugging Face DeepSeek-V3.2 checkpoint format: one name table, a writer of random checkpoints, a loader.

Format (deepseek-ai/DeepSeek-V3.2):
  config.json, generation_config.json, tokenizer.json, tokenizer_config.json,
  model-00001-of-0000N.safetensors ..., model.safetensors.index.json = {"metadata": {"total_size": bytes},
  "weight_map": {tensor name: shard file}}.
  FP8 linears: `<m>.weight` [out, in] float8_e4m3fn + `<m>.weight_scale_inv` [ceil(out/128), ceil(in/128)]
  float32 (ue8m0 powers of two): W[n, k] = weight[n, k] * weight_scale_inv[n // 128, k // 128].
  Norms, embeddings, lm_head, router gate, indexer weights_proj, MTP eh_proj: bf16;
  router e_score_correction_bias, indexer k_norm weight/bias: fp32.
  The MTP module is `model.layers.{num_hidden_layers}.` (a full decoder layer + enorm/hnorm/eh_proj/
  shared_head/embed_tokens).

`expected_tensors(cfg)` is THE table of names, shapes and dtypes: the writer, the loader, the reference model
and the engine adapters all use it. This module imports torch only inside the functions that need it.

    from deepseek_v32_plugin.checkpoint import expected_tensors, load_checkpoint, iter_checkpoint
    cfg, sd = load_checkpoint(path)                    # validated {name: tensor}
    for name, t in iter_checkpoint(path): ...          # validated up front, then one tensor at a time
    write_checkpoint(preset_config("tiny"), out_dir)   # random weights, real format (+ tokenizer)
    sd = make_state_dict(preset_config("bench"), device="cuda")   # same, in memory
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Container, Iterator, Optional, Union

from .config import ARCHITECTURE, FP8_BLOCK, ConfigError, V32Config, preset_config

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
GENERATOR_VERSION = 1  # bump when the random-weight generator changes (invalidates cached checkpoints)
_MARKER = ".dsv32_generated.json"

FP8 = "float8_e4m3fn"
BF16 = "bfloat16"
FP32 = "float32"
_ITEMSIZE = {FP8: 1, BF16: 2, FP32: 4, "float16": 2, "float64": 8, "int64": 8, "int32": 4, "uint8": 1,
             "int8": 1, "bool": 1, "float8_e5m2": 1, "float8_e8m0fnu": 1}
# safetensors header dtype codes -> torch attribute names
_ST_DTYPE = {"F8_E4M3": FP8, "BF16": BF16, "F32": FP32, "F16": "float16", "F64": "float64", "I64": "int64",
             "I32": "int32", "U8": "uint8", "I8": "int8", "BOOL": "bool", "F8_E5M2": "float8_e5m2",
             "F8_E8M0": "float8_e8m0fnu"}


class CheckpointError(ValueError):
    """A checkpoint file or tensor is missing or unusable; the message names the shard or tensor."""


@dataclass(frozen=True)
class TensorSpec:
    """One checkpoint tensor. dtype is a torch attribute name ("float8_e4m3fn", "bfloat16", "float32").
    fp8=True marks an FP8 block-quantized linear weight; its scale is the `<name>_scale_inv` entry."""
    shape: tuple
    dtype: str
    fp8: bool = False

    @property
    def torch_dtype(self):
        import torch
        return getattr(torch, self.dtype)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * _ITEMSIZE[self.dtype]


def scale_inv_name(weight_name: str) -> str:
    """`<m>.weight` -> `<m>.weight_scale_inv`."""
    return weight_name + "_scale_inv"


def mtp_layer_indices(cfg: V32Config) -> range:
    """Layer indices of the MTP modules: num_hidden_layers .. num_hidden_layers + num_nextn_predict_layers - 1."""
    return range(cfg.num_hidden_layers, cfg.num_hidden_layers + cfg.num_nextn_predict_layers)


def mtp_prefixes(cfg: V32Config) -> tuple:
    """`model.layers.{i}.` for each MTP layer: the tensors the draft model loads and the target skips."""
    return tuple(f"model.layers.{i}." for i in mtp_layer_indices(cfg))


# How the engines' modules fuse the table's names (the loaders of both adapters read these):
MLP_PROJS = ("gate_proj", "up_proj", "down_proj")   # every MLP: dense, shared expert, routed expert j
STACKED_PARAMS = (("gate_up_proj", "gate_proj", 0), ("gate_up_proj", "up_proj", 1))  # (param, table name, shard)
EXPERTS = ".mlp.experts."                            # routed experts: the engine's FusedMoE expert mapping


def pair_fp8(weights):
    """(name, tensor) pairs in any order -> (name, tensor, scale_inv or None): each FP8 `<m>.weight` joined
    with its `scale_inv_name` tensor; raises CheckpointError naming the first unpaired ones at the end."""
    import torch
    pending_w, pending_s = {}, {}
    for name, w in weights:
        if name.endswith(".weight_scale_inv"):
            base = name[: -len("_scale_inv")]
            if base in pending_w:
                yield base, pending_w.pop(base), w
            else:
                pending_s[base] = w
        elif name.endswith(".weight") and w.dtype == torch.float8_e4m3fn:
            if name in pending_s:
                yield name, w, pending_s.pop(name)
            else:
                pending_w[name] = w
        else:
            yield name, w, None
    if pending_w or pending_s:
        left = sorted(pending_w)[:3] + sorted(scale_inv_name(n) for n in pending_s)[:3]
        raise CheckpointError(f"FP8 weights without their weight_scale_inv (or scales without weights), e.g. {left}")


# ---------------------------------------------------------------------------------------------------------
# The name table
# ---------------------------------------------------------------------------------------------------------
class _Table:
    def __init__(self, cfg: V32Config):
        self.cfg = cfg
        self.specs: dict[str, TensorSpec] = {}

    def add(self, name: str, shape, dtype: str) -> None:
        self.specs[name] = TensorSpec(tuple(int(s) for s in shape), dtype)

    def norm(self, prefix: str, dim: int) -> None:
        self.add(f"{prefix}.weight", (dim,), BF16)

    def linear(self, prefix: str, out_features: int, in_features: int, quantized: bool = True) -> None:
        """An nn.Linear weight [out, in]: FP8 + weight_scale_inv in an FP8 checkpoint (if quantized), else bf16."""
        name = f"{prefix}.weight"
        if quantized and self.cfg.is_fp8:
            self.specs[name] = TensorSpec((out_features, in_features), FP8, fp8=True)
            self.add(scale_inv_name(name), (-(-out_features // FP8_BLOCK), -(-in_features // FP8_BLOCK)), FP32)
        else:
            self.add(name, (out_features, in_features), BF16)

    def mlp(self, prefix: str, intermediate: int) -> None:
        h = self.cfg.hidden_size
        gate, up, down = MLP_PROJS
        self.linear(f"{prefix}.{gate}", intermediate, h)
        self.linear(f"{prefix}.{up}", intermediate, h)
        self.linear(f"{prefix}.{down}", h, intermediate)

    def decoder_layer(self, i: int) -> None:
        c, p = self.cfg, f"model.layers.{i}"
        h, nh = c.hidden_size, c.num_attention_heads
        self.norm(f"{p}.input_layernorm", h)
        self.norm(f"{p}.post_attention_layernorm", h)
        a = f"{p}.self_attn"
        self.linear(f"{a}.q_a_proj", c.q_lora_rank, h)
        self.norm(f"{a}.q_a_layernorm", c.q_lora_rank)
        self.linear(f"{a}.q_b_proj", nh * c.qk_head_dim, c.q_lora_rank)
        self.linear(f"{a}.kv_a_proj_with_mqa", c.kv_lora_rank + c.qk_rope_head_dim, h)
        self.norm(f"{a}.kv_a_layernorm", c.kv_lora_rank)
        self.linear(f"{a}.kv_b_proj", nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank)
        self.linear(f"{a}.o_proj", h, nh * c.v_head_dim)
        x = f"{a}.indexer"
        self.linear(f"{x}.wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank)
        self.linear(f"{x}.wk", c.index_head_dim, h)
        self.add(f"{x}.k_norm.weight", (c.index_head_dim,), FP32)
        self.add(f"{x}.k_norm.bias", (c.index_head_dim,), FP32)
        self.linear(f"{x}.weights_proj", c.index_n_heads, h, quantized=False)
        m = f"{p}.mlp"
        if c.is_moe_layer(i):
            self.add(f"{m}.gate.weight", (c.n_routed_experts, h), BF16)
            self.add(f"{m}.gate.e_score_correction_bias", (c.n_routed_experts,), FP32)
            for j in range(c.n_routed_experts):
                self.mlp(f"{m}.experts.{j}", c.moe_intermediate_size)
            if c.n_shared_experts:
                self.mlp(f"{m}.shared_experts", c.moe_intermediate_size * c.n_shared_experts)
        else:
            self.mlp(m, c.intermediate_size)

    def mtp_layer(self, i: int) -> None:
        c, p = self.cfg, f"model.layers.{i}"
        self.add(f"{p}.embed_tokens.weight", (c.vocab_size, c.hidden_size), BF16)
        self.norm(f"{p}.enorm", c.hidden_size)
        self.norm(f"{p}.hnorm", c.hidden_size)
        self.linear(f"{p}.eh_proj", c.hidden_size, 2 * c.hidden_size, quantized=False)
        self.decoder_layer(i)
        self.norm(f"{p}.shared_head.norm", c.hidden_size)
        self.add(f"{p}.shared_head.head.weight", (c.vocab_size, c.hidden_size), BF16)


def expected_tensors(cfg: V32Config, include_mtp: bool = True) -> dict[str, TensorSpec]:
    """Every tensor of the HF checkpoint for cfg, {name: TensorSpec}, in a stable order:
    model.embed_tokens, layers 0..L-1, model.norm, lm_head, then the MTP layer(s) L.. (if include_mtp).
    Dense MLP for layers < first_k_dense_replace, MoE (gate + experts.{j} + shared_experts) after.
    Each FP8 weight is followed by its `weight_scale_inv`. Returns a fresh dict (the table is cached)."""
    return dict(_table(cfg, include_mtp))


def _table(cfg: V32Config, include_mtp: bool) -> dict:
    try:
        return _cached_table(cfg, include_mtp)
    except TypeError:  # a hand-built config holding a list/dict: not hashable, build uncached
        return _build_table(cfg, include_mtp)


def _build_table(cfg: V32Config, include_mtp: bool) -> dict:
    t = _Table(cfg)
    t.add("model.embed_tokens.weight", (cfg.vocab_size, cfg.hidden_size), BF16)
    for i in range(cfg.num_hidden_layers):
        t.decoder_layer(i)
    t.norm("model.norm", cfg.hidden_size)
    t.add("lm_head.weight", (cfg.vocab_size, cfg.hidden_size), BF16)
    if include_mtp:
        for i in mtp_layer_indices(cfg):
            t.mtp_layer(i)
    return t.specs


_cached_table = functools.lru_cache(maxsize=8)(_build_table)


def layer_of(name: str) -> Optional[int]:
    """The decoder-layer index in `model.layers.{i}.` names, else None."""
    if name.startswith("model.layers."):
        return int(name.split(".", 3)[2])
    return None


# ---------------------------------------------------------------------------------------------------------
# Random weights
# ---------------------------------------------------------------------------------------------------------
# MTP copies of the main embedding / head (as in the real checkpoint): same seed name -> identical values.
def _seed_name(cfg: V32Config, name: str) -> str:
    i = layer_of(name)
    if i is not None and i >= cfg.num_hidden_layers:
        if name.endswith(".embed_tokens.weight"):
            return "model.embed_tokens.weight"
        if name.endswith(".shared_head.head.weight"):
            return "lm_head.weight"
    return name


def _tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2 ** 63 - 1)


def head_std(cfg: V32Config) -> float:
    """lm_head init std: logits of a unit-RMS hidden state get std 1.1*sqrt(2 ln V), so the softmax over the
    vocabulary is peaked (top-1 probability usually > 0.2) rather than near-uniform."""
    return 1.1 * math.sqrt(2.0 * math.log(cfg.vocab_size)) / math.sqrt(cfg.hidden_size)


def random_weight(cfg: V32Config, name: str, seed: int = 0, device="cpu"):
    """The fp32 value the generator draws for tensor `name` (before FP8/bf16 rounding). Deterministic per
    (seed, name, device type); independent of which other tensors are generated.
      norms ~ 1 + N(0, 0.02); k_norm.bias ~ N(0, 0.02); e_score_correction_bias ~ N(0, 0.05);
      embeddings ~ N(0, 1); lm_head ~ N(0, head_std(cfg)); other linears [out, in] ~ N(0, 1/in)."""
    spec = _table(cfg, True).get(name)
    if spec is None or name.endswith("_scale_inv"):
        raise KeyError(f"{name!r} is not a generated weight of this config")
    return _draw(cfg, name, spec.shape, seed, device)


def _draw(cfg: V32Config, name: str, shape: tuple, seed: int, device):
    import torch
    sname = _seed_name(cfg, name)
    gen = torch.Generator(device=device).manual_seed(_tensor_seed(seed, sname))
    x = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    if sname.endswith("norm.weight"):  # RMSNorms and the indexer's LayerNorm
        return x.mul_(0.02).add_(1.0)
    if sname.endswith("k_norm.bias"):
        return x.mul_(0.02)
    if sname.endswith("e_score_correction_bias"):
        return x.mul_(0.05)
    if sname == "model.embed_tokens.weight":
        return x
    if sname == "lm_head.weight":
        return x.mul_(head_std(cfg))
    return x.mul_(1.0 / math.sqrt(shape[1]))  # [out, in] linear (router gate included)


@contextlib.contextmanager
def _cpu_threads_for(nbytes: int, device):
    """Small CPU generations run single-threaded: their ops are too small to gain from threads, and on a
    busy machine OpenMP's spinning threads make them 10-100x slower (measured: tiny 0.3 s vs 10 s)."""
    import torch
    if str(device) != "cpu" or nbytes > (256 << 20) or torch.get_num_threads() == 1:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def iter_random_tensors(cfg: V32Config, seed: int = 0, device="cpu",
                        names: Optional[Container[str]] = None) -> Iterator[tuple]:
    """Yield (name, tensor) for every checkpoint tensor in expected_tensors order, in checkpoint dtypes:
    FP8 weights quantized with 128x128 ue8m0 blocks (followed by their weight_scale_inv), bf16/fp32 elsewhere.
    names: restrict to these names (a weight_scale_inv is produced with its weight)."""
    from .ops.fp8_quant import fp8_quant_weight
    specs = expected_tensors(cfg)
    for name, spec in specs.items():
        if name.endswith("_scale_inv"):
            continue
        want_w = names is None or name in names
        want_s = spec.fp8 and (names is None or scale_inv_name(name) in names)
        if not (want_w or want_s):
            continue
        w = _draw(cfg, name, spec.shape, seed, device)
        if spec.fp8:
            q, s = fp8_quant_weight(w)
            if want_w:
                yield name, q
            if want_s:
                yield scale_inv_name(name), s
        else:
            yield name, w.to(spec.torch_dtype)


def make_state_dict(cfg: V32Config, seed: int = 0, device="cpu", include_mtp: bool = True) -> dict:
    """The checkpoint's tensors generated in memory on `device` (e.g. the "bench" preset on a GPU):
    the same values write_checkpoint stores when device is the CPU."""
    specs = expected_tensors(cfg, include_mtp=include_mtp)
    with _cpu_threads_for(sum(s.nbytes for s in specs.values()), device):
        return dict(iter_random_tensors(cfg, seed, device, None if include_mtp else set(specs)))


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------
# Fields of the real config.json that V32Config does not model (values as in deepseek-ai/DeepSeek-V3.2).
_EXTRA_CONFIG = {"attention_bias": False, "attention_dropout": 0.0, "ep_size": 1, "initializer_range": 0.02,
                 "use_cache": True, "transformers_version": "4.44.2"}


def config_json(cfg: V32Config) -> dict:
    d = {**_EXTRA_CONFIG, **cfg.to_dict()}
    return dict(sorted(d.items()))


def generation_config_json(cfg: V32Config) -> dict:
    return {"_from_model_config": True, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
            "do_sample": True, "temperature": 1.0, "top_p": 0.95, "transformers_version": "4.44.2"}


def _plan_shards(specs: dict[str, TensorSpec], max_shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    names = list(specs)
    i = 0
    while i < len(names):
        # keep an FP8 weight and its scale in one shard
        group = [names[i]]
        if specs[names[i]].fp8:
            group.append(scale_inv_name(names[i]))
        nbytes = sum(specs[n].nbytes for n in group)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].extend(group)
        size += nbytes
        i += len(group)
    return shards


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_checkpoint(cfg: V32Config, out_dir: str, seed: int = 0, max_shard_bytes: Optional[int] = None,
                     tokenizer: bool = True, overwrite: bool = False) -> str:
    """Write a random-weight checkpoint in the exact HF V3.2 format into out_dir (created); returns out_dir.

    max_shard_bytes: None -> a quarter of the total (at least 1 MiB, at most 4 GiB), so even the tiny
    checkpoint is sharded like the real one. Deterministic for (cfg, seed)."""
    cfg.validate()
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty (pass overwrite=True / --force to write into it)")
    os.makedirs(out_dir, exist_ok=True)
    if tokenizer:  # first: it checks vocab_size before any heavy work
        from .tokenizer import write_tokenizer
        write_tokenizer(out_dir, cfg.vocab_size, min(cfg.max_position_embeddings, 131072))
    specs = expected_tensors(cfg)
    total = sum(s.nbytes for s in specs.values())
    if max_shard_bytes is None:
        max_shard_bytes = min(max(total // 4 + 1, 1 << 20), 4 << 30)
    plan = _plan_shards(specs, max_shard_bytes)
    weight_map = {}
    with _cpu_threads_for(total, "cpu"):
        _write_shards(cfg, out_dir, seed, plan, weight_map)
    _write_json(os.path.join(out_dir, INDEX_FILE),
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    _write_json(os.path.join(out_dir, "config.json"), config_json(cfg))
    _write_json(os.path.join(out_dir, "generation_config.json"), generation_config_json(cfg))
    return out_dir


def _write_shards(cfg, out_dir, seed, plan, weight_map):
    from safetensors.torch import save_file
    n = len(plan)
    for k, shard_names in enumerate(plan):
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        tensors = dict(iter_random_tensors(cfg, seed, "cpu", set(shard_names)))
        fpath = os.path.join(out_dir, fname)
        save_file({name: tensors[name].contiguous() for name in shard_names}, fpath, metadata={"format": "pt"})
        os.chmod(fpath, 0o644)  # safetensors creates 0600 files; the cache may be shared
        weight_map.update({name: fname for name in shard_names})
        del tensors


def default_cache_dir() -> str:
    return os.environ.get("DSV32_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "deepseek_v32_plugin")


def _generated_ok(path: str, seed: int) -> bool:
    try:
        with open(os.path.join(path, _MARKER)) as f:
            m = json.load(f)
        return m == {"generator": GENERATOR_VERSION, "preset": "tiny", "seed": seed}
    except (OSError, ValueError):
        return False


def default_tiny_checkpoint(seed: int = 0, cache_dir: Optional[str] = None) -> str:
    """Path of the embedded tiny checkpoint, generated on first use into
    ${DSV32_CACHE:-~/.cache/deepseek_v32_plugin}/tiny-seed{seed} (written to a temp dir, then renamed, so a
    reader never sees a half-written one; a stale one from an older generator is replaced)."""
    root = cache_dir or default_cache_dir()
    final = os.path.join(root, f"tiny-seed{seed}")
    if _generated_ok(final, seed):
        return final
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tiny-seed{seed}.", dir=root)
    try:
        write_checkpoint(preset_config("tiny"), tmp, seed=seed, overwrite=True)
        _write_json(os.path.join(tmp, _MARKER), {"generator": GENERATOR_VERSION, "preset": "tiny", "seed": seed})
        os.chmod(tmp, 0o755)
        if os.path.exists(final) and not _generated_ok(final, seed):  # stale or foreign: move it aside
            old = tempfile.mkdtemp(prefix=f".old-tiny-seed{seed}.", dir=root)
            os.rename(final, os.path.join(old, "x"))
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _generated_ok(final, seed):  # lost a race to a writer of something else
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------
def read_safetensors_header(path: str) -> dict:
    """{name: {"dtype": torch dtype name, "shape": tuple}} from a .safetensors header, checking that every
    tensor's bytes lie inside the file (a truncated shard is reported, not crashed on later)."""
    shard = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"shard {shard}: not a safetensors file (shorter than its 8-byte header length)")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, 1 << 28):
            raise CheckpointError(f"shard {shard}: corrupt safetensors header (length {n}, file size {size})")
        try:
            hdr = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"shard {shard}: corrupt safetensors header ({e})") from None
    out = {}
    for name, info in hdr.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if 8 + n + end > size:
            raise CheckpointError(f"shard {shard}: tensor {name} extends past the end of the file "
                                  f"(truncated shard: {size} bytes)")
        out[name] = {"dtype": _ST_DTYPE.get(info["dtype"], info["dtype"]), "shape": tuple(info["shape"])}
    return out


def _weight_map(path: str) -> dict[str, str]:
    idx = os.path.join(path, INDEX_FILE)
    if os.path.exists(idx):
        try:
            with open(idx, encoding="utf-8") as f:
                wm = json.load(f)["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{INDEX_FILE}: unreadable or has no weight_map ({e!r})") from None
        return dict(wm)
    single = os.path.join(path, SINGLE_FILE)
    if os.path.exists(single):
        return {name: SINGLE_FILE for name in read_safetensors_header(single)}
    raise CheckpointError(f"{path}: no {INDEX_FILE} and no {SINGLE_FILE}")


def _fmt_problems(path: str, problems: list[str]) -> str:
    head = problems[:12]
    more = f"\n  ... and {len(problems) - len(head)} more" if len(problems) > len(head) else ""
    return f"checkpoint {path} does not match a DeepSeek-V3.2 model:\n  " + "\n  ".join(head) + more


def validate_checkpoint(path: str, strict: bool = True, include_mtp: bool = True):
    """Check config.json, the index, every shard's header and every tensor's presence, shape and dtype
    against expected_tensors(cfg), reading headers only. Returns (cfg, {shard file: [names]}) of the tensors
    to load. Raises ConfigError for a bad config, one CheckpointError naming each bad shard/tensor otherwise.
    strict=False ignores tensors the table does not know (they are not loaded)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory")
    cfg = V32Config.from_pretrained(path)
    specs = expected_tensors(cfg, include_mtp=True)
    wanted = expected_tensors(cfg, include_mtp=include_mtp)
    wm = _weight_map(path)
    problems: list[str] = []
    headers: dict[str, dict] = {}
    for shard in sorted(set(wm.values())):
        fp = os.path.join(path, shard)
        if os.path.basename(shard) != shard:
            problems.append(f"shard {shard!r}: not a plain file name")
        elif not os.path.exists(fp):
            example = next(n for n, s in wm.items() if s == shard)
            problems.append(f"shard {shard}: file missing (holds e.g. {example})")
        else:
            try:
                headers[shard] = read_safetensors_header(fp)
            except CheckpointError as e:
                problems.append(str(e))
    for name, spec in specs.items():
        if name not in wm:
            problems.append(f"tensor {name}: missing (not in the {INDEX_FILE} weight_map)")
            continue
        hdr = headers.get(wm[name])
        if hdr is None:
            continue  # shard problem already reported
        got = hdr.get(name)
        if got is None:
            problems.append(f"tensor {name}: missing from shard {wm[name]} (the index says it is there)")
        elif got["shape"] != spec.shape:
            problems.append(f"tensor {name}: shape {list(got['shape'])}, expected {list(spec.shape)}")
        elif got["dtype"] != spec.dtype:
            problems.append(f"tensor {name}: dtype {got['dtype']}, expected {spec.dtype}")
    if strict:
        for name in wm:
            if name not in specs:
                problems.append(f"tensor {name}: not part of a DeepSeek-V3.2 checkpoint for this config "
                                f"(pass strict=False to ignore)")
        for shard, hdr in headers.items():
            for name in hdr:
                if wm.get(name) != shard and name not in specs:
                    problems.append(f"tensor {name}: in shard {shard} but not listed there by {INDEX_FILE}")
    if problems:
        raise CheckpointError(_fmt_problems(path, problems))
    plan: dict[str, list[str]] = {}
    for name in wanted:
        plan.setdefault(wm[name], []).append(name)
    return cfg, dict(sorted(plan.items()))


def iter_checkpoint(path: str, device="cpu", strict: bool = True, include_mtp: bool = True,
                    names: Optional[Union[Container[str], Callable[[str], bool]]] = None) -> Iterator[tuple]:
    """Validate the whole checkpoint (headers only) now, then return an iterator of (name, tensor), shard by
    shard, loading one tensor at a time onto device. names: a container or predicate selecting tensors."""
    _, plan = validate_checkpoint(path, strict=strict, include_mtp=include_mtp)
    return _iter_plan(path, plan, device, names)


def _iter_plan(path, plan, device, names=None):
    from safetensors import safe_open
    keep = (lambda n: True) if names is None else (names if callable(names) else (lambda n: n in names))
    for shard, shard_names in plan.items():
        with safe_open(os.path.join(path, shard), framework="pt", device=str(device)) as f:
            for name in shard_names:
                if keep(name):
                    yield name, f.get_tensor(name)


def load_checkpoint(path: str, device="cpu", strict: bool = True, include_mtp: bool = True):
    """(V32Config, {name: tensor}) of a validated HF V3.2 checkpoint (ours or deepseek-ai's)."""
    cfg, plan = validate_checkpoint(path, strict=strict, include_mtp=include_mtp)
    return cfg, dict(_iter_plan(path, plan, device))


def checkpoint_summary(path: str) -> dict:
    """Config highlights + tensor statistics of a validated checkpoint (used by `deepseek-v32 inspect`)."""
    cfg, plan = validate_checkpoint(path)
    specs = expected_tensors(cfg)
    names = [n for ns in plan.values() for n in ns]
    out = {
        "path": os.path.abspath(path),
        "architecture": ARCHITECTURE,
        "layers": cfg.num_hidden_layers, "dense_layers": cfg.first_k_dense_replace,
        "mtp_layers": cfg.num_nextn_predict_layers,
        "hidden_size": cfg.hidden_size, "heads": cfg.num_attention_heads, "vocab_size": cfg.vocab_size,
        "q_lora_rank": cfg.q_lora_rank, "kv_lora_rank": cfg.kv_lora_rank,
        "experts": f"{cfg.n_routed_experts} routed (top {cfg.num_experts_per_tok}, {cfg.n_group} groups, "
                   f"top {cfg.topk_group}) + {cfg.n_shared_experts} shared",
        "indexer": f"{cfg.index_n_heads} heads x {cfg.index_head_dim}, topk {cfg.index_topk}",
        "max_position_embeddings": cfg.max_position_embeddings,
        "quantization": "fp8 e4m3, 128x128 ue8m0 block scales" if cfg.is_fp8 else "none (bf16)",
        "tensors": len(names), "fp8_tensors": sum(specs[n].fp8 for n in names),
        "bytes": sum(specs[n].nbytes for n in names), "shards": len(plan),
    }
    tj = os.path.join(path, "tokenizer.json")
    if os.path.exists(tj):
        with open(tj, encoding="utf-8") as f:
            t = json.load(f)
        n_tok = len(t["model"]["vocab"]) + sum(a["content"] not in t["model"]["vocab"] for a in t["added_tokens"])
        out["tokenizer_tokens"] = n_tok
    return out


__all__ = ["TensorSpec", "CheckpointError", "ConfigError", "expected_tensors", "scale_inv_name",
           "mtp_layer_indices", "layer_of", "random_weight", "iter_random_tensors", "make_state_dict",
           "write_checkpoint", "default_tiny_checkpoint", "default_cache_dir", "validate_checkpoint",
           "iter_checkpoint", "load_checkpoint", "read_safetensors_header", "checkpoint_summary",
           "config_json", "head_std"]
