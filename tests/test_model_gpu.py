"""The whole reference model on a GPU: every op through the kernels (auto dispatch: CUDA ext -> Triton)
against the same model with every op on the PyTorch references. Skipped without CUDA.

`bench` is the real per-layer V3.2 shape (hidden 7168, 128 heads, 256 experts, index_topk 2048) with
two layers + MTP, generated in GPU memory (too big to carry to the lent machine)."""
import pytest
import torch

from deepseek_v32_plugin.checkpoint import make_state_dict
from deepseek_v32_plugin.config import preset_config
from deepseek_v32_plugin.model import ReferenceModel

pytestmark = pytest.mark.gpu


def _logits(model, ids, backend, monkeypatch, mla_format):
    monkeypatch.setenv("DSV32_BACKEND", backend)
    from deepseek_v32_plugin.ops import _dispatch
    _dispatch._cache.clear()
    cache = model.new_cache(-(-len(ids) // 64) + 1, mla_format)
    seq = cache.new_sequence()
    prefill = model.forward(ids[:-4], seq, cache)[0]
    decode = torch.cat([model.forward(ids[i:i + 1], seq, cache)[0] for i in range(len(ids) - 4, len(ids))])
    return torch.cat([prefill, decode])


@pytest.mark.parametrize("preset,n_tokens", [("tiny", 100), ("bench", 2300)])
@pytest.mark.parametrize("kernels", ["triton", "cuda"])
@pytest.mark.parametrize("mla_format", ["bf16", "fp8_ds_mla"])
def test_model_on_kernels_matches_references(preset, n_tokens, kernels, mla_format, monkeypatch):
    if kernels == "cuda":
        from deepseek_v32_plugin.ops import _cuda
        if not _cuda.is_available():
            pytest.skip(f"CUDA extension unavailable: {_cuda.unavailable_reason()}")
    cfg = preset_config(preset)
    tensors = make_state_dict(cfg, seed=1, device="cuda")
    model = ReferenceModel(cfg, tensors, dtype=torch.bfloat16, device="cuda")
    del tensors
    ids = torch.randint(2, cfg.vocab_size, (n_tokens,), device="cuda")   # > index_topk: sparse for real
    ref = _logits(model, ids, "torch", monkeypatch, mla_format).float()
    got = _logits(model, ids, kernels, monkeypatch, mla_format).float()
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert cos.min() > 0.98, cos.min()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
