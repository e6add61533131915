"""context_curve.jsonl -> CONTEXT_CURVE.md (tables, the work model's prediction beside each measurement) and
context_curve.png (matplotlib; skipped with a note when it is not installed).

    python benchmarks/context_curve/report.py benchmarks/context_curve.jsonl [--out benchmarks]

Work model (benchmarks/work_model.py decode_work / prefill_work): MACs and bytes of ours and dense per step, and
a roofline time on this machine's ceilings measured at the start of the run (bf16 GEMM FLOP/s, copy GB/s).
`pred` = the roofline ratio ours / dense; `x roof` = measured / roofline time (how far a path is from what
its work costs here). A cell skipped for the time budget is extrapolated: roofline time at that context x the
`x roof` of the same path at its largest measured context, shown as `~value*`.
"""
from __future__ import annotations

import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))          # benchmarks/ for work_model
import work_model  # noqa: E402


def load(path: str) -> list:
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def _med(xs):
    return statistics.median(xs) if xs else None


def _fmt(v, nd=1):
    if v is None:
        return "-"
    return f"{v:.{nd}f}" if abs(v) < 1000 else f"{v:.0f}"


def _spread(xs, nd=1):
    """'median [min-max] (n)'"""
    if not xs:
        return "-"
    return f"{_fmt(_med(xs), nd)} [{_fmt(min(xs), nd)}-{_fmt(max(xs), nd)}] ({len(xs)})"


class Curve:
    def __init__(self, rows: list):
        from deepseek_v32_plugin.config import V32Config
        self.meta = next((r for r in rows if r["kind"] == "meta"), {})
        self.end = next((r for r in rows if r["kind"] == "end"), {})
        self.rows = rows
        ce = self.meta.get("ceilings") or {"flops": 1e11, "bandwidth": 1e10}
        self.flops, self.bw = ce["flops"], ce["bandwidth"]
        self.cfgs = {r["model"]: V32Config.from_dict(r["config"]) for r in rows if r["kind"] == "checkpoint"}
        self.ckpt = {r["model"]: r for r in rows if r["kind"] == "checkpoint"}

    def roof_ms(self, model, ctx, variant, phase="decode"):
        f = work_model.decode_work if phase == "decode" else work_model.prefill_work
        return 1e3 * f(self.cfgs[model], ctx, variant).seconds(self.flops, self.bw)

    def work(self, model, ctx, variant, phase="decode"):
        f = work_model.decode_work if phase == "decode" else work_model.prefill_work
        return f(self.cfgs[model], ctx, variant)

    def decode_cells(self, model):
        """{(ctx, variant): list of ms} of the engine-neutral decode phase; skipped cells map to None."""
        out = {}
        for r in self.rows:
            if r["kind"] == "decode" and r["model"] == model:
                out[(r["context"], r["variant"])] = None if r.get("skipped") else r["ms"]
        return out

    def engine_cells(self, model, engine):
        """{(ctx, variant): {"ttft": [...], "decode": [per-rep median ms]}}"""
        out = {}
        for r in self.rows:
            if r["kind"] == "engine" and r["model"] == model and r["engine"] == engine and not r.get("skipped"):
                c = out.setdefault((r["context"], r["variant"]), {"ttft": [], "decode": []})
                c["ttft"].append(r["ttft_s"])
                c["decode"].append(_med(r["decode_ms"]))
        return out

    def runs(self, model, engine):
        return {r["variant"]: r for r in self.rows if r["kind"] == "engine_run" and r["model"] == model
                and r["engine"] == engine}

    def calib(self, cells, model, variant, phase, ctx_limit=None):
        """measured / roofline at the largest measured context of a variant (for extrapolation)."""
        best = None
        for (ctx, v), ms in sorted(cells.items()):
            if v == variant and ms and (ctx_limit is None or ctx <= ctx_limit):
                best = _med(ms) / self.roof_ms(model, ctx, variant, phase)
        return best


def _model_desc(c: Curve, model: str) -> str:
    cfg, ck = c.cfgs[model], c.ckpt[model]
    moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    return (f"`{model}`: {cfg.num_hidden_layers} layers ({cfg.num_hidden_layers - moe} dense MLP, {moe} MoE of "
            f"{cfg.n_routed_experts} experts), hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, q_lora "
            f"{cfg.q_lora_rank}, kv_lora {cfg.kv_lora_rank}, indexer {cfg.index_n_heads} x {cfg.index_head_dim}, "
            f"index_topk {cfg.index_topk}, vocab {cfg.vocab_size}, no MTP: {ck['params'] / 1e6:.1f} M parameters, "
            f"{ck['bytes']['ours'] / 1e6:.0f} MB as FP8 (V3.2), {ck['bytes']['dense'] / 1e6:.0f} MB as the bf16 "
            f"dense copy")


