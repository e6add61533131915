"""Shared inputs and expectations for the chat / tool-calling server tests of both engines
(integration_tests/{vllm,sglang}/test_*tool_calls.py): tools, a forced DSML answer, a multi-turn conversation with
its golden prompt string, and an SSE stream reader.

A random tiny model never writes DSML by itself, so the tests force it with the engine's own structured-output
decoding: `forced_answer_regex()` allows free reasoning words, `</think>`, one free content word and then exactly
the DSML block of FORCED_CALLS. The tokens are still sampled from the model's logits inside that language (the
tokenization, the reasoning and content words are the model's choice) and the engines' real parsers read them.

The golden prompt below is written by hand from the documented V3.2 chat format (DeepSeek's `encoding_dsv32.py`
description: BOS, the tools system prompt, `<｜User｜>...<｜Assistant｜>`, `<think>` after the last user turn in
thinking mode, `reasoning</think>`, the DSML block, `<｜end▁of▁sentence｜>`, `<function_results>`), not produced
by any engine's vendored encoder, so an engine whose encoding drifts from the format fails against it.
"""
from __future__ import annotations

import json
import os
import re

D = "｜DSML｜"
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"

WEATHER = {"name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                          "required": ["city"]}}
BOOKING = {"name": "book_table", "description": "Book a restaurant table",
           "parameters": {"type": "object", "properties": {"place": {"type": "string"}, "guests": {"type": "object"}},
                          "required": ["place", "guests"]}}
TOOLS = [{"type": "function", "function": WEATHER}, {"type": "function", "function": BOOKING}]

# Two calls in one turn: string parameters (string="true") and JSON-typed ones (an integer, an object with a list).
FORCED_CALLS = [("get_weather", {"city": "Paris", "days": 3}),
                ("book_table", {"place": "Chez Nous", "guests": {"adults": 2, "kids": [7, 9]}})]
USER_ASK = "What is the weather in Paris? Then book a table at Chez Nous for two adults and kids of 7 and 9."


def dsml_param(name: str, value) -> str:
    if isinstance(value, str):
        return f'<{D}parameter name="{name}" string="true">{value}</{D}parameter>'
    return f'<{D}parameter name="{name}" string="false">{json.dumps(value)}</{D}parameter>'


def dsml_block(calls) -> str:
    """The DSML function_calls block (as V3.2 writes it) for [(name, {param: value})]."""
    invokes = "\n".join(f'<{D}invoke name="{name}">\n' + "\n".join(dsml_param(k, v) for k, v in args.items())
                        + f"\n</{D}invoke>" for name, args in calls)
    return f"<{D}function_calls>\n{invokes}\n</{D}function_calls>"


def regex_escape(s: str) -> str:
    """Escape for the engines' regex grammars (xgrammar / outlines): only ASCII metacharacters."""
    return "".join("\\" + c if c in ".^$*+?()[]{}|\\/" else c for c in s)


REASONING_RE = r"[a-z]{1,8}( [a-z]{1,8}){1,3}"
CONTENT_RE = r"[A-Z][a-z]{1,8}"


def forced_answer_regex(calls=FORCED_CALLS, reasoning: bool = True) -> str:
    """[reasoning words]</think>[one content word]\\n\\n<DSML block>: the whole thinking-mode answer.

    A regex constrains text, not its tokenization: the model may also spell `</think>` in byte tokens, which the
    real model never does and which vLLM's streaming reasoning parser (token-id based) does not take for the end
    of thinking. Send `think_end_bias(model)` as `logit_bias` with it: the single `</think>` token then wins as
    soon as the grammar allows it (after the first two reasoning words)."""
    head = REASONING_RE + regex_escape("</think>") if reasoning else ""
    return head + CONTENT_RE + regex_escape("\n\n" + dsml_block(calls))


def tokenizer(model_dir: str):
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))


def think_end_bias(model_dir: str) -> dict:
    return {str(tokenizer(model_dir).convert_tokens_to_ids("</think>")): 100}


