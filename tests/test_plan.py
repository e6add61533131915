"""`deepseek-v32 plan` and the layouts behind it (deepseek_v32_plugin/plan.py, parallel.py), against the full
preset's checkpoint table and hand-computed figures."""

import pytest

from deepseek_v32_plugin import cli
from deepseek_v32_plugin.checkpoint import expected_tensors
from deepseek_v32_plugin.config import preset_config
from deepseek_v32_plugin.parallel import LayoutError, check_layout, sglang_layout, stage_layers, vllm_layout
from deepseek_v32_plugin.plan import (GIB, INDEXER_BYTES_PER_TOKEN, LATENT_BYTES_PER_TOKEN, make_plan,
                                      weight_bytes_per_gpu)

FULL = preset_config("full")
SPECS = expected_tensors(FULL)
TOTAL = sum(s.nbytes for s in SPECS.values())
UNQUANT_VLLM = (".kv_b_proj.weight", ".indexer.wq_b.weight", ".indexer.wk.weight")


def _bf16_delta(pred) -> int:
    """Bytes added by storing the FP8 weights matching pred in bf16 without their scales."""
    return sum(s.numel - SPECS[k + "_scale_inv"].nbytes for k, s in SPECS.items() if s.fp8 and pred(k))


def test_cache_bytes_equal_the_ops_layouts():
    from deepseek_v32_plugin.ops.indexer import BYTES_PER_TOKEN
    from deepseek_v32_plugin.ops.sparse_mla import FP8_BYTES, HEAD_576
    assert LATENT_BYTES_PER_TOKEN == {"fp8": FP8_BYTES, "bf16": 2 * HEAD_576} == {"fp8": 656, "bf16": 1152}
    assert INDEXER_BYTES_PER_TOKEN == BYTES_PER_TOKEN == 132


def test_full_checkpoint_total_is_the_published_size():
    # the HF repo of DeepSeek-V3.2 holds ~689 GB of safetensors (163 shards)
    assert 685e9 < TOTAL < 695e9


def test_one_gpu_holds_the_table_as_each_adapter_stores_it():
    one = vllm_layout()
    assert weight_bytes_per_gpu(FULL, one, "vllm") == [TOTAL + _bf16_delta(lambda k: k.endswith(UNQUANT_VLLM))]
    assert weight_bytes_per_gpu(FULL, sglang_layout(), "sglang") == [TOTAL + _bf16_delta(lambda k: ".experts." not in k)]
    no_mtp = sum(s.nbytes for s in expected_tensors(FULL, include_mtp=False).values())
    mtp_delta = _bf16_delta(lambda k: k.endswith(UNQUANT_VLLM) and k.startswith("model.layers.61."))
    assert weight_bytes_per_gpu(FULL, one, "vllm", mtp=False) == [
        TOTAL - (TOTAL - no_mtp) + _bf16_delta(lambda k: k.endswith(UNQUANT_VLLM)) - mtp_delta]


def test_tensor_parallel_splits_all_but_the_replicated_tensors():
    one = weight_bytes_per_gpu(FULL, vllm_layout(), "vllm")[0]
    per = weight_bytes_per_gpu(FULL, vllm_layout(tp=8), "vllm")[0]
    replicated = sum(s.nbytes if not k.endswith(UNQUANT_VLLM) else s.numel * 2 for k, s in SPECS.items()
                     if (".q_a_proj." in k or ".kv_a_proj_with_mqa." in k or ".indexer." in k or "norm" in k
                         or ".mlp.gate." in k or ".eh_proj." in k) and not (k.endswith("_scale_inv")
                                                                         and k[:-10].endswith(UNQUANT_VLLM)))
    # 8 x per-GPU = everything once + the replicated tensors 7 more times (+ per-tensor rounding up)
    assert 0 <= 8 * per - (one + 7 * replicated) <= 8 * len(SPECS)
    # expert parallel moves whole experts instead of intermediate slices: the same bytes up to rounding
    ep = weight_bytes_per_gpu(FULL, vllm_layout(tp=8, ep=True), "vllm")[0]
    assert abs(ep - per) <= len(SPECS)