def markdown(c: Curve) -> str:
    m = c.meta
    eng_v = ", ".join(f"{k} {v}" for k, v in (m.get("engines") or {}).items())
    lines = ["# Context-length cost curve: DSA (this plugin) vs the engines' dense MLA, same weights", "",
             f"Written by `python benchmarks/context_curve` ({m.get('date', '?')}, git {m.get('git', '?')}) on "
             f"{m.get('machine', '?')}, {m.get('cores', '?')} cores, {m.get('mem_gb', '?')} GiB; torch "
             f"{m.get('torch', '?')}{', ' + eng_v if eng_v else ''}. Load average (1/5/15 min) at the start "
             f"{m.get('load_start', '?')}, at the end {c.end.get('load_end', '?')}: a shared machine, so every "
             f"time here is an upper bound. Run took {c.end.get('elapsed_s', '?')} s "
             f"(budget {m.get('args', {}).get('budget_s', '?')} s).", "",
             f"Machine ceilings measured at the start (used by the work model's roofline): bf16 GEMM "
             f"{c.flops / 1e9:.0f} GFLOP/s, copy {c.bw / 1e9:.1f} GB/s.", "",
             "Work model: `benchmarks/work_model.py` (`decode_work`, `prefill_work`): MACs and bytes of the whole "
             "model per step, ours (DSA: rows attend over min(context, index_topk) keys, indexer scoring when the "
             "context exceeds index_topk) and dense (every key; non-absorbed prefill as the engines run it). "
             "`pred` = roofline time ratio ours / dense; `x roof` = measured / roofline time. `~v*` = not "
             "measured (time budget): the work model's roofline at that context x the `x roof` of the same path "
             "at its largest measured context (engine prefill: the same with prefill times) -- an extrapolation, "
             "not a measurement. Spreads: median [min-max] (repetitions). An engine run cut by its time limit "
             "keeps the repetitions it finished (n in parentheses).", ""]
    for model in c.cfgs:
        lines += [f"## {model}", "", _model_desc(c, model) + ".", ""]
        lines += _decode_table(c, model)
        for engine in ("vllm", "sglang"):
            lines += _engine_table(c, model, engine)
        chk = [r for r in c.rows if r["kind"] == "decode_check" and r["model"] == model]
        for r in chk:
            lines += [f"Check: {r['what']}: {r['cos']:.5f} (context {r['context']}).", ""]
    return "\n".join(lines) + "\n"


def _decode_table(c: Curve, model: str) -> list:
    cells = c.decode_cells(model)
    if not cells:
        return []
    out = ["### Decode, engine-neutral (caches filled directly, one step of the whole model)", "",
           "The DSA step the adapters run (model/dsa.py on our ops) vs dense absorbed MLA over the same cache.", "",
           "| context | ours ms/token | dense ms/token | ours/dense | pred | MMAC ours / dense | MB ours / dense "
           "| roofline ms ours / dense | x roof ours / dense |", "|---|---|---|---|---|---|---|---|---|"]
    cal = {v: c.calib(cells, model, v, "decode") for v in ("ours", "dense")}
    for ctx in sorted({k[0] for k in cells}):
        val, txt = {}, {}
        for v in ("ours", "dense"):
            ms = cells.get((ctx, v))
            if ms:
                val[v], txt[v] = _med(ms), _spread(ms)
            elif cal[v]:
                val[v] = cal[v] * c.roof_ms(model, ctx, v)
                txt[v] = f"~{_fmt(val[v])}*"
            else:
                val[v], txt[v] = None, "-"
        wo, wd = c.work(model, ctx, "ours"), c.work(model, ctx, "dense")
        ro, rd = c.roof_ms(model, ctx, "ours"), c.roof_ms(model, ctx, "dense")
        ratio = val["ours"] / val["dense"] if val["ours"] and val["dense"] else None
        xr = [(_fmt(_med(cells[(ctx, v)]) / r, 2) if cells.get((ctx, v)) else "-") for v, r in (("ours", ro),
                                                                                              ("dense", rd))]
        out.append(f"| {ctx} | {txt['ours']} | {txt['dense']} | {_fmt(ratio, 2)} | {ro / rd:.2f} | "
                   f"{wo.macs / 1e6:.0f} / {wd.macs / 1e6:.0f} | {wo.bytes / 1e6:.1f} / {wd.bytes / 1e6:.1f} | "
                   f"{_fmt(ro, 2)} / {_fmt(rd, 2)} | {xr[0]} / {xr[1]} |")
    return out + [""]


