"""Fixtures for the vLLM integration tests: a generated tiny V3.2 checkpoint (exact HF format, FP8 blocks, MTP
layer; the conditioned one of integration_tests/it_common.py, fixed by DSV32_TEST_SEED, default 0) and the
engine-neutral reference model on it (the oracle). Helpers live in vllm_it.py."""
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (HERE, os.path.dirname(HERE)):   # --import-mode=importlib: make vllm_it, replay_metadata, it_common importable
    if _p not in sys.path:
        sys.path.insert(0, _p)
from it_common import SEED, pytest_runtest_makereport, write_tiny_checkpoint  # noqa: E402,F401 (the hook is used by pytest)


def pytest_configure(config):
    config.addinivalue_line("markers", "inductor: opt-in (DSV32_INDUCTOR=1, scripts/test.sh compile): vLLM "
                                       "compiles our model with inductor on CPU (minutes of C++ builds)")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("DSV32_INDUCTOR", "0") != "1":
        skip = pytest.mark.skip(reason="opt-in: DSV32_INDUCTOR=1 (scripts/test.sh compile)")
        for item in items:
            if "inductor" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def seed():
    """This run's checkpoint seed (it_common.SEED), for tests that write their own checkpoint."""
    return SEED


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return write_tiny_checkpoint(str(tmp_path_factory.mktemp("dsv32_tiny")))


@pytest.fixture(scope="session")
def reference(tiny_ckpt):
    from deepseek_v32_plugin.checkpoint import load_checkpoint
    from deepseek_v32_plugin.model import ReferenceModel
    cfg, tensors = load_checkpoint(tiny_ckpt)
    return ReferenceModel(cfg, tensors)   # fp32, naive ops




@pytest.fixture(scope="session")
def reference_bf16(tiny_ckpt):
    """The reference in the bf16 serving dtype: the oracle for bf16 engine runs (same precision semantics)."""
    from deepseek_v32_plugin.checkpoint import load_checkpoint
    from deepseek_v32_plugin.model import ReferenceModel
    cfg, tensors = load_checkpoint(tiny_ckpt)
    return ReferenceModel(cfg, tensors, dtype=torch.bfloat16)
