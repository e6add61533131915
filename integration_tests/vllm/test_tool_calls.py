"""Thinking mode and DSML tool calls through vLLM's own V3.2 parsers, served by examples/serve_vllm.py (which turns on
`--enable-auto-tool-choice --tool-call-parser deepseek_v32 --reasoning-parser deepseek_v3`) on the tiny checkpoint.

The random tiny model writes DSML only when forced: each tool-calling request carries a regex for vLLM's
structured-output backend (xgrammar on CPU) allowing free reasoning words, `</think>`, a free content word and then
exactly the DSML block of two calls (deepseek_v32_plugin/testing_chat.py). The server runs with
`--structured-outputs-config {"enable_in_reasoning": true}` so the grammar also covers the reasoning (by default
vLLM applies it only after `</think>`, which a random model never writes). One server for the whole module."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from deepseek_v32_plugin import testing_chat as tc

from vllm_it import engine_env

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    port = _free_port()
    log = open(tmp_path_factory.mktemp("server_tools") / "server.log", "w+")
    env = engine_env(1)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")   # the real server layout: API server + engine-core process
    cmd = [sys.executable, os.path.join(REPO, "examples", "serve_vllm.py"), "--model", tiny_ckpt, "--port", str(port),
           "--max-model-len", "2048", "--", "--dtype", "float32", "--max-num-seqs", "8", "--seed", "0",
           "--structured-outputs-config", json.dumps({"enable_in_reasoning": True})]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 400
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"server exited rc={proc.returncode}:\n{log.read()[-6000:]}")
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                log.seek(0)
                raise AssertionError(f"server not ready after 400 s:\n{log.read()[-6000:]}")
            time.sleep(2)
        yield url, tiny_ckpt, log
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _chat(url, model, messages, stream=False, **kw):
    body = {"model": model, "messages": messages, "temperature": 0, "stream": stream, **kw}
    return requests.post(url + "/v1/chat/completions", json=body, timeout=300, stream=stream)


def _forced(url, model, stream=False):
    return _chat(url, model, [{"role": "user", "content": tc.USER_ASK}], stream=stream, tools=tc.TOOLS,
                 max_tokens=500, chat_template_kwargs={"thinking": True},
                 structured_outputs={"regex": tc.forced_answer_regex()}, logit_bias=tc.think_end_bias(model),
                 return_token_ids=True)


@pytest.fixture(scope="module")
def forced(server):
    url, model, _ = server
    r = _forced(url, model)
    assert r.status_code == 200, r.text
    return r.json()


def test_tool_calls_and_reasoning(server, forced):
    """Non-streaming: vLLM's parsers split the forced answer into `reasoning`, `content` and two `tool_calls`."""
    _, model, _ = server
    choice = forced["choices"][0]
    msg = choice["message"]
    # vLLM 0.32 returns the reasoning as `reasoning` (it no longer sends `reasoning_content`)
    assert "reasoning" in msg and msg.get("reasoning_content") is None, msg
    tc.check_forced_answer(msg["reasoning"], msg["content"], tc.calls_of(msg))
    assert choice["finish_reason"] == "tool_calls", choice
    ids = [c["id"] for c in msg["tool_calls"]]
    assert len(set(ids)) == 2 and all(ids) and all(c["type"] == "function" for c in msg["tool_calls"])
    # the DSML came out of the model's own sampled tokens: they decode to the whole forced answer
    assert choice["token_ids"][-1] == 1, "the grammar ends the answer with the model's EOS"
    assert tc.tokenizer(model).convert_tokens_to_ids("</think>") in choice["token_ids"]


def test_tool_calls_streaming_equal_non_streaming(server, forced):
    """Streaming through vLLM's incremental DSML / reasoning parsers gives the same reasoning, content and calls."""
    url, model, _ = server
    r = _forced(url, model, stream=True)
    assert r.status_code == 200, r.text
    s = tc.read_stream(r)
    msg = forced["choices"][0]["message"]
    assert s["chunks"] > 10, s   # really incremental
    tc.check_forced_answer(s["reasoning"], s["content"], tc.calls_of(s))
    assert s["reasoning"] == msg["reasoning"] and s["content"].strip() == msg["content"].strip(), (s, msg)
    assert s["finish_reason"] == "tool_calls"
    assert all(c["id"] for c in s["tool_calls"])


def test_thinking_off_no_reasoning(server):
    """Without `thinking` the prompt ends in `</think>` (chat mode) and nothing is split off as reasoning."""
    url, model, _ = server
    msgs = [{"role": "user", "content": "Hello!"}]
    on = _chat(url, model, msgs, max_tokens=4, chat_template_kwargs={"thinking": True}, return_token_ids=True)
    off = _chat(url, model, msgs, max_tokens=4, return_token_ids=True)
    assert on.status_code == 200 and off.status_code == 200, (on.text, off.text)
    tok = tc.tokenizer(model)
    think, end = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    assert on.json()["prompt_token_ids"][-1] == think and off.json()["prompt_token_ids"][-1] == end
    m_on, m_off = on.json()["choices"][0]["message"], off.json()["choices"][0]["message"]
    assert m_off.get("reasoning") is None and m_off["content"], m_off
    assert m_on["reasoning"] and not m_on["content"], m_on   # 4 tokens, no `</think>`: all of it is reasoning