# ---- multi-turn: user -> assistant (reasoning + tool call) -> tool result -> (assistant, generated) ----
PAST_REASONING = "The user wants the weather, so I call the tool."
MULTI_TURN = [
    {"role": "user", "content": "What is the weather in Paris?"},
    # both keys: vLLM reads `reasoning` (it maps a lone `reasoning_content` onto it), SGLang `reasoning_content`
    {"role": "assistant", "content": "", "reasoning": PAST_REASONING, "reasoning_content": PAST_REASONING,
     "tool_calls": [{"id": "call_0", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'}}]},
    {"role": "tool", "tool_call_id": "call_0", "content": "sunny, 21 C"},
]
MULTI_TURN_TOOLS = [{"type": "function", "function": WEATHER}]

# Written by hand from the documented format; the tool schema line is the client's function object as JSON.
GOLDEN_TOOLS_SYSTEM = (
    "## Tools\n"
    "You have access to a set of tools you can use to answer the user's question.\n"
    f'You can invoke functions by writing a "<{D}function_calls>" block like the following as part of your reply '
    "to the user:\n"
    f"<{D}function_calls>\n"
    f'<{D}invoke name="$FUNCTION_NAME">\n'
    f'<{D}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{D}parameter>\n'
    "...\n"
    f"</{D}invoke>\n"
    f'<{D}invoke name="$FUNCTION_NAME2">\n'
    "...\n"
    f"</{D}invoke>\n"
    f"</{D}function_calls>\n"
    "String and scalar parameters should be specified as is without any escaping or quotes, while lists and "
    'objects should use JSON format. The "string" attribute should be set to "true" for string type parameters '
    'and "false" for other types (numbers, booleans, arrays, objects).\n'
    "If the thinking_mode is enabled, then after function results you should strongly consider outputting a "
    "thinking block. Here is an example:\n"
    f"<{D}function_calls>\n"
    "...\n"
    f"</{D}function_calls>\n"
    "<function_results>\n"
    "...\n"
    "</function_results>\n"
    "<think>...thinking about results</think>\n"
    "Here are the functions available in JSONSchema format:\n"
    "<functions>\n"
    '{"name": "get_weather", "description": "Current weather of a city", "parameters": {"type": "object", '
    '"properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}\n'
    "</functions>\n"
)
GOLDEN_MULTI_TURN_PROMPT = (
    BOS
    + "\n\n" + GOLDEN_TOOLS_SYSTEM          # the (empty) system message hosting the tools
    + "<｜User｜>What is the weather in Paris?<｜Assistant｜><think>"   # last user turn, thinking: opens <think>
    + "The user wants the weather, so I call the tool.</think>"      # kept: the reasoning of this turn's call
    + "\n\n"
    + f"<{D}function_calls>\n"
    + f'<{D}invoke name="get_weather">\n'
    + f'<{D}parameter name="city" string="true">Paris</{D}parameter>\n'
    + f'<{D}parameter name="days" string="false">3</{D}parameter>\n'
    + f"</{D}invoke>\n"
    + f"</{D}function_calls>"
    + EOS
    + "\n\n<function_results>\n<result>sunny, 21 C</result>\n</function_results>"
    + "\n\n<think>"                          # after the results, thinking mode: the model thinks again
)


# A conversation with its own system message, tools and thinking off: the documented format renders the tools
# inside that system message, after its content.
SYSTEM_TURN = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
GOLDEN_SYSTEM_PROMPT = BOS + "Be brief." + "\n\n" + GOLDEN_TOOLS_SYSTEM + "<｜User｜>hi<｜Assistant｜></think>"


def golden_multi_turn_ids(model_dir: str) -> list:
    """The golden prompt tokenized with the checkpoint's own tokenizer (no extra special tokens)."""
    return tokenizer(model_dir).encode(GOLDEN_MULTI_TURN_PROMPT, add_special_tokens=False)


# ---- reading responses ----
def reasoning_of(msg: dict):
    """vLLM >= 0.30 names the field `reasoning`, SGLang `reasoning_content`."""
    return msg.get("reasoning_content") if msg.get("reasoning_content") is not None else msg.get("reasoning")


def calls_of(msg: dict) -> list:
    """[(name, parsed arguments)] of a message's tool_calls."""
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg.get("tool_calls") or []]


def read_stream(resp) -> dict:
    """Assemble an SSE chat-completions stream into {reasoning, content, tool_calls (OpenAI form), finish_reason,
    chunks}: tool-call deltas are joined by index (id and name once, arguments concatenated)."""
    out = {"reasoning": "", "content": "", "calls": {}, "finish_reason": None, "chunks": 0}
    for line in resp.iter_lines(decode_unicode=True):
        if not line or not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk or chunk.get("object") == "error":
            raise AssertionError(f"stream error: {chunk}")
        for ch in chunk.get("choices", []):
            out["chunks"] += 1
            delta = ch.get("delta") or {}
            out["reasoning"] += reasoning_of(delta) or ""
            out["content"] += delta.get("content") or ""
            for tc in delta.get("tool_calls") or []:
                slot = out["calls"].setdefault(tc.get("index", 0), {"id": None, "name": "", "arguments": ""})
                slot["id"] = slot["id"] or tc.get("id")
                fn = tc.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            if ch.get("finish_reason"):
                out["finish_reason"] = ch["finish_reason"]
    out["tool_calls"] = [{"id": c["id"], "type": "function", "function": {"name": c["name"],
                                                                         "arguments": c["arguments"]}}
                         for _, c in sorted(out.pop("calls").items())]
    return out


def check_forced_answer(reasoning, content, msg_calls) -> None:
    """What both engines' parsers must make of the forced answer: the reasoning words alone in the reasoning, the
    content word alone in the content (no `</think>`, no DSML left in either), both calls with their arguments."""
    assert reasoning is not None and re.fullmatch(REASONING_RE, reasoning.strip()), repr(reasoning)
    assert content is not None and re.fullmatch(CONTENT_RE, content.strip()), repr(content)
    assert msg_calls == [(n, a) for n, a in FORCED_CALLS], msg_calls