def test_pipeline_stages_split_layers_as_vllm_does():
    # vllm/distributed/utils.py get_pp_indices: remainder to the stages before the last, backwards
    assert stage_layers(61, 2) == [31, 30]
    assert stage_layers(61, 4) == [15, 15, 16, 15]
    assert stage_layers(61, 3) == [20, 21, 20]
    assert stage_layers(2, 2) == [1, 1]
    # SGLang's get_pp_indices: remainder to the last stages
    assert stage_layers(61, 2, "sglang") == [30, 31] and stage_layers(61, 4, "sglang") == [15, 15, 15, 16]
    with pytest.raises(LayoutError, match="num_hidden_layers=2"):
        stage_layers(2, 3)
    stages = weight_bytes_per_gpu(FULL, vllm_layout(pp=2), "vllm")
    assert sum(stages) == weight_bytes_per_gpu(FULL, vllm_layout(), "vllm")[0]
    lm = SPECS["lm_head.weight"].nbytes
    assert stages[1] > stages[0] - lm   # the last stage has lm_head and the MTP layer


def test_context_tokens_from_the_remaining_memory():
    h100 = 81559 << 20
    p = make_plan(vllm_layout(tp=8, pp=2), "vllm", h100, kv_cache="fp8", reserve_bytes=6 * GIB)
    assert p.usable_bytes == int(h100 * 0.9) - 6 * GIB
    assert [s.layers for s in p.stages] == [31, 31]   # 30 + the MTP layer on the last stage
    for s in p.stages:
        assert s.cache_bytes_per_token == s.layers * (656 + 132)
        assert s.tokens == (p.usable_bytes - s.weight_bytes) // s.cache_bytes_per_token
    assert p.fits and p.total_tokens == min(s.tokens for s in p.stages)
    bf16 = make_plan(vllm_layout(tp=8, pp=2), "vllm", h100, kv_cache="bf16", reserve_bytes=6 * GIB)
    assert bf16.stages[0].cache_bytes_per_token == 31 * (1152 + 132)
    # the full model does not fit one node of 8 x H100-80GB; it does on 8 x H200
    assert not make_plan(vllm_layout(tp=8), "vllm", h100).fits
    assert make_plan(vllm_layout(tp=8), "vllm", 143771 << 20).fits


@pytest.mark.parametrize("lay, flag", [
    (vllm_layout(tp=3), "--tensor-parallel-size=3"),
    (vllm_layout(pp=62), "--pipeline-parallel-size=62"),
    (vllm_layout(tp=8, dp=4), "--tensor-parallel-size=8"),           # 2048 / 32 = 64: not an FP8 block
    (vllm_layout(tp=1, dp=512, ep=True), "--enable-expert-parallel=True"),   # more EP ranks than experts
    (sglang_layout(tp=16, ep=1), "--tp-size=16"),                      # shared expert 2048 / 16 = 128: fine...
], ids=["heads", "layers", "moe-block", "ep-ranks", "sglang-tp16"])
def test_unservable_layouts_name_the_flag(lay, flag):
    if flag == "--tp-size=16":   # ...and routed 2048 / 16 = 128: servable
        check_layout(FULL, lay)
        with pytest.raises(LayoutError, match="--tp-size=32"):
            check_layout(FULL, sglang_layout(tp=32))
        return
    with pytest.raises(LayoutError, match=flag):
        check_layout(FULL, lay)
    check_layout(FULL, vllm_layout(tp=8, dp=4, ep=True))   # the same GPUs with the experts split instead


