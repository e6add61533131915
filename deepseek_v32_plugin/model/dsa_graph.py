"""DSA plans a CUDA graph can replay (engine-neutral; the vLLM builder, the SGLang backend and
benchmarks/gpu_check use it).

A captured graph keeps the host-side shape of the plan it was captured with and reads its tensors at fixed
addresses. `UniformPlanBuffers` gives a uniform batch (R requests x q query rows each, q <= max_q: decode,
MTP verify, draft steps; padding requests have seq_len 0) a plan that satisfies both:
  - tensors: persistent buffers sized once (max_reqs x max_q rows), filled in place each step from the
    engine's device tensors: no allocation, no host sync;
  - host fields: one paged group over all R requests reading keys up to max_context (the longest context the
    engine allows), which depend only on (R, q): one DSAPlan object per (R, q), returned every step.
dsa.select / dsa.attend on it equal them on dsa.plan's exact plan of the same batch (the paged group scores
every row, also those whose context fits in index_topk: top-k then selects all of its keys, in the canonical
ascending order of the identity rows); padding rows (position -1) select nothing, and their slot -1 writes
nothing. Tests: integration_tests/vllm/test_cuda_graph_plan.py, tests/test_sglang_uniform_plan.py,
benchmarks/gpu_check (phase graph).
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
    UniformPlanBuffers.plan makes it over its buffers."""
    t = num_reqs * q
    return DSAPlan(num_tokens=t, seq_lens=seq_lens, block_table=block_table, slot_mapping=slot_mapping,
                   positions=positions, row_block_table=row_block_table,
                   paged=[PagedGroup(0, num_reqs, 0, t, q, max_context)], width=topk, topk_length=topk_length)


def fill_topk_length(plan: DSAPlan, topk: int) -> None:
    """topk_length = min(position + 1, topk) in place (padding rows at position -1 read nothing)."""
    plan.topk_length.copy_((plan.positions + 1).clamp_(0, topk))


class UniformPlanBuffers:
    """Persistent tensors for the plans of uniform batches of up to max_reqs requests x max_q rows each (max_rows
    rows in all, default max_reqs * max_q), block tables up to max_pages wide. Both adapters: vLLM's builder
    knows each request's seq_len (`fill`: its rows are the last q tokens), SGLang's backend each row's position
    (`fill_positions`: seq_len = last row + 1)."""

    def __init__(self, max_reqs: int, max_q: int, max_pages: int, max_context: int, topk: int,
                 device: torch.device | str, max_rows: int | None = None):
        rows = max_reqs * max_q if max_rows is None else max_rows
        self.max_reqs, self.max_q, self.max_rows, self.topk = max_reqs, max_q, rows, topk
        self.max_context = min(max_context, max_pages * PAGE_SIZE)
        self.seq_lens = torch.zeros(max_reqs, dtype=torch.int32, device=device)
        self.block_table = torch.zeros(max_reqs, max_pages, dtype=torch.int32, device=device)
        self.slot_mapping = torch.full((rows,), -1, dtype=torch.int64, device=device)
        self.positions = torch.zeros(rows, dtype=torch.int64, device=device)
        self.row_block_table = torch.zeros(rows, max_pages, dtype=torch.int32, device=device)
        self.topk_length = torch.zeros(rows, dtype=torch.int32, device=device)
        # offsets[max_q - q + i] = i - q: row i of a request sits at seq_len - q + i
        self.offsets = torch.arange(-max_q, 0, device=device)
        self._plans: dict = {}

    def fits(self, num_reqs: int, q: int, pages: int) -> bool:
        return (0 < q <= self.max_q and num_reqs <= self.max_reqs and num_reqs * q <= self.max_rows
                and pages <= self.block_table.shape[1])

    def plan(self, num_reqs: int, q: int, max_context: int | None = None) -> DSAPlan:
        """The (num_reqs, q) plan over views of the buffers: the same object for the same (num_reqs, q), what a
        captured graph replays. max_context: a tighter bound of every request's keys (an eager batch; a new
        plan each call)."""
        if not self.fits(num_reqs, q, 0):
            raise ValueError(f"uniform batch of {num_reqs} requests x {q} rows: the plan buffers hold "
                             f"{self.max_reqs} requests x {self.max_q} rows, {self.max_rows} rows in all")
        md = self._plans.get((num_reqs, q)) if max_context is None else None
        if md is None:
            t = num_reqs * q
            md = uniform_plan(num_reqs, q, max_context or self.max_context, self.topk,
                              seq_lens=self.seq_lens[:num_reqs], block_table=self.block_table[:num_reqs],
                              slot_mapping=self.slot_mapping[:t], positions=self.positions[:t],
                              row_block_table=self.row_block_table[:t], topk_length=self.topk_length[:t])
            if max_context is None:
                self._plans[(num_reqs, q)] = md
        return md

    def fill(self, seq_lens: torch.Tensor, block_table: torch.Tensor, slot_mapping: torch.Tensor, q: int) -> DSAPlan:
        """seq_lens [R] (0: padding request), block_table [R, <= max_pages], slot_mapping [<= R*q] (missing
        rows: -1), all on the buffers' device -> the (R, q) plan, its buffers refilled in place."""
        r, w = seq_lens.shape[0], block_table.shape[1]
        t = r * q
        if not self.fits(r, q, w):
            raise ValueError(f"uniform batch of {r} requests x {q} rows, {w} pages per request: the graph buffers "
                             f"hold {self.max_reqs} x {self.max_q}, {self.block_table.shape[1]} pages")
        md = self.plan(r, q)
        self.seq_lens[:r].copy_(seq_lens)
        n = min(t, slot_mapping.shape[0])
        self.slot_mapping[:n].copy_(slot_mapping[:n])
        self.slot_mapping[n:t].fill_(-1)
        pos = self.positions[:t].view(r, q)
        torch.add(self.seq_lens[:r, None], self.offsets[self.max_q - q:], out=pos)
        pos.clamp_min_(-1)
        self._fill_tables(md, block_table)
        return md

    def fill_positions(self, md: DSAPlan, positions: torch.Tensor, block_table: torch.Tensor,
                       slot_mapping: torch.Tensor, offset: int = 0, padding: torch.Tensor | None = None) -> None:
        """Refill a plan of these buffers in place from each row's position (+ offset) [>= R*q], the requests'
        block tables [R, <= max_pages]; the plan reads slot_mapping (the engine's own tensor) as it is.
        padding (bool [R]): requests to plan out (their rows get position -1, seq_len 0: no keys, zero output)."""
        t = md.num_tokens
        md.positions.copy_(positions[:t])
        if offset:
            md.positions.add_(offset)
        if padding is not None:
            md.positions.view(md.paged[0].req_hi, -1).masked_fill_(padding[:, None], -1)
        md.seq_lens.copy_(md.positions.view(md.paged[0].req_hi, -1)[:, -1] + 1)
        self._fill_tables(md, block_table)
        md.slot_mapping = slot_mapping

    @staticmethod
    def _fill_tables(md: DSAPlan, block_table: torch.Tensor) -> None:
        """The requests' block tables (zero past their width), each row's, and topk_length."""
        g = md.paged[0]
        r, w = g.req_hi, block_table.shape[1]
        md.block_table[:, :w].copy_(block_table[:r])
        md.block_table[:, w:].zero_()
        md.row_block_table.view(r, g.q, -1).copy_(md.block_table[:, None, :].expand(r, g.q, -1))
        fill_topk_length(md, md.width)