def _engine_table(c: Curve, model: str, engine: str) -> list:
    cells, runs = c.engine_cells(model, engine), c.runs(model, engine)
    if not runs:
        return []
    out = [f"### {engine}: single requests, prefill and decode", ""]
    for v, r in sorted(runs.items()):
        label = "ours (plugin)" if v == "ours" else "dense (engine's DeepseekV3, plugins off)"
        status = "ok" if r["rc"] == 0 else f"exit {r['rc']}" + (f", killed: {r['killed']}" if r["killed"] else "")
        out.append(f"- {label}: peak RSS of the engine process tree {r['peak_rss'] / 2 ** 30:.2f} GiB; {status}")
        if r.get("stderr_tail") and r["rc"] != 0:
            tail = r["stderr_tail"].strip().splitlines()[-1:] or [""]
            out.append(f"  (last stderr line: `{tail[0][:200]}`)")
    skipped = sorted({(r["context"], r["variant"]) for r in c.rows if r["kind"] == "engine" and r.get("skipped")
                      and r["model"] == model and r["engine"] == engine})
    if skipped:
        out.append("- not measured (time budget): " + ", ".join(f"{v} {ctx}" for ctx, v in skipped))
    out += ["", "| prompt | prefill tok/s ours | dense | time ours/dense | pred | decode ms/token ours | dense | "
            "ours/dense | pred |", "|---|---|---|---|---|---|---|---|---|"]
    # prefill seconds / roofline at the largest prompt measured, per variant: extrapolates the skipped prompts
    cal = {}
    for (ctx, v), cc in sorted(cells.items()):
        cal[v] = _med(cc["ttft"]) * 1e3 / c.roof_ms(model, ctx, v, "prefill")
    for ctx in sorted({k[0] for k in cells} | {k[0] for k in skipped}):
        o, d = cells.get((ctx, "ours")), cells.get((ctx, "dense"))

        def tps(cc, v, ctx=ctx):
            if cc:
                return _spread([ctx / t for t in cc["ttft"]], 0)
            if v in cal:   # not measured: the work model's prefill time x the path's measured/roofline factor
                return f"~{_fmt(ctx / (cal[v] * c.roof_ms(model, ctx, v, 'prefill') / 1e3), 0)}*"
            return "-"
        tr = _med(o["ttft"]) / _med(d["ttft"]) if o and d else None
        dr = _med(o["decode"]) / _med(d["decode"]) if o and d else None
        pp = c.roof_ms(model, ctx, "ours", "prefill") / c.roof_ms(model, ctx, "dense", "prefill")
        pd = c.roof_ms(model, ctx, "ours") / c.roof_ms(model, ctx, "dense")
        out.append(f"| {ctx} | {tps(o, 'ours')} | {tps(d, 'dense')} | {_fmt(tr, 2)} | {pp:.2f} | "
                   f"{_spread(o['decode']) if o else '-'} | {_spread(d['decode']) if d else '-'} | {_fmt(dr, 2)} | "
                   f"{pd:.2f} |")
    return out + [""]


README_BEGIN, README_END = "<!-- context-curve:begin -->", "<!-- context-curve:end -->"


def readme_block(c: Curve, png_rel: str) -> str:
    """The README's summary: one row per (model, context), engine-neutral decode + vLLM, with predictions."""
    m = c.meta
    lines = [README_BEGIN,
             f"Measured {m.get('date', '?')} (git {m.get('git', '?')}) on {m.get('machine', '?')}, "
             f"{m.get('cores', '?')} cores, {m.get('args', {}).get('threads', '?')} thread(s) per process, load average "
             f"{m.get('load_start', '?')} at the start and {c.end.get('load_end', '?')} at the end (other jobs "
             f"running: upper bounds). Medians of >= {m.get('args', {}).get('reps', '?')} repetitions, "
             "spreads in `benchmarks/CONTEXT_CURVE.md`; `pred` = the work model's roofline ratio ours / dense on "
             "this machine's measured ceilings; `~v*` = extrapolated by the work model (time budget), not measured.",
             "", "| model | context | decode ms ours / dense (engine-neutral) | ours/dense | pred | vLLM prefill "
             "tok/s ours / dense | time ours/dense | pred |", "|---|---|---|---|---|---|---|---|"]
    for model in c.cfgs:
        cells, ec = c.decode_cells(model), c.engine_cells(model, "vllm")
        cal = {v: c.calib(cells, model, v, "decode") for v in ("ours", "dense")}
        for ctx in sorted({k[0] for k in cells} | {k[0] for k in ec}):
            val = {}
            for v in ("ours", "dense"):
                ms = cells.get((ctx, v))
                val[v] = (_med(ms), _fmt(_med(ms))) if ms else \
                    ((cal[v] * c.roof_ms(model, ctx, v), f"~{_fmt(cal[v] * c.roof_ms(model, ctx, v))}*")
                     if cal[v] and (ctx, v) in cells else (None, "-"))
            r = val["ours"][0] / val["dense"][0] if val["ours"][0] and val["dense"][0] else None
            pred = c.roof_ms(model, ctx, "ours") / c.roof_ms(model, ctx, "dense")
            o, d = ec.get((ctx, "ours")), ec.get((ctx, "dense"))
            tps = lambda cc: _fmt(ctx / _med(cc["ttft"]), 0) if cc else "-"   # noqa: E731
            tr = _med(o["ttft"]) / _med(d["ttft"]) if o and d else None
            pp = c.roof_ms(model, ctx, "ours", "prefill") / c.roof_ms(model, ctx, "dense", "prefill")
            lines.append(f"| {model} | {ctx} | {val['ours'][1]} / {val['dense'][1]} | {_fmt(r, 2)} | {pred:.2f} | "
                         f"{tps(o)} / {tps(d)} | {_fmt(tr, 2)} | {pp:.2f} |")
    lines += ["", f"![DSA vs dense against context]({png_rel})", README_END]
    return "\n".join(lines)


