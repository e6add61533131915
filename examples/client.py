"""Ask a served DeepSeek-V3.2 (examples/serve_vllm.py) for a completion and a chat answer.

  python examples/client.py --port 8000 [--prompt "The capital of France is"]
"""
import argparse

from openai import OpenAI


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-tokens", type=int, default=16)
    args = p.parse_args()
    client = OpenAI(base_url=f"http://{args.host}:{args.port}/v1", api_key="EMPTY")
    model = client.models.list().data[0].id
    c = client.completions.create(model=model, prompt=args.prompt, max_tokens=args.max_tokens, temperature=0)
    print(f"completion ({c.usage.completion_tokens} tokens): {c.choices[0].text!r}")
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": args.prompt}],
                                       max_tokens=args.max_tokens, temperature=0)
    print(f"chat ({r.usage.completion_tokens} tokens, {r.choices[0].finish_reason}): "
          f"{r.choices[0].message.content!r}")


if __name__ == "__main__":
    main()
