"""DSA plans a CUDA graph can replay (engine-neutral; the vLLM builder and benchmarks/gpu_check use it).

A captured graph keeps the host-side shape of the plan it was captured with and reads its tensors at fixed
addresses. `UniformPlanBuffers` gives a uniform batch (R requests x q query rows each, q <= decode_threshold:
decode, MTP verify; padding requests have seq_len 0) a plan that satisfies both:
  - tensors: persistent buffers sized once (max_reqs x decode_threshold rows), filled in place each step from
    the engine's device tensors: no allocation, no host sync;
  - host fields: one paged group over all R requests reading keys up to max_context (the longest context the
    engine allows), which depend only on (R, q): one DSAPlan object per (R, q), returned every step.
dsa.select / dsa.attend on it equal them on dsa.plan's exact plan of the same batch (the paged group scores
every row, also those whose context fits in index_topk: top-k then selects all of its keys, in the canonical
ascending order of the identity rows); padding rows (position -1) select nothing, and their slot -1 writes
nothing. Tests: integration_tests/vllm/test_cuda_graph_plan.py, benchmarks/gpu_check (phase graph).
"""
from __future__ import annotations

import torch

from ..ops import PAGE_SIZE
from .dsa import DSAPlan, PagedGroup


def uniform_plan(num_reqs: int, q: int, max_context: int, topk: int, *, seq_lens, block_table, slot_mapping,
                 positions, row_block_table, topk_length) -> DSAPlan:
    """The host side of a uniform batch's plan (num_reqs requests x q rows, their last q tokens), over tensor
    views the caller refills in place: one paged group reading keys up to max_context, slots index_topk wide
    (width = topk, fixed for replay), each row reading its first topk_length entries (fill_topk_length).
    Shared by the vLLM builder (UniformPlanBuffers) and the SGLang backend (engines/sglang/backend.py)."""
    t = num_reqs * q
    return DSAPlan(num_tokens=t, seq_lens=seq_lens, block_table=block_table, slot_mapping=slot_mapping,
                   positions=positions, row_block_table=row_block_table,
                   paged=[PagedGroup(0, num_reqs, 0, t, q, max_context)], width=topk, topk_length=topk_length)


def fill_topk_length(plan: DSAPlan, topk: int) -> None:
    """topk_length = min(position + 1, topk) in place (padding rows at position -1 read nothing)."""
    plan.topk_length.copy_((plan.positions + 1).clamp_(0, topk))


class UniformPlanBuffers:
    def __init__(self, max_reqs: int, decode_threshold: int, max_pages: int, max_context: int, topk: int,
                 device: torch.device | str):
        rows = max_reqs * decode_threshold
        self.max_reqs, self.decode_threshold, self.topk = max_reqs, decode_threshold, topk
        self.max_context = min(max_context, max_pages * PAGE_SIZE)
        self.seq_lens = torch.zeros(max_reqs, dtype=torch.int32, device=device)
        self.block_table = torch.zeros(max_reqs, max_pages, dtype=torch.int32, device=device)
        self.slot_mapping = torch.full((rows,), -1, dtype=torch.int64, device=device)
        self.positions = torch.zeros(rows, dtype=torch.int64, device=device)
        self.row_block_table = torch.zeros(rows, max_pages, dtype=torch.int32, device=device)
        self.topk_length = torch.zeros(rows, dtype=torch.int32, device=device)
        # offsets[threshold - q + i] = i - q: row i of a request sits at seq_len - q + i
        self.offsets = torch.arange(-decode_threshold, 0, device=device)
        self._plans: dict = {}

    def fits(self, num_reqs: int, q: int, pages: int) -> bool:
        return 0 < q <= self.decode_threshold and num_reqs <= self.max_reqs and pages <= self.block_table.shape[1]

    def fill(self, seq_lens: torch.Tensor, block_table: torch.Tensor, slot_mapping: torch.Tensor, q: int) -> DSAPlan:
        """seq_lens [R] (0: padding request), block_table [R, <= max_pages], slot_mapping [<= R*q] (missing
        rows: -1), all on the buffers' device -> the (R, q) plan, its buffers refilled in place."""
        r, w = seq_lens.shape[0], block_table.shape[1]
        t = r * q
        if not self.fits(r, q, w):
            raise ValueError(f"uniform batch of {r} requests x {q} rows, {w} pages per request: the graph buffers "
                             f"hold {self.max_reqs} x {self.decode_threshold}, {self.block_table.shape[1]} pages")
        self.seq_lens[:r].copy_(seq_lens)
        self.block_table[:r, :w].copy_(block_table[:r])
        self.block_table[:r, w:].zero_()
        n = min(t, slot_mapping.shape[0])
        self.slot_mapping[:n].copy_(slot_mapping[:n])
        self.slot_mapping[n:t].fill_(-1)
        pos = self.positions[:t].view(r, q)
        torch.add(self.seq_lens[:r, None], self.offsets[self.decode_threshold - q:], out=pos)
        pos.clamp_min_(-1)
        self.row_block_table[:t].view(r, q, -1).copy_(self.block_table[:r, None, :].expand(r, q, -1))
        md = self._plans.get((r, q))
        if md is None:
            md = self._plans[(r, q)] = uniform_plan(
                r, q, self.max_context, self.topk, seq_lens=self.seq_lens[:r], block_table=self.block_table[:r],
                slot_mapping=self.slot_mapping[:t], positions=self.positions[:t],
                row_block_table=self.row_block_table[:t], topk_length=self.topk_length[:t])
        fill_topk_length(md, self.topk)
        return md
