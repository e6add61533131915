"""Ask a served DeepSeek-V3.2 (examples/serve_vllm.py or serve_sglang.py) for a completion and a chat answer.

  python examples/client.py --port 8000 [--prompt "The capital of France is"]
  python examples/client.py --port 8000 --tools      # + a tool-calling request: DSML -> `tool_calls`
With --tools the chat request carries two tools. The real V3.2 decides itself to call them; a random tiny
checkpoint never writes DSML, so on the tiny model the request also carries a regex (the engine's structured
outputs: vLLM `structured_outputs`, SGLang `regex`) that makes it write a DSML block with two calls, which the
engine's own V3.2 tool parser then turns into `tool_calls`.
"""
import argparse
import json

from openai import OpenAI


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--tools", action="store_true", help="also send a tool-calling chat request")
    p.add_argument("--no-force", action="store_true", help="with --tools: no regex (for a real checkpoint)")
    args = p.parse_args()
    client = OpenAI(base_url=f"http://{args.host}:{args.port}/v1", api_key="EMPTY")
    model = client.models.list().data[0].id
    c = client.completions.create(model=model, prompt=args.prompt, max_tokens=args.max_tokens, temperature=0)
    print(f"completion ({c.usage.completion_tokens} tokens): {c.choices[0].text!r}")
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": args.prompt}],
                                       max_tokens=args.max_tokens, temperature=0)
    print(f"chat ({r.usage.completion_tokens} tokens, {r.choices[0].finish_reason}): "
          f"{r.choices[0].message.content!r}")
    if args.tools:
        tool_call(client, model, force=not args.no_force)


def tool_call(client, model: str, force: bool) -> None:
    from deepseek_v32_plugin.testing_chat import TOOLS, USER_ASK, forced_answer_regex
    extra = {}
    if force:   # thinking off here: the engines apply a grammar only after the reasoning unless told otherwise
        regex = forced_answer_regex(reasoning=False)
        owner = client.models.list().data[0].owned_by
        extra = {"structured_outputs": {"regex": regex}} if owner == "vllm" else {"regex": regex}
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": USER_ASK}], tools=TOOLS,
                                       max_tokens=500, temperature=0, extra_body=extra)
    msg = r.choices[0].message
    print(f"tool calls ({r.choices[0].finish_reason}): content={msg.content!r}")
    for c in msg.tool_calls or []:
        print(f"  {c.function.name}({json.dumps(json.loads(c.function.arguments), ensure_ascii=False)})")


if __name__ == "__main__":
    main()
