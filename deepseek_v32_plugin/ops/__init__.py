"""deepseek_v32_plugin.ops: every kernel the model uses, one function per op, one dispatch.

Families (each `ops/<family>/__init__.py` documents shapes, dtypes and byte layouts; `naive.py` beside
it is the plain-PyTorch reference that defines the semantics):
  fp8_quant   FP8 e4m3 block quantization (1x128 activations, 128x128 weights, ue8m0 scales), fp8 GEMM
  indexer     lightning indexer: Hadamard+FP8 quant, paged key cache (132 B/token), logits, top-k
  sparse_mla  latent cache writes (bf16 576 / fp8 656 B/token), sparse MLA decode and prefill
  fp8_moe     grouped FP8 expert GEMMs (contiguous / masked), SiLU-mul + FP8 requant, full expert compute
Backends: see ops/_dispatch.py (cuda -> triton -> torch; env DSV32_BACKEND[_<OP>] overrides).
"""
PAGE_SIZE = 64  # tokens per KV-cache page, for both the latent and the indexer caches
