"""Seed sweep (opt-in: `bash scripts/test.sh sweep`): the engine comparisons over many seeds, failure rates per check.

CI runs every suite at one fixed seed (DSV32_TEST_SEED, default 0), so a commit's verdict never changes between
runs. Whether a check's bound is honest is a question about *all* seeds: this script reruns the engine-vs-reference
checks with DSV32_TEST_SEED = start .. start+N-1 (a different checkpoint and, where tests draw them from the seed,
different prompts), one pytest run per engine and seed (so one engine start per module is shared by all its
checks), and prints, per test, how often it failed, and per recorded statistic (it_common.record_stat), the
worst value over the seeds as a fraction of its limit. Run it whenever numerics change; record its figures beside
the bounds in the tests.

  python scripts/sweep.py --seeds 20 --engines vllm,sglang --budget-min 30 --out sweep.md
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The comparisons against the reference (one or two engine starts per seed each).
SWEEP_TESTS = {
    "vllm": ["integration_tests/vllm/test_vllm_engine.py::test_short_prompts_equal_reference",
             "integration_tests/vllm/test_vllm_engine.py::test_long_prompts_equal_reference",
             "integration_tests/vllm/test_vllm_engine.py::test_bf16_engine_fp8_latent_cache_close_to_reference",
             "integration_tests/vllm/test_vllm_engine.py::test_tensor_parallel_2_equals_reference",
             "integration_tests/vllm/test_vllm_engine.py::test_mtp_draft_module_equals_reference"],
    "sglang": ["integration_tests/sglang/test_sglang_engine.py::test_input_logprobs_match_reference",
               "integration_tests/sglang/test_sglang_engine.py::test_greedy_matches_reference",
               "integration_tests/sglang/test_sglang_engine.py::test_radix_hit_equals_miss",
               "integration_tests/sglang/test_sglang_engine.py::test_50_concurrent_mixed_lengths_equal_single",
               "integration_tests/sglang/test_sglang_tp2.py::test_tp2_matches_reference"],
}


def run_one(engine: str, seed: int, tests: list, venvs: str, stats_file: str, timeout: int) -> dict:
    """-> {test id: "passed" | "failed" | "error" | "skipped"} for one pytest run at one seed."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "junit.xml")
        env = dict(os.environ, DSV32_TEST_SEED=str(seed), DSV32_STATS_FILE=stats_file, PYTHONUNBUFFERED="1")
        cmd = [os.path.join(venvs, engine, "bin", "python"), "-m", "pytest", "-p", "no:cacheprovider", "-q",
               f"--junitxml={xml}", *tests]
        try:
            subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {t: "error" for t in tests}
        if not os.path.exists(xml):
            return {t: "error" for t in tests}
        out = {}
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
            tags = {c.tag for c in case}
            out[name] = ("failed" if "failure" in tags else "error" if "error" in tags
                         else "skipped" if "skipped" in tags else "passed")
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--start", type=int, default=1, help="first seed (CI uses 0)")
    ap.add_argument("--engines", default="vllm,sglang")
    ap.add_argument("--budget-min", type=float, default=30.0, help="start no new run after this many minutes")
    ap.add_argument("--venvs", default=os.environ.get("DSV32_VENVS", os.path.join(ROOT, ".venvs")))
    ap.add_argument("--tests", default="", help="comma-separated pytest ids replacing SWEEP_TESTS (one engine)")
    ap.add_argument("--out", default=None, help="also write the report (Markdown) here")
    args = ap.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    t0 = time.time()
    outcomes = collections.defaultdict(collections.Counter)   # (engine, test) -> Counter(outcome)
    failed_seeds = collections.defaultdict(list)
    stats_file = tempfile.mktemp(suffix=".jsonl")
    done = {e: 0 for e in engines}
    for i in range(args.seeds):
        for engine in engines:
            if (time.time() - t0) / 60 > args.budget_min:
                break
            seed = args.start + i
            ts = time.time()
            tests = args.tests.split(",") if args.tests else SWEEP_TESTS[engine]
            res = run_one(engine, seed, tests, args.venvs, stats_file, timeout=1800)
            done[engine] += 1
            for test, oc in res.items():
                outcomes[(engine, test)][oc] += 1
                if oc in ("failed", "error"):
                    failed_seeds[(engine, test)].append(seed)
            bad = sorted(t for t, oc in res.items() if oc in ("failed", "error"))
            print(f"[sweep] {engine} seed {seed}: {len(res) - len(bad)}/{len(res)} passed in {time.time() - ts:.0f}s"
                  + (f"; failed: {', '.join(bad)}" if bad else ""), flush=True)

    lines = [f"# Seed sweep ({time.strftime('%Y-%m-%d')}, seeds {args.start}..{args.start + args.seeds - 1}, "
             f"runs per engine: {done}, {(time.time() - t0) / 60:.1f} min)", "",
             "| engine | test | runs | failed | rate | failing seeds |", "|---|---|---|---|---|---|"]
    for (engine, test), c in sorted(outcomes.items()):
        n = sum(c.values())
        f = c["failed"] + c["error"]
        lines.append(f"| {engine} | {test} | {n} | {f} | {f / max(n, 1):.0%} | "
                     f"{' '.join(map(str, failed_seeds[(engine, test)])) or '-'} |")
    worst = {}   # check -> {stat: (max value / limit, value, seed)}
    if os.path.exists(stats_file):
        for ln in open(stats_file):
            row = json.loads(ln)
            w = worst.setdefault(row["check"], {})
            for k, v in row["values"].items():
                lim = row["limits"].get(k)
                if lim:
                    r = v / lim
                    if k not in w or r > w[k][0]:
                        w[k] = (r, v, row["seed"])
        os.unlink(stats_file)
    lines += ["", "Worst value over the seeds of each recorded statistic, as a fraction of its limit (value, seed):",
              "", "| check | " + " | ".join(["stat"] * 3) + " |", "|---|---|---|---|"]
    for check, w in sorted(worst.items()):
        cells = [f"{k} {r:.2f} ({v:.2e}, s{s})" for k, (r, v, s) in sorted(w.items())]
        lines.append(f"| {check} | " + " | ".join(cells + [""] * (3 - len(cells))) + " |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