def test_cli_plan_recipes(capsys):
    assert cli.main(["plan", "--gpus", "16", "--gpu", "h100", "--engine", "vllm"]) == 0
    out = capsys.readouterr().out
    assert "recommended: TP8 x PP2" in out
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 2" in out and "--node-rank 1" in out
    assert "--headless" in out and out.count("--headless") == 1
    assert cli.main(["plan", "--gpus", "8", "--gpu", "h100"]) == 1           # 8 x 80 GB: no layout fits
    assert "does not fit" in capsys.readouterr().out
    assert cli.main(["plan", "--gpus", "16", "--gpu", "a100-80g", "--engine", "sglang"]) == 0
    assert "--tp-size 8 --pp-size 2" in capsys.readouterr().out
    assert cli.main(["plan", "--gpus", "16", "--gpu", "h100", "--tp", "16", "--dp", "2"]) == 2   # 32 GPUs
    assert "--gpus=16" in capsys.readouterr().err
    assert cli.main(["plan", "--gpus", "12", "--gpu", "h100", "--tp", "12"]) == 2
    assert "--tensor-parallel-size=12" in capsys.readouterr().err


def test_sglang_dp_attention_splits_only_the_ffn_side():
    """SGLang DP attention (--tp-size 8 --attn-dp-size 8): each GPU holds a whole attention (attn_tp 1) and the
    embedding; the dense MLPs, the shared expert and lm_head stay split over the TP group, the experts over EP."""
    tp8 = sglang_layout(tp=8, ep=8)
    dpa = sglang_layout(tp=8, dp=8, ep=8, dp_attention=True)
    assert (dpa.attn_tp, dpa.mlp_tp, dpa.replicas, dpa.gpus) == (1, 8, 8, 8)
    bf16 = lambda k: SPECS[k].numel * 2 if SPECS[k].fp8 else SPECS[k].nbytes   # noqa: E731  (SGLang: bf16 at load)
    mtp = f"model.layers.{FULL.num_hidden_layers}."
    attn = sum(bf16(k) for k in SPECS if not k.startswith(mtp) and k.endswith(
        (".q_b_proj.weight", ".kv_b_proj.weight", ".o_proj.weight")))
    embed = SPECS["model.embed_tokens.weight"].nbytes
    # what moves from split-by-8 to whole: the attention projections and the embedding (+ per-tensor rounding)
    delta = weight_bytes_per_gpu(FULL, dpa, "sglang", mtp=False)[0] - weight_bytes_per_gpu(FULL, tp8, "sglang",
                                                                                             mtp=False)[0]
    assert abs(delta - (attn + embed) * 7 / 8) <= len(SPECS)
    with pytest.raises(LayoutError, match="--attn-dp-size=3"):
        sglang_layout(tp=8, dp=3, dp_attention=True)
    with pytest.raises(LayoutError, match="--tp-size=32"):   # the shared expert: 2048 / 32 = 64 columns
        check_layout(FULL, sglang_layout(tp=32, dp=32, ep=32, dp_attention=True))
    with pytest.raises(LayoutError, match="--no-mtp"):   # our backend: no speculative decoding with DP attention
        make_plan(dpa, "sglang", 143771 << 20)
    assert make_plan(dpa, "sglang", 143771 << 20, mtp=False).layout.replicas == 8


def test_cli_plan_offers_sglang_dp_attention_without_mtp(capsys):
    assert cli.main(["plan", "--gpus", "8", "--gpu", "h200", "--engine", "sglang"]) == 0
    assert "DP8 attention" not in capsys.readouterr().out
    assert cli.main(["plan", "--gpus", "8", "--gpu", "h200", "--engine", "sglang", "--no-mtp",
                     "--tp", "8", "--dp", "8", "--ep", "8", "--dp-attention"]) == 0
    out = capsys.readouterr().out
    assert "--tp-size 8 --attn-dp-size 8 --ep-size 8" in out and "--enable-dp-attention" not in out
    assert cli.main(["plan", "--gpus", "8", "--gpu", "h200", "--engine", "sglang", "--no-mtp"]) == 0
    assert "DP8 attention + EP8" in capsys.readouterr().out
