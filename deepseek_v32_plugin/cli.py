"""`deepseek-v32` command line.

  deepseek-v32 make-checkpoint OUT --preset tiny [--seed N] [--set index_topk=64 ...] [--max-shard-mb M] [--force]
  deepseek-v32 inspect DIR [--load] [--json]
  deepseek-v32 tiny-path          # generate (first use) and print the embedded tiny checkpoint's path
  deepseek-v32 plan --gpus 16 --gpu h100 --engine vllm [--tp 8 --pp 2 --ep] [--kv-cache fp8|bf16] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE (VALUE is JSON, e.g. index_topk=64)")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


def cmd_make_checkpoint(args) -> int:
    from .checkpoint import expected_tensors, write_checkpoint
    from .config import preset_config
    cfg = preset_config(args.preset, **_parse_set(args.set))
    t0 = time.time()
    shard = None if args.max_shard_mb is None else int(args.max_shard_mb * (1 << 20))
    write_checkpoint(cfg, args.out, seed=args.seed, max_shard_bytes=shard, overwrite=args.force)
    total = sum(s.nbytes for s in expected_tensors(cfg).values())
    print(f"wrote {args.preset} checkpoint (seed {args.seed}, {total / 1e6:.1f} MB) to {args.out} "
          f"in {time.time() - t0:.1f}s")
    return 0


def cmd_inspect(args) -> int:
    from .checkpoint import checkpoint_summary, iter_checkpoint
    s = checkpoint_summary(args.dir)
    if args.load:  # read every tensor and check it is finite
        import torch
        bad = []
        for name, t in iter_checkpoint(args.dir):
            if not torch.isfinite(t.float()).all():
                bad.append(name)
        s["non_finite_tensors"] = bad
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        width = max(len(k) for k in s)
        for k, v in s.items():
            print(f"{k:<{width}}  {v}")
        print("OK: every tensor present with the expected shape and dtype")
    return 1 if s.get("non_finite_tensors") else 0


def cmd_tiny_path(args) -> int:
    from .checkpoint import default_tiny_checkpoint
    print(default_tiny_checkpoint(seed=args.seed))
    return 0


def _print_plan(args, plans, chosen, nodes, gpu_bytes) -> None:
    from .plan import GIB, cache_bytes_per_token_layer, launch_flags, node_flags
    p0 = plans[0][1]
    per = cache_bytes_per_token_layer(args.kv_cache)
    print(f"DeepSeek-V3.2 (61 layers + MTP layer {'served' if args.mtp else 'not served'}) on {args.gpus} GPUs "
          f"({nodes} node(s) x {args.gpus_per_node}) of {gpu_bytes / GIB:.1f} GiB, engine {args.engine}")
    print(f"usable per GPU: {gpu_bytes / GIB:.1f} GiB x {p0.mem_fraction:.2f} (engine's memory fraction) "
          f"- {args.reserve_bytes / GIB:.1f} GiB reserve (activations, graphs, comm buffers; assumed) = "
          f"{p0.usable_bytes / GIB:.1f} GiB; cache per token and layer {per} B "
          f"({per - 132} latent {args.kv_cache} + 132 indexer key)")
    print(f"{'layout':<28} {'stage':>5} {'layers':>6} {'weights/GPU':>12} {'cache B/token':>13} "
          f"{'tokens/replica':>14} {'replicas':>8} {'total tokens':>12}")
    for name, plan in plans:
        for s_i, st in enumerate(plan.stages):
            last = s_i == len(plan.stages) - 1
            print(f"{name if s_i == 0 else '':<28} {s_i:>5} {st.layers:>6} {st.weight_bytes / GIB:>8.1f} GiB "
                  f"{st.cache_bytes_per_token:>13} {st.tokens:>14,} "
                  f"{plan.layout.replicas if last else '':>8} {(f'{plan.total_tokens:,}' if plan.fits else 'does not fit') if last else '':>12}")
    if chosen is None:
        print("no layout fits: more GPUs, more memory per GPU, or a smaller reserve")
        return
    name, plan = chosen
    kv = {"vllm": {"fp8": ["--kv-cache-dtype fp8_ds_mla"], "bf16": []},
          "sglang": {"fp8": ["--kv-cache-dtype fp8_e4m3"], "bf16": []}}[args.engine][args.kv_cache]
    if args.engine == "vllm":
        base = ["vllm serve /path/to/DeepSeek-V3.2"]   # `vllm serve`: --headless is a serve-command feature
    else:
        base = ["python -m sglang.launch_server --model-path /path/to/DeepSeek-V3.2"]
    print(f"\nrecommended: {name}: {plan.total_tokens:,} context tokens in all "
          f"({plan.tokens_per_replica:,} per replica, shared by its running sequences)")
    for rank in range(nodes):
        who = f"node {rank}: " if nodes > 1 else ""
        print("  " + who + " ".join(base + launch_flags(args.engine, plan.layout, nodes) + kv
                                    + node_flags(args.engine, nodes, rank)))


def cmd_plan(args) -> int:
    from .parallel import LayoutError, sglang_layout, vllm_layout
    from .plan import GIB, GPUS_MIB, RESERVE_GIB, candidate_layouts, make_plan
    if (args.gpu is None) == (args.gpu_mem_gb is None):
        raise LayoutError("give the GPU memory: --gpu NAME or --gpu-mem-gb GIB (one of them)")
    gpu_bytes = GPUS_MIB[args.gpu] << 20 if args.gpu else int(args.gpu_mem_gb * GIB)
    args.gpus_per_node = args.gpus_per_node or min(args.gpus, 8)
    nodes = args.gpus // args.gpus_per_node if args.gpus % args.gpus_per_node == 0 else 0
    args.reserve_bytes = int((RESERVE_GIB if args.reserve_gb is None else args.reserve_gb) * GIB)
    if args.tp or args.pp or args.dp or args.ep or args.dp_attention:   # one explicit layout
        tp, pp, dp = args.tp or 1, args.pp or 1, args.dp or 1
        if args.engine == "vllm":
            lay = vllm_layout(tp=tp, pp=pp, dp=dp, ep=bool(args.ep))
        else:
            lay = sglang_layout(tp=tp, pp=pp, dp=dp, ep=args.ep or 1, dp_attention=args.dp_attention)
        if lay.gpus != args.gpus:
            raise LayoutError(f"--gpus={args.gpus}: the layout uses {lay.gpus} GPUs")
        layouts = [("given layout", lay)]
    else:
        layouts = candidate_layouts(args.engine, args.gpus, args.gpus_per_node, mtp=args.mtp)
    plans = [(name, make_plan(lay, args.engine, gpu_bytes, kv_cache=args.kv_cache, mtp=args.mtp,
                              mem_fraction=args.mem_fraction, reserve_bytes=args.reserve_bytes))
             for name, lay in layouts]
    chosen = next(((n, p) for n, p in plans if p.fits), None)
    if args.json:
        print(json.dumps([{"layout": n, "fits": p.fits, "total_tokens": p.total_tokens, "replicas": p.layout.replicas,
                           "usable_bytes": p.usable_bytes,
                           "stages": [vars(s) for s in p.stages]} for n, p in plans], indent=2))
    else:
        _print_plan(args, plans, chosen, max(nodes, 1), gpu_bytes)
    return 0 if chosen else 1


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS
    p = argparse.ArgumentParser(prog="deepseek-v32", description="DeepSeek-V3.2 plugin tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-checkpoint", help="write a random-weight checkpoint in the exact HF V3.2 format")
    m.add_argument("out", help="output directory (created)")
    m.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    m.add_argument("--max-shard-mb", type=float, default=None, help="shard size limit (default: total/4)")
    m.add_argument("--force", action="store_true", help="write into a non-empty directory")
    m.set_defaults(fn=cmd_make_checkpoint)
    i = sub.add_parser("inspect", help="print a checkpoint's config summary and validate its tensors")
    i.add_argument("dir")
    i.add_argument("--load", action="store_true", help="also read every tensor and check it is finite")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)
    t = sub.add_parser("tiny-path", help="print the embedded tiny checkpoint's path (generated on first use)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=cmd_tiny_path)
    from .plan import GPUS_MIB
    pl = sub.add_parser("plan", help="parallel layout, memory per GPU and context that fits for the full model")
    pl.add_argument("--gpus", type=int, required=True, help="GPUs in all")
    pl.add_argument("--gpu", choices=sorted(GPUS_MIB), help="GPU model (its memory as nvidia-smi reports it)")
    pl.add_argument("--gpu-mem-gb", type=float, help="memory per GPU in GiB (instead of --gpu)")
    pl.add_argument("--gpus-per-node", type=int, default=None, help="default: min(gpus, 8)")
    pl.add_argument("--engine", choices=["vllm", "sglang"], default="vllm")
    pl.add_argument("--kv-cache", choices=["fp8", "bf16"], default="fp8",
                    help="latent cache rows: fp8 = 656 B (fp8_ds_mla), bf16 = 1152 B")
    pl.add_argument("--no-mtp", dest="mtp", action="store_false", help="do not load the MTP layer")
    pl.add_argument("--mem-fraction", type=float, default=None,
                    help="share of GPU memory the engine takes (default: vLLM 0.90, SGLang 0.85)")
    pl.add_argument("--reserve-gb", type=float, default=None,
                    help="GiB per GPU kept for activations, graphs and communication buffers (default 6)")
    pl.add_argument("--tp", type=int, help="evaluate one layout: tensor parallel size (SGLang: --tp-size)")
    pl.add_argument("--pp", type=int, help="pipeline parallel size")
    pl.add_argument("--dp", type=int, help="data parallel size")
    pl.add_argument("--ep", type=int, help="vLLM: 1 = --enable-expert-parallel; SGLang: --ep-size")
    pl.add_argument("--dp-attention", action="store_true",
                    help="SGLang DP attention: --dp attention groups inside the TP group (--attn-dp-size)")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(fn=cmd_plan)
    return p


def main(argv=None) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .parallel import LayoutError
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (CheckpointError, ConfigError, LayoutError, FileExistsError) as e:
        print(f"deepseek-v32 {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
