"""The gpu_check results file: JSON lines, one row per build step / check / timing, written the moment it
exists (append, flush, fsync), so a killed run keeps every row measured before the kill. Also the
renderers: the Markdown report (RESULTS.md) and the README's GPU verification-status lines.

Row fields (absent = not applicable):
  row      1-based row number (the kill test checks rows 1..k)       t        seconds since the run started
  kind     meta | phase | build | check | model | ceiling | time | cut
  phase    build | ops | model | timing (| later optional phases)
  op, backend (cuda | triton | torch), path (the code path that actually ran: sm90a | sm80 | cuda | triton-fp8 |
           triton-bytes | triton-interp | torch), shape
  status   pass | fail | skip | error | cut | info | start | done
  reason   why skipped / failed / cut;  err, tol, metric: the error vs the reference and its bound
  timing:  us, ref_us, x_ref (ref_us / us), tflops, gbps, pct_roof, anchor, method, check (pass|fail: the
           timed output against the reference), err

Render:  python benchmarks/gpu_check/results.py RESULTS.jsonl [--md benchmarks/RESULTS.md] [--readme README.md]
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Iterable, Optional

PAUSE_ENV = "DSV32_GPU_CHECK_PAUSE_AFTER_ROW"   # test hook: stop (sleep) right after writing row k
STATUS_BEGIN, STATUS_END = "<!-- gpu-check-status:begin -->", "<!-- gpu-check-status:end -->"


class Results:
    """Append-only JSONL writer; every row is on disk (fsync) before `add` returns."""

    def __init__(self, path: str, echo: bool = True):
        self.path = path
        self.t0 = time.monotonic()
        self.n = 0
        self.echo = echo
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")
        self._pause_after = int(os.environ.get(PAUSE_ENV, "0") or 0)

    def add(self, **row) -> dict:
        import signal
        self.n += 1
        row = {"row": self.n, "t": round(time.monotonic() - self.t0, 3),
               **{k: _clean(v) for k, v in row.items() if v is not None}}
        line = json.dumps(row, sort_keys=False) + "\n"
        # a phase deadline (SIGALRM) must not cut a row in half
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            self._f.write(line)
            self._f.flush()
            os.fsync(self._f.fileno())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if self.echo:
            print(format_row(row), flush=True)
        if self._pause_after and self.n == self._pause_after:
            print(f"[gpu_check] {PAUSE_ENV}={self.n}: pausing", file=sys.stderr, flush=True)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})   # no phase cut while paused
            while True:
                time.sleep(3600)
        return row

    def close(self) -> None:
        self._f.close()


def _clean(v):
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        return float(f"{v:.6g}")
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def load(path: str) -> list[dict]:
    """Rows of a results file; a torn last line (a kill mid-write) is ignored."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


# ------------------------------------------------------------------------------------------- text ----

def _num(v, fmt="{:.3g}"):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return fmt.format(v)


def format_row(r: dict) -> str:
    """One console line per row (the device reply's output tail)."""
    k = r.get("kind")
    head = f"[{r['row']:4d} {r['t']:7.1f}s] {r.get('phase', ''):7s} {r.get('status', ''):6s}"
    if k == "time":
        return (f"{head} {r.get('op')} {r.get('shape')} [{r.get('backend')}/{r.get('path')}] "
                f"{_num(r.get('us'), '{:.1f}')} us  {_num(r.get('tflops'), '{:.1f}')} TFLOPS  "
                f"{_num(r.get('gbps'), '{:.0f}')} GB/s  x_ref {_num(r.get('x_ref'), '{:.2f}')}  check {r.get('check', '-')}"
                + (f"  ({r['reason']})" if r.get("reason") else ""))
    bits = [r.get("op"), r.get("shape"), f"[{r.get('backend')}/{r.get('path')}]" if r.get("backend") else None]
    if r.get("err") is not None:
        bits.append(f"err {_num(r.get('err'))} (tol {_num(r.get('tol'))})")
    if r.get("reason"):
        bits.append(f"({r['reason'][:300]})")
    if k == "meta":
        bits = [json.dumps({x: r[x] for x in r if x not in ("row", "t", "kind")})]
    return f"{head} " + " ".join(str(b) for b in bits if b)


