"""Host-side checks of the CUDA backend (ops/_cuda.py: the shared build; ops/<family>/cuda.py: the wrappers)
that need no GPU:
  - it has an implementation for every op the reference model calls (recorded by running the tiny model's
    prefill, a chunk over a prefix hit, decode and MTP-sized steps through the dispatch), in the family
    module where the dispatch looks for it;
  - its wrappers raise `_dispatch.Unsupported` (-> one warning, next backend) for inputs its kernels do not
    serve, before touching the extension, instead of calling the reference themselves;
  - the bound-check flag protocol: codes of csrc/common/bounds.cuh -> IndexError naming the tensor, and no
    flag (so no sync) unless DSV32_CUDA_CHECK_BOUNDS=1.
The kernels themselves are tested on a GPU (tests/triton/test_<family>.py, the CUDA sections).
"""
from __future__ import annotations

import os
import re

import pytest
import torch

from deepseek_v32_plugin.ops import _cuda, _dispatch, fp8_moe, fp8_quant, indexer, sparse_mla
from deepseek_v32_plugin.ops.fp8_quant import cuda as fp8_quant_cuda
from deepseek_v32_plugin.ops.indexer import cuda as indexer_cuda
from deepseek_v32_plugin.ops.sparse_mla import cuda as sparse_mla_cuda


@pytest.fixture(scope="module")
def model_ops(tmp_path_factory):
    """Names of the ops the reference model resolves through the dispatch (prefill, prefix-hit chunk,
    decode, a 3-token verify step), with both latent-cache formats."""
    from deepseek_v32_plugin.checkpoint import load_checkpoint, write_checkpoint
    from deepseek_v32_plugin.config import preset_config
    from deepseek_v32_plugin.model import ReferenceModel

    path = tmp_path_factory.mktemp("tiny_ops")
    write_checkpoint(preset_config("tiny"), str(path), seed=0)
    cfg, tensors = load_checkpoint(str(path))
    model = ReferenceModel(cfg, tensors)
    seen: set[str] = set()
    real = _dispatch.resolve

    def recording(op, device, backend=None):
        seen.add(op)
        return real(op, device, backend)

    mods = (fp8_moe, fp8_quant, indexer, sparse_mla)
    saved = [m.resolve for m in mods]
    for m in mods:
        m.resolve = recording
    try:
        torch.manual_seed(0)
        for fmt in ("bf16", "fp8_ds_mla"):
            cache = model.new_cache(4, fmt)
            seq = cache.new_sequence()
            ids = torch.randint(2, cfg.vocab_size, (cfg.index_topk + 12,))
            model.forward(ids[:8], seq, cache)                      # prefill
            model.forward(ids[8:cfg.index_topk + 8], seq, cache)    # chunk after a prefix (gathered keys)
            model.forward(ids[cfg.index_topk + 8:cfg.index_topk + 9], seq, cache)   # decode
            model.forward(ids[cfg.index_topk + 9:], seq, cache)     # 3-token verify shape
    finally:
        for m, r in zip(mods, saved):
            m.resolve = r
    return seen


def test_cuda_backend_serves_every_model_op(model_ops, monkeypatch):
    assert {"indexer_cache_gather", "fp8_paged_indexer_logits", "fp8_indexer_logits", "sparse_mla_decode",
            "fp8_grouped_gemm_nt_contiguous"} <= model_ops
    missing = sorted(op for op in model_ops if not callable(_cuda.get_op(op)))
    assert not missing, f"no ops/<family>/cuda.py has {missing}: DSV32_BACKEND=cuda would fail on them"
    families = _cuda.op_families()
    assert model_ops <= set(families)
    for op, fam in families.items():
        # each wrapper sits in the module of the family the dispatch registered the op under
        assert _dispatch._FAMILY_OF[op] == fam, (op, fam, _dispatch._FAMILY_OF.get(op))
        assert callable(getattr(_cuda.family_module(fam), op)), (op, fam)
    assert sorted(families) == sorted(op for f in _cuda.FAMILIES for op in _cuda.family_module(f).OP_NAMES), \
        "an op is listed by two family modules"
    # the dispatch's cuda lookup (with the extension reported as loaded) returns the family module's wrapper
    monkeypatch.setattr(_cuda, "is_available", lambda: True)
    for op in sorted(model_ops):
        assert _dispatch._load(op, "cuda") is _cuda.get_op(op), op


