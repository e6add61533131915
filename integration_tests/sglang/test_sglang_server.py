"""`python -m sglang.launch_server` (through examples/serve_sglang.py) serving the tiny checkpoint with the plugin:
/v1/models, /v1/completions (greedy tokens equal the bf16 reference) and /v1/chat/completions, and the
shared examples/client.py against it."""
import os
import subprocess
import sys

import pytest
import requests

from conftest import check_greedy_against, prompt_ids
from it_common import free_port, serving

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, os.path.join(REPO, "examples", "serve_sglang.py"), "--model", tiny_ckpt,
           "--port", str(port), "--", "--log-level", "warning"]
    with serving(cmd, port, tmp_path_factory.mktemp("sglang_server") / "server.log", "/health_generate",
                 env=env) as url:
        yield url, port


def test_models_endpoint(server):
    url, _ = server
    data = requests.get(f"{url}/v1/models", timeout=30).json()["data"]
    assert len(data) == 1


def test_completions_match_reference(server, ref_bf16):
    url, _ = server
    ids = prompt_ids(50, seed=5)
    model = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
    r = requests.post(f"{url}/generate", json={"input_ids": ids, "sampling_params": {
        "max_new_tokens": 8, "temperature": 0.0}}, timeout=300).json()
    check_greedy_against(ref_bf16, ids, r["output_ids"])
    c = requests.post(f"{url}/v1/completions", json={"model": model, "prompt": ids, "max_tokens": 8,
                                                     "temperature": 0}, timeout=300)
    assert c.status_code == 200, c.text
    body = c.json()
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert body["usage"]["completion_tokens"] == len(r["output_ids"])
    assert body["choices"][0]["text"] == r["text"]


def test_chat_completions(server):
    url, _ = server
    model = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
    c = requests.post(f"{url}/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "Hello, who are you?"}], "max_tokens": 8,
        "temperature": 0}, timeout=300)
    assert c.status_code == 200, c.text
    body = c.json()
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] >= 1
    assert body["choices"][0]["finish_reason"] in ("length", "stop")


def test_example_client(server):
    _, port = server
    p = subprocess.run([sys.executable, os.path.join(REPO, "examples", "client.py"), "--port", str(port),
                        "--max-tokens", "4"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "completion (" in p.stdout and "chat (" in p.stdout
