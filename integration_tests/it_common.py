"""What the vLLM and SGLang suites share: the run's seed, the checkpoints they serve, the greedy check, and
the per-check statistics a seed sweep (scripts/sweep.py) reads.

Determinism: every checkpoint, prompt set and engine run is fixed by SEED (DSV32_TEST_SEED, default 0), so a
commit gives the same verdict every run; scripts/sweep.py reruns the engine comparisons over other seeds and
reports failure rates per check (from record_stat's figures). A failing test's report names the seed."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

import pytest
import torch

from deepseek_v32_plugin.check_stats import record_stat  # noqa: F401 (re-exported for the suites)

SEED = int(os.environ.get("DSV32_TEST_SEED", "0"))
NEAR_TIE = 0.25   # top-2 logprob gap below which engine rounding may legitimately pick the other token


def write_tiny_checkpoint(path: str) -> str:
    """The suites' tiny checkpoint: the conditioned one (testing_checkpoints.write_conditioned_checkpoint:
    random weights, attention and routed-expert branches scaled so legitimate FP8/bf16 noise stays small)."""
    from deepseek_v32_plugin.config import preset_config
    from deepseek_v32_plugin.testing_checkpoints import write_conditioned_checkpoint
    print(f"tiny conditioned checkpoint seed {SEED} (DSV32_TEST_SEED={SEED} to reproduce)")
    return write_conditioned_checkpoint(preset_config("tiny"), path, seed=SEED, overwrite=True)


def reference_logprobs(ref, prompt: list, generated: list, mla_format: str = "bf16") -> torch.Tensor:
    """log-softmax of the reference's logits over prompt + generated[:-1] (teacher forcing): [n, vocab]."""
    seq_ids = prompt + generated[:-1]
    cache = ref.new_cache(-(-len(seq_ids) // 64) + 1, mla_format)
    logits, _ = ref.forward(seq_ids, cache.new_sequence(), cache)
    return torch.log_softmax(logits.float(), dim=-1)


def check_greedy(lp: torch.Tensor, tokens: list, info=None, margin: float = NEAR_TIE) -> int:
    """Engine greedy tokens vs the reference's log-probs lp [len(tokens), vocab] (teacher-forced on the
    engine's tokens): each token is the reference's argmax unless the reference's top-2 gap there is below
    `margin`; after such a near-tie the continuations may legitimately differ, so checking stops there.
    Returns the number of tokens checked."""
    for i, tok in enumerate(tokens):
        row = lp[i]
        top2 = row.topk(2).values
        if int(row.argmax()) != tok:
            assert (top2[0] - top2[1]).item() < margin, \
                f"step {i}: engine {tok}, reference {int(row.argmax())} (top-2 gap " \
                f"{(top2[0] - top2[1]).item():.3f} >= margin {margin:.2f}) {info or ''} seed {SEED}"
            return i
    return len(tokens)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(cmd: list, port: int, log_path, health: str = "/health", env=None, timeout: float = 420):
    """Start an example server (cmd, its own process group, output to log_path), wait until GET health answers
    200, yield its URL; stop the whole process group afterwards. A server that exits or is not ready in time is
    one AssertionError carrying the end of its log."""
    import requests
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited rc={proc.returncode}:\n{open(log_path).read()[-6000:]}")
            try:
                if requests.get(url + health, timeout=30).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise AssertionError(f"server not ready after {timeout:.0f} s:\n{open(log_path).read()[-6000:]}")
            time.sleep(2)
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Stop a process started with start_new_session=True and everything it spawned (its process group):
    SIGTERM, then SIGKILL if it has not exited within timeout seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):   # reap it; never mask the test's own error
            proc.wait(timeout=timeout)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        rep.sections.append(("seed", f"checkpoint/prompt seed {SEED}: reproduce with DSV32_TEST_SEED={SEED} "
                                     f"pytest '{item.nodeid}'"))
