# Shared helpers for the env_*.sh scripts (sourced, not run).
# Each environment is a venv under $DSV32_VENVS (default: <repo>/.venvs), made once and reused:
# a stamp file holds the hash of the pinned requirement lines, so changing a pin rebuilds it.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DSV32_VENVS="${DSV32_VENVS:-$REPO_ROOT/.venvs}"
PY="${DSV32_PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# ensure_venv NAME "PINS..." : creates/refreshes $DSV32_VENVS/NAME; echoes nothing; sets VENV
ensure_venv() {
  local name="$1" pins="$2"
  VENV="$DSV32_VENVS/$name"
  local stamp="$VENV/.dsv32-stamp" want
  want="$(printf '%s' "$pins" | sha256sum | cut -c1-16)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 1; fi
  echo "[env:$name] creating venv at $VENV" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade "pip>=24" "setuptools>=70" wheel >&2
  echo "$want" > "$VENV/.dsv32-pending"
  return 0
}

finish_venv() { mv "$VENV/.dsv32-pending" "$VENV/.dsv32-stamp"; }

# install_plugin : (re)installs this repo's package into $VENV, non-editable, so tests import
# the installed package (including deepseek_v32_plugin.triton_kernels) and not the repo tree.
install_plugin() {
  # Build from a fresh copy of the sources: setuptools reuses build/lib in the tree (renamed or deleted
  # files would survive), and concurrent installs into different venvs must not share one build dir.
  local src
  src="$(mktemp -d)"
  cp -r "$REPO_ROOT"/{pyproject.toml,setup.py,README.md,deepseek_v32_plugin,triton_kernels,csrc} "$src"/
  find "$src" -name __pycache__ -prune -exec rm -rf {} +
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation --force-reinstall "$src" >&2
  rm -rf "$src"
}