def _family_sources() -> str:
    return "".join(open(_cuda.family_module(f).__file__).read() for f in _cuda.FAMILIES)


def test_cuda_ops_have_bindings_and_fakes():
    """Every torch.ops.dsv32 op the wrappers call is defined in bindings.cpp and has a fake impl."""
    src = open(os.path.join(_cuda.csrc_dir(), "api", "bindings.cpp")).read()
    defined = set(re.findall(r'm\.def\("(\w+)\(', src))
    impl = set(re.findall(r'm\.impl\("(\w+)"', src))
    called = set(re.findall(r"torch\.ops\.dsv32\.(\w+)\(", _family_sources()))
    assert called, "no torch.ops.dsv32 call found in the family modules"
    fakes = set(re.findall(r'@fake\("(\w+)"\)', _family_sources())) | {
        "indexer_k_quant_and_cache", "indexer_cache_write", "mla_cache_write"}
    assert called <= defined and called <= impl, called - (defined & impl)
    assert called <= fakes, called - fakes


def test_fakes_register_per_family():
    """_register_fakes asks every family module for its fakes: each op a family's wrappers call gets one."""
    names = []
    for f in _cuda.FAMILIES:
        mod = _cuda.family_module(f)
        got = []
        mod.register_fakes(lambda name, got=got: (got.append(name), lambda fn: fn)[1])
        called = set(re.findall(r"torch\.ops\.dsv32\.(\w+)\(", open(mod.__file__).read()))
        assert called == set(got), (f, called ^ set(got))
        names += got
    assert len(names) == len(set(names))


def _fp8(*shape):
    return torch.zeros(shape).to(torch.float8_e4m3fn)


@pytest.mark.parametrize("case", ["topk", "paged_heads", "ragged_heads", "mla_fp32_cache", "mla_write_fp16_cache",
                                  "quant_group", "prefill_fp32_kv", "prefill_d_v"])
def test_wrappers_raise_unsupported(case):
    """Raised on the host before the extension is touched (so this runs without one)."""
    with pytest.raises(_dispatch.Unsupported):
        if case == "topk":
            indexer_cuda.indexer_topk(torch.zeros(2, 5000), 4096, torch.zeros(2, dtype=torch.int32),
                               torch.full((2,), 5000, dtype=torch.int32))
        elif case == "paged_heads":
            indexer_cuda.fp8_paged_indexer_logits(_fp8(1, 1, 129, 128), torch.zeros(1, 64, 132, dtype=torch.uint8),
                                           torch.zeros(1, 129), torch.ones(1, dtype=torch.int32),
                                           torch.zeros(1, 1, dtype=torch.int32), 1)
        elif case == "ragged_heads":
            indexer_cuda.fp8_indexer_logits(_fp8(2, 256, 128), _fp8(3, 128), torch.ones(3), torch.zeros(2, 256),
                                     torch.zeros(2, dtype=torch.int32), torch.full((2,), 3, dtype=torch.int32))
        elif case == "mla_fp32_cache":
            sparse_mla_cuda.sparse_mla_decode(torch.zeros(1, 1, 16, 576), torch.zeros(1, 64, 576),
                                    torch.zeros(1, 1, 8, dtype=torch.int32), 0.1)
        elif case == "mla_write_fp16_cache":
            sparse_mla_cuda.mla_cache_write(torch.zeros(2, 512), torch.zeros(2, 64), torch.zeros(1, 64, 576, dtype=torch.float16),
                                  torch.zeros(2, dtype=torch.int32))
        elif case == "prefill_fp32_kv":
            sparse_mla_cuda.sparse_mla_prefill(torch.zeros(2, 16, 576), torch.zeros(5, 1, 576),
                                     torch.zeros(2, 1, 8, dtype=torch.int32), 0.1)
        elif case == "prefill_d_v":
            sparse_mla_cuda.sparse_mla_prefill(torch.zeros(2, 16, 576), torch.zeros(5, 1, 576, dtype=torch.bfloat16),
                                     torch.zeros(2, 1, 8, dtype=torch.int32), 0.1, 256)
        else:
            fp8_quant_cuda.fp8_quant_act(torch.zeros(2, 256), 64, True)