def test_multi_turn_prompt_equals_golden(server):
    """user -> assistant (reasoning + tool call) -> tool result: vLLM's `deepseek_v32` encoding of the conversation
    is token for token the hand-written golden prompt (documented V3.2 format) in our tokenizer."""
    url, model, _ = server
    r = _chat(url, model, tc.MULTI_TURN, tools=tc.MULTI_TURN_TOOLS, max_tokens=2,
              chat_template_kwargs={"thinking": True}, return_token_ids=True)
    assert r.status_code == 200, r.text
    got = r.json()["prompt_token_ids"]
    want = tc.golden_multi_turn_ids(model)
    assert got == want, _first_diff(model, got, want)


def test_system_message_with_tools(server):
    """A conversation with its own system message and tools. ENGINE DIFFERENCE: vLLM inserts a second, empty system
    message for the tools before the conversation (vllm/tokenizers/deepseek_v32.py, apply_chat_template:
    `messages.insert(0, {"role": "system"})`), so the tools block comes before the system content instead of after
    it as in the documented format (and in SGLang, which puts the tools into the existing system message)."""
    url, model, _ = server
    r = _chat(url, model, tc.SYSTEM_TURN, tools=tc.MULTI_TURN_TOOLS, max_tokens=1, return_token_ids=True)
    assert r.status_code == 200, r.text
    got = r.json()["prompt_token_ids"]
    tok = tc.tokenizer(model)
    assert got != tok.encode(tc.GOLDEN_SYSTEM_PROMPT, add_special_tokens=False)
    vllm_order = tc.BOS + "\n\n" + tc.GOLDEN_TOOLS_SYSTEM + "Be brief.<｜User｜>hi<｜Assistant｜></think>"
    want = tok.encode(vllm_order, add_special_tokens=False)
    assert got == want, _first_diff(model, got, want)


def _first_diff(model, got, want):
    tok = tc.tokenizer(model)
    k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return (f"first difference at token {k}: served {tok.decode(got[k:k + 30])!r} "
            f"vs golden {tok.decode(want[k:k + 30])!r}")


def test_bad_tool_inputs_then_still_serving(server):
    """vLLM's normal answers to bad tool input, and the server keeps serving."""
    url, model, log = server
    user = [{"role": "user", "content": "hi"}]
    # a malformed tool schema: `parameters` not an object -> request validation error
    r = _chat(url, model, user, max_tokens=2,
              tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}])
    assert r.status_code == 400 and "parameters" in r.text, r.text
    # a tool without a name
    r = _chat(url, model, user, max_tokens=2, tools=[{"type": "function", "function": {"parameters": {}}}])
    assert r.status_code == 400 and "name" in r.text, r.text
    # a parameters schema that is no valid JSON schema: vLLM does not validate it (SGLang answers 400)
    bad_type = {"type": "object", "properties": {"x": {"type": "nonsense"}}}
    r = _chat(url, model, user, max_tokens=2, tools=[{"type": "function", "function": {"name": "f",
                                                                                    "parameters": bad_type}}])
    assert r.status_code == 200, r.text
    # a tool result with no call before it: V3.2's encoder rejects the conversation
    r = _chat(url, model, user + [{"role": "tool", "tool_call_id": "c9", "content": "sunny"}], max_tokens=2,
              tools=tc.MULTI_TURN_TOOLS)
    assert r.status_code == 400 and "Invalid messages at 2" in r.text, r.text
    # a tool message without its call id: accepted, the V3.2 encoding pairs results with calls by position
    no_id = [dict(m) for m in tc.MULTI_TURN]
    no_id[2].pop("tool_call_id")
    r = _chat(url, model, no_id, max_tokens=2, tools=tc.MULTI_TURN_TOOLS, chat_template_kwargs={"thinking": True},
              return_token_ids=True)
    assert r.status_code == 200, r.text
    assert r.json()["prompt_token_ids"] == tc.golden_multi_turn_ids(model)
    # the model calls a function that is not among the tools
    rogue = [("launch_rocket", {"target": "Moon"})]
    r = _chat(url, model, user, max_tokens=200, tools=tc.MULTI_TURN_TOOLS,
              structured_outputs={"regex": tc.regex_escape(tc.dsml_block(rogue))})
    assert r.status_code == 200, r.text
    msg = r.json()["choices"][0]["message"]
    # vLLM's deepseek_v32 parser passes it on unchecked (SGLang's detector drops it)
    assert tc.calls_of(msg) == rogue and r.json()["choices"][0]["finish_reason"] == "tool_calls", msg
    # still serving
    r = _chat(url, model, user, max_tokens=2)
    assert r.status_code == 200 and requests.get(url + "/health", timeout=10).status_code == 200


def test_client_example_tools(server):
    """examples/client.py --tools (the README's tool-calling request) against the example server."""
    url, _, _ = server
    p = subprocess.run([sys.executable, os.path.join(REPO, "examples", "client.py"), "--port", url.rsplit(":", 1)[1],
                        "--max-tokens", "2", "--tools"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "tool calls (tool_calls)" in p.stdout, p.stdout
    for name, args in tc.FORCED_CALLS:
        assert f"  {name}({json.dumps(args)})" in p.stdout, p.stdout
