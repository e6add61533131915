"""SGLang's CPUGraphRunner capturing and replaying decode with our backend (sglang.Engine, CPU, bf16).

On CPU SGLang captures decode only with --enable-torch-compile: CPUGraphRunner (model_executor/cpu_graph_runner.py)
calls our init_cpu_graph_state, then per captured batch size init_forward_metadata_capture_cpu_graph and
torch.compile(model.forward); every decode step of a batch size <= the largest captured one then calls our
init_forward_metadata on the live batch (a captured size) or on its own padded copy (smaller sizes) and runs
the compiled forward. Our backend plans such batches on the persistent plan made at capture (backend.py,
uniform plan), refilled in place by device ops -- the same code its CUDA-graph hooks run.

Default CI: TORCH_COMPILE_DISABLE=1, so the runner's capture/replay protocol and our persistent plan run
in the real engine while the forward stays eager (~3 min on a loaded 2-core machine). Inductor compiles the
tiny model in ~4.5 min per batch size there: DSV32_SGLANG_INDUCTOR=1 runs these tests compiled
(`bash scripts/test.sh sglang-graphs`).
Oracle: greedy tokens equal the bf16 reference up to its first near-tie (conftest.check_greedy_against), the
bound of the other decode checks.
"""
import json
import os

import pytest

from conftest import ENGINE_KW, check_greedy_against, prompt_ids

CAPTURED_BS = 2   # one captured size: a single request replays padded to it, two requests replay it exactly
GREEDY = {"max_new_tokens": 8, "temperature": 0.0}
INDUCTOR = os.environ.get("DSV32_SGLANG_INDUCTOR", "0") == "1"


@pytest.fixture(scope="module")
def graph_engine(tiny_ckpt, tmp_path_factory):
    import sglang
    log = str(tmp_path_factory.mktemp("dsv32_graph_log") / "graphs.jsonl")
    env = {"DSV32_SGLANG_GRAPH_LOG": log}
    if not INDUCTOR:
        env["TORCH_COMPILE_DISABLE"] = "1"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)   # the scheduler process inherits these
    kw = dict(ENGINE_KW)
    del kw["disable_cuda_graph"]
    try:
        eng = sglang.Engine(model_path=tiny_ckpt, enable_torch_compile=True, cuda_graph_bs_decode=[CAPTURED_BS],
                            torch_compile_max_bs=CAPTURED_BS, **kw)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    yield eng, log
    eng.shutdown()


def _events(log):
    with open(log) as f:
        return [json.loads(line) for line in f]


def test_capture_made_one_persistent_plan(graph_engine):
    eng, log = graph_engine
    info = eng.get_server_info()
    assert info["enable_torch_compile"] is True and info["attention_backend"] == "dsv32_sparse"
    captures = [e for e in _events(log) if e[0] == "capture"]
    assert [e[1:3] for e in captures] == [[CAPTURED_BS, 1]], captures


@pytest.mark.parametrize("n", [12, 90], ids=["len12-below-topk", "len90-above-topk-2pages"])
def test_single_request_replays_padded_plan(graph_engine, ref_bf16, n):
    """One request: the runner pads the batch to the captured size; every decode step plans on the plan
    captured for it (same buffers), and the tokens equal the reference."""
    eng, log = graph_engine
    before = len(_events(log))
    ids = prompt_ids(n, seed=1000 + n)
    out = eng.generate(input_ids=ids, sampling_params=GREEDY)
    _check_replays(_events(log), before, steps=GREEDY["max_new_tokens"] - 1)
    assert check_greedy_against(ref_bf16, ids, out["output_ids"]) >= 1


def test_two_requests_replay_captured_size(graph_engine, ref_bf16):
    """Two requests decoding together (a short one, whose top-k keeps every key, and one past index_topk over
    two pages): the live batch has the captured size; both equal the reference on their own."""
    eng, log = graph_engine
    before = len(_events(log))
    prompts = [prompt_ids(12, seed=3012), prompt_ids(90, seed=3090)]
    outs = eng.generate(input_ids=prompts, sampling_params=[GREEDY, GREEDY])
    _check_replays(_events(log), before, steps=1)
    for ids, o in zip(prompts, outs):
        check_greedy_against(ref_bf16, ids, o["output_ids"])


def _check_replays(events, before, steps):
    capture = next(e for e in events if e[0] == "capture")
    plans = [e for e in events[before:] if e[0] == "plan"]
    # decode steps after the prefill's token (the overlap scheduler may plan one step past the last token)
    assert len(plans) >= steps, events[before:]
    assert all(e[1:] == capture[1:] for e in plans), (capture, plans)   # same size, same buffer addresses
