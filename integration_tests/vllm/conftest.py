"""Fixtures for the vLLM integration tests: a freshly generated tiny V3.2 checkpoint (exact HF format, FP8
blocks, MTP layer) and the engine-neutral reference model on it (the oracle). Helpers live in vllm_it.py."""
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:   # pytest runs with --import-mode=importlib: make vllm_it / replay_metadata importable
    sys.path.insert(0, HERE)
SEED = int(os.environ.get("DSV32_TEST_SEED", torch.randint(0, 10_000, ()).item()))


@pytest.fixture(scope="session")
def seed():
    """This run's checkpoint seed, for tests that write their own checkpoint (`from conftest import SEED` would
    import this file a second time under --import-mode=importlib and draw another random seed)."""
    return SEED


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from deepseek_v32_plugin.checkpoint import write_checkpoint
    from deepseek_v32_plugin.config import preset_config
    path = str(tmp_path_factory.mktemp("dsv32_tiny"))
    print(f"tiny checkpoint seed {SEED} (DSV32_TEST_SEED={SEED} to reproduce)")
    write_checkpoint(preset_config("tiny"), path, seed=SEED, overwrite=True)
    return path


@pytest.fixture(scope="session")
def reference(tiny_ckpt):
    from deepseek_v32_plugin.checkpoint import load_checkpoint
    from deepseek_v32_plugin.model import ReferenceModel
    cfg, tensors = load_checkpoint(tiny_ckpt)
    return ReferenceModel(cfg, tensors)   # fp32, naive ops


