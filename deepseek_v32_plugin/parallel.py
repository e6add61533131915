"""Parallel layouts of DeepSeek-V3.2 across GPUs, engine-neutral: how each engine's flags split the model, which
layouts our kernels can serve (one error naming the flag otherwise), and where each layer lives.

A layout, in the terms both engines reduce to:
  attn_tp   ranks sharing one attention (heads, dense MLP, shared expert, vocabulary split over them)
  pp        pipeline stages (layers split as `stage_layers`; embedding on the first stage, final norm, lm_head
            and the MTP layer on the last)
  moe_tp    ranks splitting each routed expert's intermediate dimension
  moe_ep    ranks splitting the routed experts themselves (expert parallel)
  replicas  independent attention groups, each with its own sequences and caches (data parallel / DP attention)
  ffn_tp    ranks splitting the dense MLPs, the shared expert and lm_head (= attn_tp unless DP attention)
vLLM:   attn_tp = TP; MoE over TP x DP ranks, by experts with --enable-expert-parallel, else by intermediate;
        replicas = DP; GPUs = TP x PP x DP.
SGLang: DP attention (--attn-dp-size dp, or its deprecated spelling --dp-size dp --enable-dp-attention):
        attn_tp = tp / dp, replicas = dp, ffn_tp = tp (rows gathered from the attention groups around the
        MLPs), the vocabulary of the embedding over attn_tp, GPUs = tp x pp; else attn_tp = ffn_tp = tp,
        replicas = dp (router copies), GPUs = tp x pp x dp. moe_ep = --ep-size, moe_tp = tp / ep.
Imports nothing heavy (no torch): the engines' config hooks and `deepseek-v32 plan` use it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import FP8_BLOCK, V32Config


class LayoutError(ValueError):
    """A parallel layout the plugin cannot serve; the message names the engine flag at fault."""


@dataclass(frozen=True)
class Layout:
    attn_tp: int = 1
    pp: int = 1
    moe_tp: int = 1
    moe_ep: int = 1
    replicas: int = 1
    flags: tuple = ()          # ((role, engine flag, value), ...), role in tp/pp/dp/ep: for messages
    ffn_tp: int = 0            # 0: attn_tp
    dp_attention: bool = False   # SGLang's DP attention: replicas are attention groups inside one TP group

    @property
    def mlp_tp(self) -> int:
        """Ranks splitting the dense MLPs, the shared expert and lm_head."""
        return self.ffn_tp or self.attn_tp

    @property
    def gpus_per_replica(self) -> int:
        return self.attn_tp * self.pp

    @property
    def gpus(self) -> int:
        return self.gpus_per_replica * self.replicas

    def flag(self, role: str) -> str:
        """The engine flag playing `role` (tp, pp, dp, ep) as `--name=value`."""
        return next(f"{name}={value}" for r, name, value in self.flags if r == role)


def vllm_layout(tp: int = 1, pp: int = 1, dp: int = 1, ep: bool = False) -> Layout:
    """vLLM: FusedMoE shards experts over the flattened TP x DP group (config/parallel.py, FusedMoEParallelConfig)."""
    moe = tp * dp
    return Layout(attn_tp=tp, pp=pp, moe_tp=1 if ep else moe, moe_ep=moe if ep else 1, replicas=dp,
                  flags=(("tp", "--tensor-parallel-size", tp), ("pp", "--pipeline-parallel-size", pp),
                         ("dp", "--data-parallel-size", dp), ("ep", "--enable-expert-parallel", ep)))


def sglang_layout(tp: int = 1, pp: int = 1, dp: int = 1, ep: int = 1, dp_attention: bool = False) -> Layout:
    """dp_attention: dp is the number of attention-DP groups (--attn-dp-size) inside the TP group."""
    flags = (("tp", "--tp-size", tp), ("pp", "--pp-size", pp),
             ("dp", "--attn-dp-size" if dp_attention else "--dp-size", dp), ("ep", "--ep-size", ep))
    if dp_attention and tp % dp:
        raise LayoutError(f"--attn-dp-size={dp}: DP attention groups split the TP group, so it must divide "
                          f"--tp-size={tp}")
    if tp % ep:
        raise LayoutError(f"--ep-size={ep}: it must divide --tp-size={tp}")
    attn_tp = tp // dp if dp_attention else tp
    return Layout(attn_tp=attn_tp, pp=pp, moe_tp=tp // ep, moe_ep=ep, replicas=dp, flags=flags, ffn_tp=tp,
                  dp_attention=dp_attention)


def stage_layers(num_layers: int, pp: int, engine: str = "vllm") -> list:
    """Decoder layers per pipeline stage, as the engine splits them: an even split, the remainder one layer
    each to the stages before the last, from the second-to-last backwards (vLLM get_pp_indices,
    distributed/utils.py:126) or to the last stages (SGLang get_pp_indices, srt/distributed/utils.py:110)."""
    if pp < 1 or num_layers < pp:
        raise LayoutError(f"pipeline stages={pp}: num_hidden_layers={num_layers} cannot give every stage a layer")
    parts = [num_layers // pp] * pp
    for i in range(num_layers % pp):
        parts[-2 - i if engine == "vllm" else -1 - i] += 1
    return parts


def check_layout(cfg: V32Config, lay: Layout) -> None:
    """Raise LayoutError naming the flag for a layout our kernels cannot serve."""
    if min(lay.attn_tp, lay.pp, lay.moe_tp, lay.moe_ep, lay.replicas) < 1:
        raise LayoutError("parallel sizes must be >= 1: " + ", ".join(f"{n}={v}" for _, n, v in lay.flags))
    if cfg.num_attention_heads % lay.attn_tp:
        raise LayoutError(f"{lay.flag('tp')}: num_attention_heads={cfg.num_attention_heads} is not divisible by "
                          f"the {lay.attn_tp} ranks sharing each attention")
    if cfg.num_hidden_layers < lay.pp:
        raise LayoutError(f"{lay.flag('pp')}: num_hidden_layers={cfg.num_hidden_layers} cannot give each of the "
                          f"{lay.pp} pipeline stages a layer")
    if cfg.n_routed_experts:
        if cfg.n_routed_experts < lay.moe_ep:
            raise LayoutError(f"{lay.flag('ep')}: {lay.moe_ep} expert-parallel ranks for n_routed_experts="
                              f"{cfg.n_routed_experts}: a rank would hold no expert")
        inter = cfg.moe_intermediate_size
        if inter % lay.moe_tp or (inter // lay.moe_tp) % FP8_BLOCK:
            raise LayoutError(
                f"{lay.flag('tp')}: the routed experts' moe_intermediate_size={inter} split over {lay.moe_tp} "
                f"ranks is not a whole number of {FP8_BLOCK}-wide FP8 blocks per rank; split the experts instead "
                f"(vLLM: --enable-expert-parallel; SGLang: --ep-size)")
    for what, inter in (("intermediate_size", cfg.intermediate_size),
                        ("shared expert", cfg.moe_intermediate_size * cfg.n_shared_experts)):
        if inter and (inter % lay.mlp_tp or (inter // lay.mlp_tp) % FP8_BLOCK):
            raise LayoutError(f"{lay.flag('tp')}: {what} {inter} split over {lay.mlp_tp} ranks is not a whole "
                              f"number of {FP8_BLOCK}-wide FP8 blocks per rank")
