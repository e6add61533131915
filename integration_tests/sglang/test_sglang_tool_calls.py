"""Thinking mode and DSML tool calls through SGLang's own V3.2 parsers, served by examples/serve_sglang.py (which
turns on `--tool-call-parser deepseekv32 --reasoning-parser deepseek-v3`) on the tiny checkpoint.

The random tiny model writes DSML only when forced: each tool-calling request carries a `regex` for SGLang's
grammar backend (xgrammar on CPU) allowing free reasoning words, `</think>`, a free content word and then exactly
the DSML block of two calls (deepseek_v32_plugin/testing_chat.py). With a reasoning parser SGLang applies a grammar
only after the reasoning ends (ReasonerGrammarObject), which a random model never reaches; the request's
`custom_params` carries SGLang's per-request switch for a grammar that also describes the reasoning
(REQUEST_REASONING_IN_GRAMMAR_KEY, sglang/srt/sampling/sampling_params.py; SGLang's serving layer sets it itself
for response-template grammars). One server for the whole module, KV pool capped by tokens."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from deepseek_v32_plugin import testing_chat as tc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRAMMAR_COVERS_REASONING = {"__sglang_reasoning_in_grammar": True}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("sglang_tools_server") / "server.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, "examples", "serve_sglang.py"), "--model",
                                 tiny_ckpt, "--port", str(port), "--", "--log-level", "warning",
                                 "--mem-fraction-static", "0.6", "--max-total-tokens", "8192",
                                 "--random-seed", "0"],
                                stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 420
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-5000:]}")
            try:
                if requests.get(f"{url}/health_generate", timeout=30).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise AssertionError(f"server not ready after 420 s:\n{log.read_text()[-5000:]}")
            time.sleep(2)
        model = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        yield url, model, tiny_ckpt
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def _chat(url, model, messages, stream=False, **kw):
    body = {"model": model, "messages": messages, "temperature": 0, "stream": stream, **kw}
    return requests.post(f"{url}/v1/chat/completions", json=body, timeout=300, stream=stream)


def _forced(server, stream=False):
    url, model, ckpt = server
    return _chat(url, model, [{"role": "user", "content": tc.USER_ASK}], stream=stream, tools=tc.TOOLS,
                 max_tokens=500, chat_template_kwargs={"thinking": True}, regex=tc.forced_answer_regex(),
                 custom_params=GRAMMAR_COVERS_REASONING, logit_bias=tc.think_end_bias(ckpt),
                 **({} if stream else {"return_token_ids": True}))   # SGLang: not with streaming (400)


@pytest.fixture(scope="module")
def forced(server):
    r = _forced(server)
    assert r.status_code == 200, r.text
    return r.json()


def test_tool_calls_and_reasoning(server, forced):
    """Non-streaming: SGLang's parsers split the forced answer into `reasoning_content`, `content` and two calls."""
    choice = forced["choices"][0]
    msg = choice["message"]
    tc.check_forced_answer(msg["reasoning_content"], msg["content"], tc.calls_of(msg))
    assert choice["finish_reason"] == "tool_calls", choice
    ids = [c["id"] for c in msg["tool_calls"]]
    assert len(set(ids)) == 2 and all(ids) and all(c["type"] == "function" for c in msg["tool_calls"])
    assert [c["index"] for c in msg["tool_calls"]] == [0, 1]
    out_ids = choice.get("token_ids") or forced.get("token_ids")
    if out_ids is not None:   # the model's own sampled tokens: the single `</think>` token, EOS at the end
        assert tc.tokenizer(server[2]).convert_tokens_to_ids("</think>") in out_ids and out_ids[-1] == 1


def test_tool_calls_streaming_equal_non_streaming(server, forced):
    """Streaming through SGLang's incremental DSML detector / reasoning parser: same reasoning, content, calls."""
    r = _forced(server, stream=True)
    assert r.status_code == 200, r.text
    s = tc.read_stream(r)
    msg = forced["choices"][0]["message"]
    assert s["chunks"] >= 4, s   # incremental: reasoning, content and each call in their own deltas
    tc.check_forced_answer(s["reasoning"], s["content"], tc.calls_of(s))
    assert s["reasoning"] == msg["reasoning_content"] and s["content"].strip() == msg["content"].strip(), (s, msg)
    assert s["finish_reason"] == "tool_calls"
    assert all(c["id"] for c in s["tool_calls"])


def test_thinking_off_no_reasoning(server):
    """Without `thinking` the prompt ends in `</think>` (chat mode) and nothing is split off as reasoning."""
    url, model, ckpt = server
    msgs = [{"role": "user", "content": "Hello!"}]
    on = _chat(url, model, msgs, max_tokens=4, chat_template_kwargs={"thinking": True}, return_prompt_token_ids=True)
    off = _chat(url, model, msgs, max_tokens=4, return_prompt_token_ids=True)
    assert on.status_code == 200 and off.status_code == 200, (on.text, off.text)
    tok = tc.tokenizer(ckpt)
    think, end = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    assert _prompt_ids(on.json())[-1] == think and _prompt_ids(off.json())[-1] == end
    m_on, m_off = on.json()["choices"][0]["message"], off.json()["choices"][0]["message"]
    assert m_off.get("reasoning_content") is None and m_off["content"], m_off
    assert m_on["reasoning_content"] and not m_on["content"], m_on   # 4 tokens, no `</think>`: all reasoning


def _prompt_ids(body):
    return body["choices"][0].get("prompt_token_ids") or body.get("prompt_token_ids")