@pytest.mark.parametrize("bad,name", [("q", "q"), ("kv", "kv"), ("indices", "indices")])
def test_prefill_wrapper_shape_errors(bad, name):
    """Wrong shapes give one ValueError naming the tensor, before the extension is touched."""
    q, kv = torch.zeros(2, 16, 576, dtype=torch.bfloat16), torch.zeros(5, 1, 576, dtype=torch.bfloat16)
    idx = torch.zeros(2, 1, 8, dtype=torch.int32)
    args = {"q": (q[..., :512], kv, idx), "kv": (q, kv.view(5, 576, 1), idx), "indices": (q, kv, idx[:1])}[bad]
    with pytest.raises(ValueError, match=rf"sparse_mla_prefill: {name} must be"):
        sparse_mla_cuda.sparse_mla_prefill(*args, 0.1)


def test_cuda_prefill_is_opt_in(monkeypatch):
    """The CUDA prefill kernel (compile-checked, not yet run on a GPU) is skipped by the auto order on CUDA
    devices and served when asked for; decode is not affected."""
    tried = []
    monkeypatch.setattr(_dispatch, "_load", lambda op, b: tried.append((op, b)) or (lambda *a: b))
    monkeypatch.setattr(_dispatch, "_cache", {})
    for v in ("DSV32_BACKEND", "DSV32_BACKEND_SPARSE_MLA_PREFILL", "DSV32_BACKEND_SPARSE_MLA_DECODE"):
        monkeypatch.delenv(v, raising=False)
    cuda = torch.device("cuda")
    assert _dispatch.resolve("sparse_mla_prefill", cuda)() == "triton"
    assert ("sparse_mla_prefill", "cuda") not in tried
    assert _dispatch.resolve("sparse_mla_decode", cuda)() == "cuda"
    assert _dispatch.resolve("sparse_mla_prefill", cuda, "cuda")() == "cuda"
    monkeypatch.setenv("DSV32_BACKEND_SPARSE_MLA_PREFILL", "cuda")
    assert _dispatch.resolve("sparse_mla_prefill", cuda)() == "cuda"


def test_unsupported_falls_back_with_one_warning(recwarn):
    """The dispatch's fallback chain with the CUDA wrapper first: the reference serves the call, one warning."""
    from deepseek_v32_plugin.ops.indexer.naive import naive_indexer_topk
    _dispatch._warned.discard(("indexer_topk", "cuda", "unsupported"))
    call = _dispatch._with_fallback("indexer_topk", [("cuda", indexer_cuda.indexer_topk), ("torch", naive_indexer_topk)])
    torch.manual_seed(0)
    logits = torch.randn(2, 5000)
    ks, ke = torch.zeros(2, dtype=torch.int32), torch.full((2,), 5000, dtype=torch.int32)
    for _ in range(2):
        got = call(logits, 4096, ks, ke)
    assert torch.equal(got, naive_indexer_topk(logits, 4096, ks, ke))
    msgs = [str(w.message) for w in recwarn.list if "indexer_topk" in str(w.message)]
    assert len(msgs) == 1 and "cuda backend cannot serve" in msgs[0] and "topk <= 2048" in msgs[0]


def test_bounds_flag_off_by_default(monkeypatch):
    monkeypatch.delenv("DSV32_CUDA_CHECK_BOUNDS", raising=False)
    assert _cuda._err_flag(torch.device("cpu")) is None
    _cuda.raise_bounds("op", None)  # no flag: nothing to check, no sync
    monkeypatch.setenv("DSV32_CUDA_CHECK_BOUNDS", "1")
    flag = _cuda._err_flag(torch.device("cpu"))
    assert flag.dtype == torch.int32 and flag.tolist() == [0, 0]
    _cuda.raise_bounds("op", flag)  # zero code: no error


@pytest.mark.parametrize("code,name", [(1, "slot_mapping"), (2, "slots"), (3, "indices"), (4, "indices"),
                                       (5, "block_table")])
def test_bounds_error_names_the_tensor(code, name):
    with pytest.raises(IndexError, match=rf"^my_op: {name} holds .*: 4242$"):
        _cuda.raise_bounds("my_op", torch.tensor([code, 4242], dtype=torch.int32))


def test_bounds_codes_match_header():
    """BOUNDS_ERRORS in _cuda.py and the enum in csrc/common/bounds.cuh agree."""
    src = open(os.path.join(_cuda.csrc_dir(), "common", "bounds.cuh")).read()
    codes = {int(v) for v in re.findall(r"kOob\w+ = (\d+)", src)}
    assert codes == set(_cuda.BOUNDS_ERRORS)
