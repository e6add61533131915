#!/usr/bin/env bash
# Light venv for unit tests: CPU torch + Triton (interpreter) + test tools. No engine.
source "$(dirname "$0")/_venv.sh"
PINS="torch==2.13.0
triton==3.7.1
numpy<3
safetensors==0.8.0
transformers==5.19.0
jinja2
pytest==9.2.0
pytest-xdist==3.8.0
pytest-timeout==2.4.0
nvidia-cutlass==4.2.0.0"
if ensure_venv unit "$PINS"; then
  # torch first so the local CPU wheel is taken (a later unpinned torch would pull CUDA builds).
  "$VENV/bin/pip" install -q torch==2.13.0 >&2
  printf '%s\n' "$PINS" > "$VENV/requirements.txt"
  "$VENV/bin/pip" install -q -r "$VENV/requirements.txt" >&2
  finish_venv
fi
install_plugin
echo "$VENV"
