"""Serve a DeepSeek-V3.2 checkpoint with SGLang's OpenAI-compatible server, through deepseek-v32-plugin.

  python examples/serve_sglang.py                       # the embedded tiny checkpoint (generated on first use)
  python examples/serve_sglang.py --model /path/to/DeepSeek-V3.2 --port 30000 -- --tp-size 8
  python examples/serve_sglang.py --mtp                 # + speculative decoding, the MTP layer drafting 2 tokens
Arguments after `--` go to `python -m sglang.launch_server` unchanged. The plugin needs nothing else: SGLang
loads it through its `sglang.srt.plugins` entry point (DSV32_SGLANG_BUILTIN=1 uses SGLang's built-in V3.2).
It serves V3.2 the way its users do: SGLang's V3.2 chat encoding (its `deepseek-v32` Python encoder, chosen for
the architecture), thinking per request (`chat_template_kwargs={"thinking": true}`) split out by SGLang's
`deepseek-v3` reasoning parser, and DSML tool calls parsed by its `deepseekv32` detector (`--no-tools` leaves
both parsers off).
Then try: python examples/client.py --port 30000
"""
import argparse
import os
import sys

# SGLang's own V3.2 parsers: DSML tool calls -> `tool_calls`, `<think>...</think>` -> `reasoning_content`
V32_PARSER_ARGS = ["--tool-call-parser", "deepseekv32", "--reasoning-parser", "deepseek-v3"]


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint dir (default: the embedded tiny one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--mtp", action="store_true", help="EAGLE speculative decoding with the checkpoint's MTP layer "
                   "(2 draft steps, chain: the plugin's backend drafts with topk 1)")
    p.add_argument("--no-tools", action="store_true", help="no tool-call / reasoning parsers")
    args = p.parse_args(argv)
    if not args.no_tools:
        extra = [*V32_PARSER_ARGS, *extra]
    if args.mtp:
        extra = ["--speculative-algorithm", "EAGLE", "--speculative-num-steps", "2", "--speculative-eagle-topk", "1",
                 "--speculative-num-draft-tokens", "3", *extra]
    if args.model is None:
        from deepseek_v32_plugin.checkpoint import default_tiny_checkpoint
        args.model = default_tiny_checkpoint()
    import torch
    if not torch.cuda.is_available():   # SGLang's CPU engine: capped pool, no CUDA graphs
        # mem-fraction-static: SGLang's CPU start-up check fails when system-wide free memory drifts by more than
        # (1 - fraction) of it during the weight load; the pool itself is capped by max-total-tokens
        extra = ["--device", "cpu", "--mem-fraction-static", "0.6", "--max-total-tokens", "65536",
                 "--disable-cuda-graph", *extra]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", args.model, "--host", args.host,
           "--port", str(args.port), *extra]
    print("serving:", " ".join(cmd), flush=True)
    os.execv(sys.executable, cmd)


if __name__ == "__main__":
    main()
