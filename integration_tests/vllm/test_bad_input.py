"""Engine start with inputs the plugin cannot serve: one clear error naming the problem."""
import json
import os

import pytest
from safetensors.torch import load_file, save_file

from vllm_it import run_engine

ENGINE = dict(dtype="float32", max_model_len=256)


def _copy_ckpt(src, dst, drop=(), config_edit=None):
    os.makedirs(dst, exist_ok=True)
    index = json.load(open(os.path.join(src, "model.safetensors.index.json")))
    for f in os.listdir(src):
        if f.endswith(".safetensors"):
            tensors = load_file(os.path.join(src, f))
            save_file({k: v for k, v in tensors.items() if not any(d in k for d in drop)}, os.path.join(dst, f),
                      metadata={"format": "pt"})
        elif f != "model.safetensors.index.json":
            with open(os.path.join(src, f), "rb") as a, open(os.path.join(dst, f), "wb") as b:
                b.write(a.read())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not any(d in k for d in drop)}
    json.dump(index, open(os.path.join(dst, "model.safetensors.index.json"), "w"))
    if config_edit:
        cfg = json.load(open(os.path.join(dst, "config.json")))
        config_edit(cfg)
        json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
    return dst


def _start_fails(tmp_path, model, engine=ENGINE) -> str:
    with pytest.raises(AssertionError) as e:
        run_engine(tmp_path, model, engine, [{"prompt_token_ids": [5, 6, 7]}], max_tokens=1, timeout=300)
    return str(e.value)


def test_config_without_index_topk(tiny_ckpt, tmp_path):
    bad = _copy_ckpt(tiny_ckpt, str(tmp_path / "ck"), config_edit=lambda c: c.pop("index_topk"))
    err = _start_fails(tmp_path, bad)
    assert "missing required field(s) ['index_topk']" in err, err[-2000:]


def test_checkpoint_without_indexer_weights(tiny_ckpt, tmp_path):
    bad = _copy_ckpt(tiny_ckpt, str(tmp_path / "ck"), drop=("self_attn.indexer.",))
    err = _start_fails(tmp_path, bad)
    assert "missing indexer weights" in err and "layers.0.self_attn.indexer" in err, err[-2000:]


def test_unservable_block_size(tiny_ckpt, tmp_path):
    err = _start_fails(tmp_path, tiny_ckpt, dict(ENGINE, block_size=16))
    assert "block_size=16" in err and "64-token pages" in err, err[-2000:]


@pytest.mark.parametrize("engine, flag", [
    (dict(pipeline_parallel_size=3), "--pipeline-parallel-size=3: num_hidden_layers=2"),
    # tiny: moe_intermediate_size 256 over 4 ranks = 64 columns, not a 128-wide FP8 block
    (dict(tensor_parallel_size=4), "--tensor-parallel-size=4"),
], ids=["pp3-two-layers", "tp4-fp8-block"])
def test_unservable_parallel_layout(tiny_ckpt, tmp_path, engine, flag):
    """Refused when vLLM builds its config (parallel.check_layout), before any worker starts."""
    err = _start_fails(tmp_path, tiny_ckpt, dict(ENGINE, **engine))
    assert "cannot serve this parallel layout" in err and flag in err, err[-2000:]
