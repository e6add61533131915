"""Mutation check: do the CI suites catch real bugs? Plants one known bug at a time and runs the suite that must
catch it (with -x), at CI's fixed seed.

Each mutation edits one snippet of the package (exactly one occurrence, else the script fails: the code moved
and the table below needs updating), installs that copy into a scratch directory put first on PYTHONPATH (the
venvs and the engines' worker processes then import the mutant; the venvs themselves are untouched), and runs
the named tests. Math shared by the reference and the adapters (model/, config.py, ops references) cannot be
caught by engine-vs-reference tests: those mutations name the independent oracles of the unit suite (HF
transformers). Adapter code is caught by the engine suites. For every mutation the report gives the first
failing test and, from the checks' recorded statistics (deepseek_v32_plugin/check_stats.py), its deviation as
a multiple of the check's bound (a control run without mutation must pass: its worst fraction is printed too).

  python scripts/mutation_check.py                 # all mutations (~15-30 min on 2 cores)
  python scripts/mutation_check.py --only rope,slot --out mutation.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "deepseek_v32_plugin"
HF_TESTS = ["tests/test_reference_model.py::test_matches_hf_transformers_below_topk",
            "tests/test_reference_model.py::test_indexer_selection_matches_hf_indexer_above_topk"]
VLLM_TESTS = ["integration_tests/vllm/test_vllm_engine.py::test_short_prompts_equal_reference",
              "integration_tests/vllm/test_vllm_engine.py::test_long_prompts_equal_reference",
              "integration_tests/vllm/test_vllm_engine.py::test_bf16_engine_fp8_latent_cache_close_to_reference"]
SGLANG_TESTS = ["integration_tests/sglang/test_sglang_engine.py::test_input_logprobs_match_reference"]


@dataclass
class Mutation:
    key: str
    what: str
    file: str          # relative to deepseek_v32_plugin/
    old: str
    new: str
    venv: str          # unit | vllm | sglang
    tests: list


MUTATIONS = [
    Mutation("rope", "indexer RoPE interleaved instead of half-split (shared math)", "model/indexer.py",
             "rope.apply(k[:, :r], positions, interleaved=False)", "rope.apply(k[:, :r], positions, interleaved=True)",
             "unit", HF_TESTS),
    Mutation("topk", "top-k one larger (vLLM adapter)", "engines/vllm/model.py",
             "ix.k_cache.layer_name, cfg.index_topk, cfg.softmax_scale)",
             "ix.k_cache.layer_name, cfg.index_topk + 1, cfg.softmax_scale)", "vllm",
             VLLM_TESTS),
    Mutation("scaling", "routed_scaling_factor not applied (shared routing math)", "model/moe.py",
             "return weights * cfg.routed_scaling_factor, ids.int()", "return weights, ids.int()", "unit", HF_TESTS),
    Mutation("scaling-vllm", "routed_scaling_factor not applied (vLLM adapter's FusedMoE)", "engines/vllm/model.py",
             "routed_scaling_factor=cfg.routed_scaling_factor", "routed_scaling_factor=1.0", "vllm", VLLM_TESTS),
    Mutation("mscale", "softmax scale without the YaRN mscale^2 (shared config)", "config.py",
             "            scale *= m * m\n", "            scale *= 1.0\n", "unit", HF_TESTS),
    Mutation("slot", "cache slots one page off (SGLang adapter's block table)", "engines/sglang/backend.py",
             "block_table = (rows[:, cols] // PAGE_SIZE).to(torch.int32)",
             "block_table = (rows[:, cols] // PAGE_SIZE + 1).to(torch.int32)", "sglang", SGLANG_TESTS),
    Mutation("slot-decode", "decode/verify cache slots one page off (SGLang adapter's graph-capturable plan)",
             "engines/sglang/backend.py", '.div(PAGE_SIZE, rounding_mode="floor"), out_cache_loc',
             '.div(PAGE_SIZE, rounding_mode="floor") + 1, out_cache_loc', "unit", ["tests/test_sglang_uniform_plan.py"]),
    Mutation("bias", "e_score_correction_bias ignored (shared routing math)", "model/moe.py",
             "biased = scores + e_score_correction_bias.float()[None, :]", "biased = scores", "unit", HF_TESTS),
    Mutation("bias-vllm", "e_score_correction_bias ignored (vLLM adapter's FusedMoE)", "engines/vllm/model.py",
             "e_score_correction_bias=self.gate.e_score_correction_bias,", "e_score_correction_bias=None,",
             "vllm", VLLM_TESTS),
]


def install_mutant(m: Mutation | None, venv_python: str, dest: str) -> None:
    """Copy the package sources, apply the mutation, pip-install the copy into dest (no dist-info kept, so the
    venv's own entry points resolve to the mutant's modules through PYTHONPATH)."""
    src = tempfile.mkdtemp()
    for name in ("pyproject.toml", "setup.py", "README.md", PKG, "triton_kernels", "csrc"):
        p = os.path.join(ROOT, name)
        (shutil.copytree if os.path.isdir(p) else shutil.copy)(p, os.path.join(src, name))
    if m is not None:
        path = os.path.join(src, PKG, m.file)
        text = open(path).read()
        if text.count(m.old) != 1:
            raise SystemExit(f"mutation {m.key}: {m.old!r} occurs {text.count(m.old)} times in {m.file} "
                             "(expected once): update scripts/mutation_check.py")
        open(path, "w").write(text.replace(m.old, m.new))
    subprocess.run([venv_python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", dest, src], check=True, capture_output=True)
    for name in os.listdir(dest):
        if name.endswith(".dist-info") or name == "bin":
            shutil.rmtree(os.path.join(dest, name))
    shutil.rmtree(src)


def run_suite(venv_python: str, tests: list, site: str, timeout: int) -> tuple[dict, list, float]:
    """-> ({test: outcome}, recorded stats rows, seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        xml, stats = os.path.join(tmp, "junit.xml"), os.path.join(tmp, "stats.jsonl")
        env = dict(os.environ, PYTHONPATH=site + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   DSV32_STATS_FILE=stats, PYTHONUNBUFFERED="1")
        env.pop("DSV32_TEST_SEED", None)   # CI's seed
        t0 = time.time()
        try:
            subprocess.run([venv_python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", f"--junitxml={xml}",
                            *tests], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"(timeout)": "error"}, [], time.time() - t0
        res = {}
        if os.path.exists(xml):
            for case in ET.parse(xml).getroot().iter("testcase"):
                kids = {c.tag: c for c in case}
                oc = "failed" if "failure" in kids else "error" if "error" in kids else \
                    "skipped" if "skipped" in kids else "passed"
                msg = (kids.get("failure") if "failure" in kids else kids.get("error"))
                res[case.get("name")] = (oc, (msg.get("message") or "")[:160] if msg is not None else "")
        rows = [json.loads(ln) for ln in open(stats)] if os.path.exists(stats) else []
        return res, rows, time.time() - t0


def worst_fraction(rows: list) -> tuple[float, str]:
    best = (0.0, "-")
    for r in rows:
        for k, v in r["values"].items():
            lim = r["limits"].get(k)
            if lim and v / lim > best[0]:
                best = (v / lim, f"{r['check']} {k}={v:.3g} (bound {lim:.3g})")
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated mutation keys (default: all)")
    ap.add_argument("--no-control", action="store_true", help="skip the unmutated control runs")
    ap.add_argument("--venvs", default=os.environ.get("DSV32_VENVS", os.path.join(ROOT, ".venvs")))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.key in args.only.split(",")]
    lines = ["| mutation | planted in | suite | caught by | deviation / bound | time |", "|---|---|---|---|---|---|"]
    ok = True
    controls = [] if args.no_control else sorted({m.venv for m in chosen})
    for item in [("control", v) for v in controls] + [("mutation", m) for m in chosen]:
        kind, x = item
        venv = x if kind == "control" else x.venv
        tests = {"unit": HF_TESTS, "vllm": VLLM_TESTS, "sglang": SGLANG_TESTS}[venv] if kind == "control" else x.tests
        py = os.path.join(args.venvs, venv, "bin", "python")
        site = tempfile.mkdtemp()
        install_mutant(None if kind == "control" else x, py, site)
        res, rows, dt = run_suite(py, tests, site, timeout=1800)
        shutil.rmtree(site, ignore_errors=True)
        failed = [(t, msg) for t, (oc, msg) in res.items() if oc in ("failed", "error")]
        frac, where = worst_fraction(rows)
        if kind == "control":
            good = not failed and res
            ok &= bool(good)
            lines.append(f"| control (no mutation) | - | {venv} | {'all pass' if good else 'FAILED: ' + str(failed)} "
                         f"| worst {frac:.2f} of a bound: {where} | {dt:.0f}s |")
        else:
            caught = failed[0][0] if failed else "NOT CAUGHT"
            ok &= bool(failed)
            ratio = f"{frac:.1f}x: {where}" if frac > 1 else f"no bounded stat exceeded ({failed[0][1] if failed else ''})"
            lines.append(f"| {x.key}: {x.what} | {PKG}/{x.file} | {venv} | {caught} | {ratio} | {dt:.0f}s |")
        print(lines[-1], flush=True)
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
