"""register() and its pieces without starting an engine: model override, backend registration, the
DSV32_SGLANG_BUILTIN hand-back, the CPU shims, config parsing from SGLang's HF config and bad-config errors."""
import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, sglang.srt.plugins as p
p.load_plugins()
from sglang.srt.models.registry import ModelRegistry
from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
cls = ModelRegistry.resolve_model_cls(["DeepseekV32ForCausalLM"])[0]
draft = ModelRegistry.resolve_model_cls(["DeepseekV3ForCausalLMNextN"])[0]
print("RESULT " + json.dumps({"module": cls.__module__, "backend": "dsv32_sparse" in ATTENTION_BACKENDS,
                              "draft": draft.__module__, "draft_bases": [b.__module__ for b in draft.__mro__]}))
"""


def _probe(env_extra):
    env = dict(os.environ, **env_extra)
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, p.stderr[-4000:]
    return json.loads(lines[-1][7:])


def test_entry_point_registers_model_and_backend():
    r = _probe({})
    assert r["module"].startswith("deepseek_v32_plugin.engines.sglang"), r
    assert r["backend"]
    # the MTP draft name (SGLang's for V3 and V3.2 drafts): ours, dispatching V3 configs to SGLang's class
    assert r["draft"].startswith("deepseek_v32_plugin.engines.sglang"), r
    assert "sglang.srt.models.deepseek_nextn" in r["draft_bases"], r


def test_builtin_env_hands_architecture_back():
    r = _probe({"DSV32_SGLANG_BUILTIN": "1"})
    assert r["module"] == "sglang.srt.models.deepseek_v2", r
    assert r["draft"] == "sglang.srt.models.deepseek_nextn", r
    assert not r["backend"]


def test_cpu_shims_active_in_this_venv_only_as_fallback():
    import importlib.util

    import sgl_kernel  # provided by the shim here (no CPU build of sgl_kernel exists)
    assert getattr(sgl_kernel, "DSV32_CPU_STUB", False)
    assert os.environ.get("SGLANG_USE_CPU_ENGINE") == "1"
    with pytest.raises(NotImplementedError, match="sgl_kernel.some_kernel"):
        sgl_kernel.some_kernel()
    with pytest.raises(ImportError):
        importlib.import_module("sgl_kernel.scalar_type")   # SGLang's ImportError fallbacks stay reachable
    from deepseek_v32_plugin.engines.sglang import cpu_shims
    finders = [getattr(f, "__name__", type(f).__name__) for f in sys.meta_path]  # PathFinder is a class
    assert finders.index("_StubFinder") > finders.index("PathFinder")   # a real sgl_kernel would win
    assert cpu_shims._torch_is_cpu_build()


def test_config_from_sglang_hf_config(tiny_ckpt):
    from sglang.srt.utils.hf_transformers import get_config

    from deepseek_v32_plugin.config import V32Config
    got = V32Config.from_hf(get_config(tiny_ckpt, trust_remote_code=False))
    want = V32Config.from_pretrained(tiny_ckpt)
    assert got == want           # rope_scaling (YaRN) and rope_theta survive transformers 5's rope_parameters
    assert got.rope_scaling is not None


def _checkpoint_with_config(tiny_ckpt, out, **changes) -> str:
    """A copy of the tiny checkpoint with config.json fields changed."""
    import shutil

    shutil.copytree(tiny_ckpt, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(changes)
    (out / "config.json").write_text(json.dumps(cfg))
    return str(out)


def test_unservable_config_names_field(tiny_ckpt, tmp_path):
    from sglang.srt.utils.hf_transformers import get_config

    from deepseek_v32_plugin.config import ConfigError
    from deepseek_v32_plugin.config import V32Config
    bad = _checkpoint_with_config(tiny_ckpt, tmp_path / "bad", index_head_dim=64)
    with pytest.raises(ConfigError, match="index_head_dim"):
        V32Config.from_hf(get_config(bad, trust_remote_code=False))


def test_unservable_config_fails_engine_start_naming_field(tiny_ckpt, tmp_path):
    """Through the real entry: sglang.Engine on a checkpoint whose config we cannot serve raises in the
    launching process (our server-argument override validates), naming the field, before any scheduler."""
    import sglang

    from conftest import ENGINE_KW
    bad = _checkpoint_with_config(tiny_ckpt, tmp_path / "bad", index_n_heads=0)
    with pytest.raises(Exception, match="index_n_heads"):
        sglang.Engine(model_path=bad, **ENGINE_KW)


def test_server_arg_override_picks_our_backend(tiny_ckpt):
    """What our override declares for the V3.2 architecture: our backend (replacing SGLang's forced "dsa"
    unless the user chose another backend) and 64-token pages."""
    from types import SimpleNamespace

    from sglang.srt.utils.hf_transformers import get_config

    from deepseek_v32_plugin.engines.sglang.hooks import _v32_overrides
    hf = get_config(tiny_ckpt, trust_remote_code=False)
    unset = SimpleNamespace(attention_backend=None, prefill_attention_backend=None, decode_attention_backend=None)
    assert _v32_overrides(unset, hf) == {"page_size": 64, "attention_backend": "dsv32_sparse"}
    other = SimpleNamespace(attention_backend="triton", prefill_attention_backend=None, decode_attention_backend=None)
    assert _v32_overrides(other, hf) == {"page_size": 64}
