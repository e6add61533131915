"""SGLang adapter for DeepSeek-V3.2 (entry point group ``sglang.srt.plugins``).

``register()`` runs in every SGLang process (engine, server, scheduler, detokenizer, TP workers); it must
stay cheap and import nothing from SGLang's CUDA paths. Filled in below as the adapter lands.
"""
from __future__ import annotations


def register() -> None:
    from . import cpu_shims

    cpu_shims.install()
