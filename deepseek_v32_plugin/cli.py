"""`deepseek-v32` command line.

  deepseek-v32 make-checkpoint OUT --preset tiny [--seed N] [--set index_topk=64 ...] [--max-shard-mb M] [--force]
  deepseek-v32 inspect DIR [--load] [--json]
  deepseek-v32 tiny-path          # generate (first use) and print the embedded tiny checkpoint's path
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
    return p


def main(argv=None) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (CheckpointError, ConfigError, FileExistsError) as e:
        print(f"deepseek-v32 {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
