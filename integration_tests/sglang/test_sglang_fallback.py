"""An op our fast backend cannot serve falls back to the next one inside SGLang, with one warning naming it.

Real kernels, real limit: the Triton indexer-logits kernel serves at most 128 indexer heads. A tiny V3.2
checkpoint with index_n_heads=256 is served with our Triton kernels enabled on CPU (DSV32_CPU_TRITON=1 under
Triton's interpreter) for that op only (DSV32_BACKEND=torch for the rest keeps the run fast): the kernel's
launcher refuses before launching (`Unsupported`), the ops dispatch falls back to the PyTorch reference and
warns once, naming the op and the limit; the output equals the reference model's.
"""
import pytest
import torch

from conftest import ENGINE_KW, check_greedy_against, prompt_ids

OP = "fp8_indexer_logits"
ENV = {"TRITON_INTERPRET": "1", "DSV32_CPU_TRITON": "1", "DSV32_BACKEND": "torch", f"DSV32_BACKEND_{OP.upper()}": "auto"}


@pytest.fixture(scope="module")
def wide_indexer_ckpt(tmp_path_factory):
    from deepseek_v32_plugin.checkpoint import write_checkpoint
    from deepseek_v32_plugin.config import preset_config
    cfg = preset_config("tiny", index_n_heads=256)
    path = str(tmp_path_factory.mktemp("dsv32_wide_indexer"))
    write_checkpoint(cfg, path, seed=5, overwrite=True)
    return path


def test_unsupported_kernel_falls_back_with_one_warning(wide_indexer_ckpt, monkeypatch, capfd):
    import sglang

    from deepseek_v32_plugin.checkpoint import load_checkpoint
    from deepseek_v32_plugin.model import ReferenceModel
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)   # inherited by the scheduler process
    ids = [prompt_ids(40, seed=41), prompt_ids(50, seed=42)]   # above index_topk: the indexer selects
    eng = sglang.Engine(model_path=wide_indexer_ckpt, **ENGINE_KW)
    try:
        outs = [eng.generate(input_ids=p, sampling_params={"max_new_tokens": 4, "temperature": 0.0}) for p in ids]
    finally:
        eng.shutdown()
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if f"op {OP}: the triton backend cannot serve this call" in ln]
    assert len(lines) == 1, err[-3000:]
    assert "H=256 heads > 128" in lines[0] and "using torch" in lines[0]
    cfg, tensors = load_checkpoint(wide_indexer_ckpt)
    for k in ENV:
        monkeypatch.delenv(k)
    ref = ReferenceModel(cfg, tensors, dtype=torch.bfloat16)
    for p, o in zip(ids, outs):
        check_greedy_against(ref, p, o["output_ids"], info=len(p))