def update_readme(readme: str, block: str) -> None:
    with open(readme) as f:
        text = f.read()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{readme}: no {README_BEGIN} ... {README_END} markers")
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    with open(readme, "w") as f:
        f.write(head + block + tail)


def plot(c: Curve, png: str) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no PNG (pip install matplotlib)"
    models = list(c.cfgs)
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4.2 * len(models)), squeeze=False)
    colors = {"ours": "tab:red", "dense": "tab:blue"}
    for i, model in enumerate(models):
        ax = axes[i][0]
        cells = c.decode_cells(model)
        ctxs = sorted({k[0] for k in cells})
        for v in ("ours", "dense"):
            pts = [(ctx, _med(cells[(ctx, v)])) for ctx in ctxs if cells.get((ctx, v))]
            if pts:
                ax.plot(*zip(*pts), "o-", color=colors[v], label=f"{v}, engine-neutral step (measured)")
            cal = c.calib(cells, model, v, "decode")
            if cal and ctxs:
                ax.plot(ctxs, [cal * c.roof_ms(model, x, v) for x in ctxs], ":", color=colors[v],
                        label=f"{v}, work model x {cal:.1f}")
        for engine, mk in (("vllm", "s"), ("sglang", "^")):
            ec = c.engine_cells(model, engine)
            for v in ("ours", "dense"):
                pts = sorted((ctx, _med(cc["decode"])) for (ctx, vv), cc in ec.items() if vv == v)
                if pts:
                    ax.plot(*zip(*pts), mk + "--", color=colors[v], alpha=0.6, label=f"{v}, {engine} decode")
        ax.axvline(c.cfgs[model].index_topk, color="gray", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="decode ms / token",
               title=f"{model}: decode")
        ax.legend(fontsize=7)
        ax = axes[i][1]
        for engine, mk in (("vllm", "s"), ("sglang", "^")):
            ec = c.engine_cells(model, engine)
            for v in ("ours", "dense"):
                pts = sorted((ctx, ctx / _med(cc["ttft"])) for (ctx, vv), cc in ec.items() if vv == v)
                if pts:
                    ax.plot(*zip(*pts), mk + "-", color=colors[v], label=f"{v}, {engine}")
        ax.axvline(c.cfgs[model].index_topk, color="gray", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="prompt (tokens)", ylabel="prefill tokens / s",
               title=f"{model}: prefill")
        ax.legend(fontsize=7)
    m = c.meta
    fig.suptitle(f"DSA (plugin) vs dense MLA -- {m.get('machine', '?')}, {m.get('cores', '?')} cores, "
                 f"{m.get('date', '?')}, load {m.get('load_start', '?')} (upper bounds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return ""


def write(jsonl: str, out_dir: str) -> tuple:
    c = Curve(load(jsonl))
    md = markdown(c)
    png = os.path.join(out_dir, "context_curve.png")
    note = plot(c, png)
    if note:
        md += f"\n{note}\n"
    else:
        md += "\n![context curve](context_curve.png)\n"
    path = os.path.join(out_dir, "CONTEXT_CURVE.md")
    with open(path, "w") as f:
        f.write(md)
    print(md)
    return path, (None if note else png)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("jsonl")
    ap.add_argument("--out", default=None)
    ap.add_argument("--readme", default=None, help="also rewrite the README's context-curve block")
    a = ap.parse_args()
    write(a.jsonl, a.out or os.path.dirname(os.path.abspath(a.jsonl)))
    if a.readme:
        update_readme(a.readme, readme_block(Curve(load(a.jsonl)), "benchmarks/context_curve.png"))
