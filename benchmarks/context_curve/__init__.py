"""Context-length cost curve of DeepSeek-V3.2 (DSA) against the engines' dense MLA on the same weights.

    python benchmarks/context_curve                     # everything, ~30 min on CPU; writes
                                                        # benchmarks/CONTEXT_CURVE.md + context_curve.png
    python benchmarks/context_curve --phases decode     # only the engine-neutral decode curve
    python benchmarks/context_curve --quick --out DIR   # seconds: plumbing check (tests/test_context_curve.py)

Phases: `checkpoints` (the named presets `topk2048` and `real-width` as V3.2 checkpoints + their dense bf16
DeepseekV3ForCausalLM copies, testing_checkpoints.write_dense_baseline), `decode` (decode.py: caches filled
directly, one decode step timed at each context up to 32K, ours vs dense), `engines` (engine_worker.py:
prefill tokens/s and decode ms/token of single requests up to 8K through vLLM and SGLang, the plugin vs the
engine's own DeepseekV3 with plugins off, each engine process under an RSS cap), `report` (report.py: the
markdown table and the PNG, the work model's prediction beside every measurement; cells skipped for the
time budget are filled by the work model and marked as extrapolated).
"""
