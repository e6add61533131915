"""The whole reference model on a GPU: every op through the kernels (auto dispatch: CUDA ext -> Triton)
against the same model with every op on the PyTorch references. Skipped without CUDA.

`real-width` is the real per-layer V3.2 shape (hidden 7168, 128 heads, index_topk 2048) with 1 dense + 1 MoE
layer, 32 of the 256 experts, vocab 32768 and no MTP, generated in GPU memory (3.2 GB; the full `bench`
preset is 31 GB per case). benchmarks/gpu_check's model phase runs the same comparison with budgets.
`cuda` forces every op that has a CUDA kernel to it and the others (gathers, sparse prefill) to Triton."""
import pytest
import torch

from deepseek_v32_plugin.checkpoint import make_state_dict
from deepseek_v32_plugin.config import preset_config
from deepseek_v32_plugin.model import ReferenceModel

pytestmark = pytest.mark.gpu


REAL_WIDTH = dict(n_routed_experts=32, vocab_size=32768, num_nextn_predict_layers=0)


def _logits(model, ids, backend, monkeypatch, mla_format):
    monkeypatch.setenv("DSV32_BACKEND", backend)
    from deepseek_v32_plugin.ops import _cuda, _dispatch
    for op in _dispatch._FAMILY_OF:
        if backend == "cuda" and _cuda.get_op(op) is None:
            monkeypatch.setenv(f"DSV32_BACKEND_{op.upper()}", "triton")
    _dispatch._cache.clear()
    cache = model.new_cache(-(-len(ids) // 64) + 1, mla_format)
    seq = cache.new_sequence()
    prefill = model.forward(ids[:-4], seq, cache)[0]
    decode = torch.cat([model.forward(ids[i:i + 1], seq, cache)[0] for i in range(len(ids) - 4, len(ids))])
    return torch.cat([prefill, decode])


@pytest.mark.parametrize("preset,n_tokens", [("tiny", 100), ("real-width", 2300)])
@pytest.mark.parametrize("kernels", ["triton", "cuda"])
@pytest.mark.parametrize("mla_format", ["bf16", "fp8_ds_mla"])
def test_model_on_kernels_matches_references(preset, n_tokens, kernels, mla_format, monkeypatch):
    if kernels == "cuda":
        from deepseek_v32_plugin.ops import _cuda
        if not _cuda.is_available():
            pytest.skip(f"CUDA extension unavailable: {_cuda.unavailable_reason()}")
    cfg = preset_config("bench", **REAL_WIDTH) if preset == "real-width" else preset_config(preset)
    tensors = make_state_dict(cfg, seed=1, device="cuda", include_mtp=False)
    model = ReferenceModel(cfg, tensors, dtype=torch.bfloat16, device="cuda")
    del tensors
    ids = torch.randint(2, cfg.vocab_size, (n_tokens,), device="cuda")   # > index_topk: sparse for real
    ref = _logits(model, ids, "torch", monkeypatch, mla_format).float()
    got = _logits(model, ids, kernels, monkeypatch, mla_format).float()
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert cos.min() > 0.98, cos.min()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
