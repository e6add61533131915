"""benchmarks/context_curve's plumbing on CPU (the benchmark itself is not a CI stage): the dense baseline copy
holds the V3.2 checkpoint's weights dequantized, without the indexer; the work model's curves have the shape
DSA's math gives them; the RSS watchdog kills an engine process tree over its cap; and a --quick run (decode
phase on either side of index_topk, no engines) writes its rows, table and plot. Fixed seeds (--seed 0, the
presets' generator)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CC = os.path.join(ROOT, "benchmarks", "context_curve")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod      # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_dense_baseline_is_the_same_weights_without_indexer(tmp_path):
    import torch
    from deepseek_v32_plugin.checkpoint import load_checkpoint, write_checkpoint
    from deepseek_v32_plugin.config import preset_config
    from deepseek_v32_plugin.ops.fp8_quant import fp8_dequant_weight
    from deepseek_v32_plugin.testing_checkpoints import DENSE_ARCHITECTURE, write_dense_baseline
    from safetensors.torch import load_file
    cfg = preset_config("tiny")
    src = write_checkpoint(cfg, str(tmp_path / "v32"), seed=0)
    dst = write_dense_baseline(src, str(tmp_path / "dense"))
    conf = json.load(open(os.path.join(dst, "config.json")))
    assert conf["architectures"] == [DENSE_ARCHITECTURE] and conf["model_type"] == "deepseek_v3"
    assert not [k for k in conf if k.startswith("index_")] and "quantization_config" not in conf
    assert conf["num_nextn_predict_layers"] == 0
    dense = {}
    for f in os.listdir(dst):
        if f.endswith(".safetensors"):
            dense.update(load_file(os.path.join(dst, f)))
    _, v32 = load_checkpoint(src, include_mtp=False)
    want = {n for n in v32 if ".indexer." not in n and not n.endswith("_scale_inv")}
    assert set(dense) == want
    assert all(t.dtype == torch.bfloat16 for n, t in dense.items() if t.is_floating_point())
    w = "model.layers.1.self_attn.q_b_proj.weight"
    ref = fp8_dequant_weight(v32[w], v32[w + "_scale_inv"]).to(torch.bfloat16)
    assert torch.equal(dense[w], ref)
    assert torch.equal(dense["model.norm.weight"], v32["model.norm.weight"].to(torch.bfloat16))
    idx = json.load(open(os.path.join(dst, "model.safetensors.index.json")))["weight_map"]
    assert set(idx) == want and os.path.exists(os.path.join(dst, "tokenizer.json"))


def test_work_model_curves():
    pytest.importorskip("triton")
    wm = _load("work_model", os.path.join(ROOT, "benchmarks", "work_model.py"))
    from deepseek_v32_plugin.config import preset_config
    cfg = preset_config("real-width")
    t = cfg.index_topk
    d = [wm.decode_work(cfg, c, "dense").macs for c in (t // 2, t, 4 * t, 16 * t)]
    o = [wm.decode_work(cfg, c, "ours").macs for c in (t // 2, t, 4 * t, 16 * t)]
    assert d[3] - d[2] == pytest.approx(4 * (d[2] - d[1]), rel=1e-9)   # dense: linear in context
    # ours past index_topk: attention fixed, only the indexer's 64 x 128 MACs per key per layer grow
    per_key = cfg.num_hidden_layers * cfg.index_n_heads * cfg.index_head_dim
    assert o[3] - o[2] == 12 * t * per_key
    assert o[3] < d[3] / 5                                          # 32K: DSA's promise at real width
    # at context <= index_topk DSA is dense attention + the indexer's projections only
    # (the key projection only: no query-side indexer work when nothing is scored, DSAPlan.needs_scores)
    assert o[0] - d[0] == cfg.num_hidden_layers * cfg.hidden_size * cfg.index_head_dim
    padded = wm.decode_work(cfg, t // 2, "ours", padded=True).macs
    assert padded == pytest.approx(wm.decode_work(cfg, t, "ours").macs)
    p = [wm.prefill_work(cfg, n, "ours").macs for n in (t, t + 1)]
    proj = cfg.q_lora_rank * cfg.index_n_heads * cfg.index_head_dim + cfg.hidden_size * cfg.index_n_heads
    row = cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim) * cfg.kv_lora_rank
    # one more row: its projections and attention over t keys, the query projections of every row, and
    # scoring of that one row's t + 1 keys
    assert p[1] - p[0] == pytest.approx(
        cfg.num_hidden_layers * (wm._proj_params(cfg, True, scored=False)[0] + row + cfg.num_attention_heads * 1088 * t
                                 + (t + 1) * proj + cfg.index_n_heads * cfg.index_head_dim * (t + 1))
        + sum(wm._proj_params(cfg, True)[1]) + cfg.hidden_size * cfg.vocab_size)


def test_rss_watchdog_kills_a_tree_over_its_cap():
    main = _load("context_curve_main", os.path.join(CC, "__main__.py"))
    # a child of the worker grows to ~600 MB and sleeps: the tree sum passes a 300 MB cap
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; b = bytearray(600 << 20); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(60)'])")
    lines = []
    out = main.run_capped([sys.executable, "-c", code], dict(os.environ), 300 << 20, 50, lines.append)
    assert out["killed"] and out["killed"].startswith("RSS") and out["rc"] == -9, out
    assert out["peak_rss"] > 300 << 20


def test_quick_run_writes_rows_table_and_plot(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, CC, "--quick", "--engines", "", "--phases", "checkpoints,decode,report",
                        "--decode-contexts", "64,320", "--out", str(tmp_path), "--ckpt-dir", str(tmp_path / "ckpt")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [json.loads(ln) for ln in open(tmp_path / "context_curve.jsonl")]
    kinds = [r["kind"] for r in rows]
    assert kinds[0] == "meta" and kinds[-1] == "end" and "checkpoint" in kinds
    dec = {(r["context"], r["variant"]): r for r in rows if r["kind"] == "decode"}
    assert set(dec) == {(c, v) for c in (64, 320) for v in ("ours", "dense")}     # 320 > index_topk 256
    assert all(len(r["ms"]) == 2 and r["median"] > 0 for r in dec.values())
    check = next(r for r in rows if r["kind"] == "decode_check")
    assert check["context"] == 64 and check["cos"] > 0.999, check      # DSA == dense where all keys selected
    md = (tmp_path / "CONTEXT_CURVE.md").read_text()
    assert "| 64 |" in md and "| 320 |" in md and "index_topk 256" in md
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "context_curve.png").stat().st_size > 10_000 and "context_curve.png" in md
    except ImportError:
        assert "matplotlib is not installed" in md