def _golden_as_sglang_serves_it(ckpt):
    # SGLang tokenizes the encoded prompt with `tokenizer.encode(real_input)` (special tokens on: serving_chat.py,
    # dsv32 branch of _apply_chat_template), so a tokenizer that adds BOS (ours, like the real V3.2 one:
    # add_bos_token=true) puts a second BOS before the encoder's own. vLLM encodes with add_special_tokens=False.
    golden = tc.golden_multi_turn_ids(ckpt)
    return [golden[0]] + golden


def test_multi_turn_prompt_equals_golden(server):
    """user -> assistant (reasoning + tool call) -> tool result: SGLang's dsv32 encoding of the conversation is the
    hand-written golden prompt (documented V3.2 format) in our tokenizer, up to the doubled BOS (see above). Its
    empty system message holding the tools renders to nothing, as vLLM's."""
    url, model, ckpt = server
    r = _chat(url, model, tc.MULTI_TURN, tools=tc.MULTI_TURN_TOOLS, max_tokens=2,
              chat_template_kwargs={"thinking": True}, return_prompt_token_ids=True)
    assert r.status_code == 200, r.text
    got, want = _prompt_ids(r.json()), _golden_as_sglang_serves_it(ckpt)
    assert got is not None, r.json()
    assert got[:2] == [0, 0], got[:4]
    assert got == want, _first_diff(ckpt, got, want)


def test_system_message_with_tools(server):
    """A conversation with its own system message and tools: SGLang renders the tools into that system message after
    its content, as the documented format (vLLM puts them before it), up to the doubled BOS."""
    url, model, ckpt = server
    r = _chat(url, model, tc.SYSTEM_TURN, tools=tc.MULTI_TURN_TOOLS, max_tokens=1, return_prompt_token_ids=True)
    assert r.status_code == 200, r.text
    golden = tc.tokenizer(ckpt).encode(tc.GOLDEN_SYSTEM_PROMPT, add_special_tokens=False)
    got, want = _prompt_ids(r.json()), [golden[0]] + golden
    assert got == want, _first_diff(ckpt, got, want)


def _first_diff(ckpt, got, want):
    tok = tc.tokenizer(ckpt)
    k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return (f"first difference at token {k}: served {tok.decode(got[k:k + 30])!r} "
            f"vs golden {tok.decode(want[k:k + 30])!r}")


def test_bad_tool_inputs_then_still_serving(server):
    """SGLang's normal answers to bad tool input, and the server keeps serving."""
    url, model, ckpt = server
    user = [{"role": "user", "content": "hi"}]
    # a malformed tool schema: `parameters` not an object -> checked against the JSON-schema metaschema
    r = _chat(url, model, user, max_tokens=2,
              tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}])
    assert r.status_code == 400 and "invalid 'parameters' schema" in r.text, r.text
    # a tool without a name
    r = _chat(url, model, user, max_tokens=2, tools=[{"type": "function", "function": {"parameters": {}}}])
    assert r.status_code == 400 and "name" in r.text, r.text
    # a parameters schema that is no valid JSON schema: SGLang validates it (vLLM does not)
    bad_type = {"type": "object", "properties": {"x": {"type": "nonsense"}}}
    r = _chat(url, model, user, max_tokens=2, tools=[{"type": "function", "function": {"name": "f",
                                                                                    "parameters": bad_type}}])
    assert r.status_code == 400 and "invalid 'parameters' schema" in r.text, r.text
    # a tool result with no call before it: V3.2's encoder rejects the conversation
    r = _chat(url, model, user + [{"role": "tool", "tool_call_id": "c9", "content": "sunny"}], max_tokens=2,
              tools=tc.MULTI_TURN_TOOLS)
    assert r.status_code == 400 and "Invalid messages at" in r.text, r.text
    # a tool message without its call id: accepted, the V3.2 encoding pairs results with calls by position
    no_id = [dict(m) for m in tc.MULTI_TURN]
    no_id[2].pop("tool_call_id")
    r = _chat(url, model, no_id, max_tokens=2, tools=tc.MULTI_TURN_TOOLS, chat_template_kwargs={"thinking": True},
              return_prompt_token_ids=True)
    assert r.status_code == 200, r.text
    assert _prompt_ids(r.json()) == _golden_as_sglang_serves_it(ckpt)
    # the model calls a function that is not among the tools: SGLang's detector drops the call (vLLM passes it on)
    rogue = [("launch_rocket", {"target": "Moon"})]
    r = _chat(url, model, user, max_tokens=200, tools=tc.MULTI_TURN_TOOLS,
              regex=tc.regex_escape(tc.dsml_block(rogue)))
    assert r.status_code == 200, r.text
    msg = r.json()["choices"][0]["message"]
    assert not msg.get("tool_calls") and not msg.get("content"), msg
    # still serving
    r = _chat(url, model, user, max_tokens=2)
    assert r.status_code == 200 and requests.get(f"{url}/health", timeout=10).status_code == 200


def test_client_example_tools(server):
    """examples/client.py --tools (the README's tool-calling request) against the example server."""
    url, _, _ = server
    p = subprocess.run([sys.executable, os.path.join(REPO, "examples", "client.py"), "--port", url.rsplit(":", 1)[1],
                        "--max-tokens", "2", "--tools"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "tool calls (tool_calls)" in p.stdout, p.stdout
    for name, args in tc.FORCED_CALLS:
        assert f"  {name}({json.dumps(args)})" in p.stdout, p.stdout
