"""Two SGLang "nodes" on 127.0.0.1 (no Ray), launched as SGLang documents multi-node serving:
`launch_server --nnodes 2 --node-rank N --dist-init-addr HEAD:PORT` on each node (examples/serve_sglang.py
passes them through). Layout: pp_size=2, one stage per node. Node 0 serves the OpenAI API; the greedy tokens of
/v1/completions equal the bf16 reference's."""
import os
import subprocess
import sys

import pytest
import requests

from conftest import check_greedy_against, prompt_ids
from it_common import free_port, serving, stop_group

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# opt-in (bash scripts/test.sh parallel): two full SGLang servers
pytestmark = pytest.mark.skipif(not os.environ.get("DSV32_PARALLEL_MATRIX"),
                                reason="parallel matrix: bash scripts/test.sh parallel")


def _node(ckpt, rank, port, dist_port):
    return [sys.executable, os.path.join(REPO, "examples", "serve_sglang.py"), "--model", ckpt, "--port", str(port),
            "--", "--log-level", "warning", "--pp-size", "2", "--nnodes", "2", "--node-rank", str(rank),
            "--dist-init-addr", f"127.0.0.1:{dist_port}"]


def _env(core: int) -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                SGLANG_CPU_OMP_THREADS_BIND=str(core % max(1, os.cpu_count() or 1)))


def test_two_nodes_pipeline_parallel_serve_reference_greedy(tiny_ckpt, ref_bf16, tmp_path):
    port, dist = free_port(), free_port()
    log1 = open(tmp_path / "node1.log", "w")
    node1 = subprocess.Popen(_node(tiny_ckpt, 1, free_port(), dist), stdout=log1, stderr=subprocess.STDOUT,
                             env=_env(1), start_new_session=True)
    try:
        with serving(_node(tiny_ckpt, 0, port, dist), port, tmp_path / "node0.log", "/health_generate",
                     env=_env(0), timeout=600) as url:
            model = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
            for n in (12, 90):
                ids = prompt_ids(n, seed=700 + n)
                c = requests.post(f"{url}/v1/completions", json={"model": model, "prompt": ids, "max_tokens": 8,
                                                                 "temperature": 0}, timeout=300)
                assert c.status_code == 200, c.text
                r = requests.post(f"{url}/generate", json={"input_ids": ids, "sampling_params": {
                    "max_new_tokens": 8, "temperature": 0.0}}, timeout=300).json()
                assert c.json()["choices"][0]["text"] == r["text"]
                check_greedy_against(ref_bf16, ids, r["output_ids"], info=("2 nodes", n))
    finally:
        stop_group(node1)
        log1.close()
