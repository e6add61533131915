"""Fixtures for the SGLang integration tests (run in .venvs/sglang, made by scripts/env_sglang.sh).

A generated tiny V3.2 checkpoint (exact HF format: FP8 128x128 blocks, indexer, MTP layer; index_topk 32, so
prompts longer than 32 tokens run real top-k selection; the conditioned checkpoint of integration_tests/it_common.py,
fixed by DSV32_TEST_SEED, default 0) and the engine-neutral reference model on it.

Oracle and tolerance. SGLang serves FP8 checkpoints in bf16 only (it rejects float32 with fp8 quantization), so
the tight oracle is ReferenceModel(dtype=bfloat16): same ops, same dtype. Our adapter's prefill hidden states
equal it bit for bit, so input logprobs must agree to LOGPROB_TOL_BF16 and greedy tokens exactly. Against the
fp32 reference the short prompts (len <= index_topk: every key selected, DSA == dense MLA) must agree to
LOGPROB_TOL_FP32; for longer prompts bf16 rounding legitimately changes which near-tied keys the indexer keeps
on this random tiny model, so there we only compare with the bf16 reference.
"""
import os
import sys

import pytest
import torch

# the test modules import helpers with `from conftest import ...`: make that work from any cwd
# (the repo's pytest config uses --import-mode=importlib, which does not put test dirs on sys.path)
_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (_HERE, os.path.dirname(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
from it_common import (SEED, check_greedy, pytest_runtest_makereport, record_stat,  # noqa: E402,F401
                       reference_logprobs, write_tiny_checkpoint)
# every engine started by these tests checks the backend's slot invariant (see backend.py, check_slots)
os.environ.setdefault("DSV32_CHECK_SLOTS", "1")
# Bounds >= 3x the worst of a seed sweep (scripts/sweep.py, seeds 1-4, conditioned checkpoint, 2026-12-06):
# max |logprob - bf16 reference| 1.9e-6 (the adapter's prefill equals the bf16 reference up to GEMM blocking);
# max |logprob - fp32 reference| (len <= index_topk) 6.5e-2
LOGPROB_TOL_BF16 = 2e-3
LOGPROB_TOL_FP32 = 0.2
SPEC_KW = dict(speculative_algorithm="EAGLE", speculative_num_steps=2, speculative_eagle_topk=1,
               speculative_num_draft_tokens=3)   # the MTP layer drafts a 2-token chain per step


def keep_test_runner_alive(signum, frame):
    """SGLang's SIGQUIT handler: a scheduler that fails to start sends SIGQUIT to the launching process, whose
    default handler then kills its whole process tree -- pytest included ("Killed", no report). With this one
    the launching process lives on and sglang.Engine raises (the scheduler's error is in the captured log), so
    a failed start is one failed test with its message."""
    import logging
    logging.getLogger("dsv32.tests").error("an SGLang child process failed (SIGQUIT); the engine start will raise")


# Memory: on CPU SGLang sizes the KV pool from system-wide available memory measured before and after loading
# the weights, and refuses to start when the weights seem to have eaten more than (1 - mem_fraction_static) of
# it -- with 0.02, any other process's memory churn during the load does that. 0.6 leaves room for that drift;
# max_total_tokens caps the pool itself (64 MB on the tiny model: 50 concurrent requests of <= 160 tokens fit).
ENGINE_KW = dict(device="cpu", mem_fraction_static=0.6, max_total_tokens=16384, disable_cuda_graph=True,
                 log_level="error", dtype="bfloat16", custom_sigquit_handler=keep_test_runner_alive)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return write_tiny_checkpoint(str(tmp_path_factory.mktemp("dsv32_tiny_sglang")))


@pytest.fixture(scope="session")
def draftable_ckpt(tmp_path_factory):
    """Same format, but its MTP layer drafts the target's greedy tokens well (testing_checkpoints.py): for
    speculative-decoding tests that need accepted drafts."""
    from deepseek_v32_plugin.config import preset_config
    from deepseek_v32_plugin.testing_checkpoints import write_draftable_checkpoint
    path = str(tmp_path_factory.mktemp("dsv32_draftable_sglang"))
    write_draftable_checkpoint(preset_config("tiny"), path, seed=SEED, overwrite=True)
    return path


@pytest.fixture(scope="session")
def ref_draftable_bf16(draftable_ckpt):
    from deepseek_v32_plugin.checkpoint import load_checkpoint
    from deepseek_v32_plugin.model import ReferenceModel
    cfg, tensors = load_checkpoint(draftable_ckpt)
    return ReferenceModel(cfg, tensors, dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def ref_tensors(tiny_ckpt):
    from deepseek_v32_plugin.checkpoint import load_checkpoint
    return load_checkpoint(tiny_ckpt)


@pytest.fixture(scope="session")
def ref_bf16(ref_tensors):
    from deepseek_v32_plugin.model import ReferenceModel
    cfg, tensors = ref_tensors
    return ReferenceModel(cfg, tensors, dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def ref_fp32(ref_tensors):
    from deepseek_v32_plugin.model import ReferenceModel
    cfg, tensors = ref_tensors
    return ReferenceModel(cfg, tensors)


def prompt_ids(n: int, seed: int, vocab: int = 1024) -> list:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def reference_input_logprobs(ref, ids: list) -> list:
    """logprob of ids[i] given ids[:i], for i >= 1 (what SGLang returns as input_token_logprobs)."""
    cache = ref.new_cache(-(-len(ids) // 64) + 1)
    seq = cache.new_sequence()
    logits, _ = ref.forward(ids, seq, cache)
    lp = torch.log_softmax(logits.float(), -1)
    return [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]


def check_greedy_against(ref, ids: list, out_ids: list, info=None) -> int:
    """The engine's greedy tokens out_ids for prompt ids are the reference's (teacher-forced on out_ids) up to
    the reference's first near-tie (it_common.check_greedy); returns how many tokens were checked."""
    return check_greedy(reference_logprobs(ref, ids, out_ids)[len(ids) - 1:], out_ids, info=info)