def _table(cols: list[str], rows: Iterable[list]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in r) + " |")
    return out


def _meta(rows):
    return next((r for r in rows if r.get("kind") == "meta"), {})


def summary(rows: list[dict]) -> dict:
    """Counts per phase/status and the code paths that ran, for the status lines."""
    out: dict = {}
    for r in rows:
        if r.get("kind") in ("check", "model", "time", "build", "graph", "context"):
            c = out.setdefault(r["phase"], {})
            st = r.get("status", "?")
            if r.get("kind") == "time" and st == "pass" and r.get("check") == "fail":
                st = "fail"
            c[st] = c.get(st, 0) + 1
            if st in ("pass", "fail") and r.get("path"):
                c.setdefault("paths", set()).add(r["path"])
    return out


def render_markdown(rows: list[dict], source: str = "") -> str:
    m = _meta(rows)
    lines = ["# gpu_check results", "",
             "Generated by `python benchmarks/gpu_check/results.py` from the JSON-lines results file"
             + (f" `{source}`" if source else "") + "; do not edit by hand.", ""]
    for key in ("date", "device", "capability", "dry_run", "versions", "git", "command", "budgets_s"):
        if key in m:
            v = m[key]
            lines.append(f"- {key}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    ends = [r for r in rows if r.get("kind") == "phase"]
    lines.append(f"- rows: {len(rows)}; phases: " + ", ".join(
        f"{r['phase']} {r['status']}" + (f" {r.get('elapsed_s')} s / {r.get('budget_s')} s" if r["status"] != "start" else "")
        for r in ends if r["status"] != "start"))
    end = next((r for r in rows if r.get("kind") == "end"), None)
    if end is None:
        lines.append("- **the run did not finish** (killed): the rows below are everything it measured")
    else:
        lines.append(f"- finished: {end.get('status')} ({end.get('reason', '')})")
    cuts = [r for r in rows if r.get("kind") == "cut"]
    for r in cuts:
        lines.append(f"- CUT: phase {r['phase']}: {r.get('reason', '')}")

    b = [r for r in rows if r.get("kind") == "build"]
    if b:
        lines += ["", "## (a) build", ""] + _table(["what", "status", "detail"],
                                                    [[r.get("op", ""), r.get("status", ""), r.get("reason", "")] for r in b])
    c = [r for r in rows if r.get("kind") == "check"]
    if c:
        lines += ["", "## (b) ops vs the PyTorch reference", ""] + _table(
            ["op", "shape", "backend", "path", "status", "err", "tol", "note"],
            [[r.get("op"), r.get("shape"), r.get("backend"), r.get("path", ""), r.get("status"), _num(r.get("err")),
              _num(r.get("tol")), r.get("reason", "")[:200]] for r in c])
    mo = [r for r in rows if r.get("kind") == "model"]
    if mo:
        lines += ["", "## (c) model on kernels vs on the references", ""] + _table(
            ["preset", "shape", "backend", "status", "min cos", "argmax agree", "note"],
            [[r.get("op"), r.get("shape"), r.get("backend"), r.get("status"), _num(r.get("err")),
              _num(r.get("agree")), r.get("reason", "")[:200]] for r in mo])
    ce = [r for r in rows if r.get("kind") == "ceiling"]
    t = [r for r in rows if r.get("kind") == "time"]
    if ce or t:
        lines += ["", "## (d) timings", ""]
        if ce:
            lines += ["Measured ceilings: " + ", ".join(
                f"{r['op']} {_num(r.get('value'), '{:.0f}')} {r.get('unit', '')}" if r.get("value") is not None
                else f"{r['op']} {r.get('status')} ({r.get('reason', '')})" for r in ce), ""]
        lines += ["Times: CUDA graph of N calls, L2 flushed before each call (flush-only graph subtracted), median "
                  "of replays; check = the timed output vs the reference; x ref = reference time / ours; "
                  "% roof = max(FLOPs/peak, bytes/copy BW) / time with the ceilings above.", ""]
        lines += _table(["op", "shape", "backend", "path", "status", "us", "TFLOPS", "GB/s", "% roof", "x ref",
                         "check (err)", "anchor", "note"],
                        [[r.get("op"), r.get("shape"), r.get("backend"), r.get("path", ""), r.get("status"),
                          _num(r.get("us"), "{:.1f}"), _num(r.get("tflops"), "{:.1f}"), _num(r.get("gbps"), "{:.0f}"),
                          _num(r.get("pct_roof"), "{:.0f}%"), _num(r.get("x_ref"), "{:.2f}x"),
                          f"{r.get('check', '-')} ({_num(r.get('err'))})", r.get("anchor", ""),
                          "; ".join(x for x in (r.get("method"), r.get("reason")) if x)[:200]] for r in t])
    gr = [r for r in rows if r.get("kind") == "graph"]
    if gr:
        lines += ["", "## (e) decode step in a CUDA graph vs eager", "",
                  "The step captured on one batch's persistent-buffer plan, replayed on another batch; eager = "
                  "that batch's own host-side plan + launches; graph = buffer refill + one replay.", ""]
        lines += _table(["step", "shape", "status", "slot overlap", "max |dout|", "bit-exact", "eager us", "graph us",
                         "x graph", "note"],
                        [[r.get("op"), r.get("shape", ""), r.get("status"), _num(r.get("overlap")), _num(r.get("err")),
                          r.get("exact", "-"), _num(r.get("us_eager"), "{:.1f}"), _num(r.get("us_graph"), "{:.1f}"),
                          _num(r.get("x_graph"), "{:.2f}x"),
                          "; ".join(x for x in (r.get("method"), r.get("reason")) if x)[:200]] for r in gr])
    cx = [r for r in rows if r.get("kind") == "context"]
    if cx:
        lines += ["", "## (f) context curve: decode step, DSA on our kernels vs dense MLA", "",
                  "Eager decode step of the whole engine-neutral model (device sync, launch overhead included); "
                  "ms = median [q1-q3]; pred = the work model's roofline ratio ours / dense (ceilings of (d)).", ""]
        lines += _table(["what", "shape", "path", "status", "ms", "ours/dense", "pred", "GMAC", "MB", "note"],
                        [[f"{r.get('op')} [{r.get('backend')}]", r.get("shape"), r.get("path", ""), r.get("status"),
                          f"{_num(r.get('ms'), '{:.3f}')} [{_num(r.get('ms_q1'), '{:.3f}')}-"
                          f"{_num(r.get('ms_q3'), '{:.3f}')}]" if r.get("ms") is not None else _num(r.get("err")),
                          _num(r.get("ratio"), "{:.2f}"), _num(r.get("pred"), "{:.2f}"),
                          _num(r["macs"] / 1e9 if r.get("macs") else None, "{:.2f}"),
                          _num(r["bytes"] / 1e6 if r.get("bytes") else None, "{:.1f}"),
                          (r.get("reason") or "")[:200]] for r in cx])
    return "\n".join(lines) + "\n"


def render_status(rows: list[dict], source: str = "") -> list[str]:
    """The README's GPU verification-status bullet lines."""
    m = _meta(rows)
    s = summary(rows)
    dev = m.get("device", "?")
    head = (f"- **{'DRY RUN on CPU (not a GPU result)' if m.get('dry_run') else 'GPU: ' + str(dev)}**, {m.get('date', '?')}, "
            f"git {m.get('git', '?')}" + (f", results `{source}`" if source else "") + ":")
    out = [head]
    names = {"build": "(a) build", "ops": "(b) ops vs reference", "model": "(c) model on kernels",
             "timing": "(d) timings", "graph": "(e) decode step graph", "context": "(f) context curve"}
    for ph, c in s.items():
        paths = ", ".join(sorted(c.pop("paths", set())))
        counts = ", ".join(f"{v} {k}" for k, v in sorted(c.items()))
        out.append(f"  - {names.get(ph, ph)}: {counts}" + (f"; paths run: {paths}" if paths else ""))
    for r in rows:
        if r.get("kind") == "build" and r.get("op") == "arch paths":
            out.append(f"  - arch paths built: {r.get('reason', '')}")
        if r.get("kind") == "cut":
            out.append(f"  - cut: {r['phase']} ({r.get('reason', '')})")
    ce = [r for r in rows if r.get("kind") == "ceiling" and r.get("value") is not None]
    if ce:
        out.append("  - measured ceilings: " + ", ".join(f"{r['op']} {r['value']:.0f} {r.get('unit', '')}" for r in ce))
    by_shape: dict = {}
    for r in rows:
        if r.get("kind") == "time" and r.get("us") is not None:
            by_shape.setdefault((r["op"], r.get("shape", ""), r.get("anchor", "")), []).append(r)
    for (op, shape, anchor), rs in by_shape.items():
        parts = []
        for r in rs:
            rate = (f", {r['tflops']:.0f} TFLOPS" if isinstance(r.get("tflops"), float) and r["tflops"] >= 1 else
                    f", {r['gbps']:.0f} GB/s" if isinstance(r.get("gbps"), float) and r["gbps"] >= 1 else "")
            parts.append(f"{r['backend']}/{r.get('path')} {r['us']:.1f} us{rate}"
                         + ("" if r.get("check", "pass") == "pass" else " (WRONG OUTPUT)"))
        out.append(f"  - {op} {shape}: " + "; ".join(parts) + (f" [anchor: {anchor}]" if anchor else ""))
    for r in rows:
        if r.get("kind") == "graph" and r.get("us_graph") is not None:
            out.append(f"  - {r['op']} {r.get('shape', '')}: eager {r['us_eager']:.1f} us, graph {r['us_graph']:.1f} us"
                       f" ({r['status']}, slot overlap {r.get('overlap', 0):.3f}, max |dout| {r.get('err', 0):.2g})")
    fails = [r for r in rows if r.get("status") in ("fail", "error") or r.get("check") == "fail"]
    for r in fails[:12]:
        out.append(f"  - FAIL {r.get('phase')}: {r.get('op')} {r.get('shape', '')} [{r.get('backend', '')}/"
                   f"{r.get('path', '')}] {r.get('reason', '')[:160]}")
    if len(fails) > 12:
        out.append(f"  - ... {len(fails) - 12} more failures in the results file")
    return out


def update_readme(readme: str, lines: list[str]) -> None:
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    a, b = text.find(STATUS_BEGIN), text.find(STATUS_END)
    if a < 0 or b < a:
        raise SystemExit(f"{readme}: markers {STATUS_BEGIN} / {STATUS_END} not found")
    text = text[:a + len(STATUS_BEGIN)] + "\n" + "\n".join(lines) + "\n" + text[b:]
    with open(readme, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Render a gpu_check results file")
    ap.add_argument("results")
    ap.add_argument("--md", help="write the Markdown report here (e.g. benchmarks/RESULTS.md)")
    ap.add_argument("--readme", help="replace the GPU status lines between the markers in this README")
    ap.add_argument("--source", help="the results file's path as named in the report (default: as given)")
    args = ap.parse_args(argv)
    rows = load(args.results)
    src = args.source or args.results
    if args.md:
        with open(args.md, "w", encoding="utf-8") as f:
            f.write(render_markdown(rows, src))
    if args.readme:
        update_readme(args.readme, render_status(rows, src))
    if not args.md and not args.readme:
        sys.stdout.write(render_markdown(rows, src))
    return 0


if __name__ == "__main__":
    sys.exit(main())
