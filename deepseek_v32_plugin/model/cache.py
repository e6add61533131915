"""Paged caches for the reference model: per layer one latent (MLA) cache and one indexer key cache,
sharing one block table per sequence — the same layout the engines' KV-cache managers allocate."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..ops import PAGE_SIZE
from ..ops.indexer import BYTES_PER_TOKEN
from ..ops.sparse_mla import FP8_BYTES, HEAD_576


class CacheFullError(RuntimeError):
    """The paged cache has no free page left for a sequence."""


@dataclass
class Sequence:
    """One request's state in the cache: its pages (block table) and how many tokens are cached."""
    pages: list = field(default_factory=list)
    length: int = 0

    def block_table(self, device) -> torch.Tensor:
        return torch.tensor(self.pages or [0], dtype=torch.int32, device=device)

    def slots(self, positions: torch.Tensor) -> torch.Tensor:
        table = self.block_table(positions.device)
        return (table[positions // PAGE_SIZE].long() * PAGE_SIZE + positions % PAGE_SIZE)


class PagedCache:
    def __init__(self, num_layers: int, num_pages: int, device="cpu", mla_format: str = "bf16"):
        if mla_format not in ("bf16", "fp8_ds_mla", "fp32"):
            raise ValueError(f"mla_format={mla_format!r}: choose 'bf16', 'fp8_ds_mla' or 'fp32' (oracle only)")
        self.device = torch.device(device)
        self.num_pages = num_pages
        if mla_format in ("bf16", "fp32"):
            dt = torch.bfloat16 if mla_format == "bf16" else torch.float32
            self.mla = [torch.zeros(num_pages, PAGE_SIZE, HEAD_576, dtype=dt, device=device)
                        for _ in range(num_layers)]
        else:
            self.mla = [torch.zeros(num_pages, PAGE_SIZE, FP8_BYTES, dtype=torch.uint8, device=device)
                        for _ in range(num_layers)]
        self.index = [torch.zeros(num_pages, PAGE_SIZE, BYTES_PER_TOKEN, dtype=torch.uint8, device=device)
                      for _ in range(num_layers)]
        self.free = list(range(num_pages - 1, -1, -1))

    def new_sequence(self) -> Sequence:
        return Sequence()

    def reserve(self, seq: Sequence, new_tokens: int) -> None:
        need = -(-(seq.length + new_tokens) // PAGE_SIZE) - len(seq.pages)
        if need > len(self.free):
            raise CacheFullError(f"cache has {len(self.free)} free pages of {PAGE_SIZE} tokens, the sequence "
                                 f"needs {need} more for {seq.length + new_tokens} tokens")
        for _ in range(need):
            seq.pages.append(self.free.pop())

    def release(self, seq: Sequence) -> None:
        self.free.extend(reversed(seq.pages))
        seq.pages, seq.length = [], 0
