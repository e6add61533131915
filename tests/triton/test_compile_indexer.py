"""Compile the shipped fp8_quant + indexer Triton configs for real GPU targets without a GPU.

For sm_90a, sm_100a, sm_89 and sm_80 (the byte path: Triton has no e4m3 type below sm_89) every kernel
must compile with no register spills (no STL/LDL in the SASS) and shared memory within the limit;
the FP8 GEMM and the logits kernels must use the FP8 tensor-core instruction of the target
(QGMMA = FP8 wgmma on sm_90a, UTCQMMA = tcgen05 FP8 on sm_100a, QMMA on sm_89) and HMMA on sm_80; on
sm_89+ the logits kernels take e4m3 as fp8e4nv (no u8 -> f8 bitcast in TTGIR) and, on sm_90a / sm_100a,
feed the MMA from shared memory with no ttg.local_load (no shared -> registers -> shared round trip).
One test per target compiles all kernels in one child process (tests/compile_util.py).
"""
from __future__ import annotations

import pytest

from compile_util import check_shipped_configs

MOD_Q = "deepseek_v32_plugin.triton_kernels.fp8_quant"
MOD_I = "deepseek_v32_plugin.triton_kernels.indexer"

# per target: the MMA instruction the FP8 matmuls must show
FP8_MMA = {90: "QGMMA", 100: "UTCQMMA", 89: "QMMA", 80: "HMMA"}
BF16_MMA = {90: "HGMMA", 100: "UTCHMMA", 89: "HMMA", 80: "HMMA"}


def _launch(cfg: dict):
    cfg = dict(cfg)
    return cfg.pop("num_warps"), cfg.pop("num_stages", 3), cfg


def topk_split_specs(arch: int) -> list[tuple[dict, None]]:
    """The multi-CTA top-k: the chunk kernel (all five steps in one binary) on every target, the final (sort)
    kernel where the one-launch kernel is also built (not sm_89: same code shape, no MMA, slow to compile)."""
    from deepseek_v32_plugin.triton_kernels import indexer as ix
    lay = ix._ws_layout(1 << ix.TOPK_CONFIG["FINE_BITS"])
    common = dict(CAP=ix.TOPK_CONFIG["CAP"], FINE_BITS=ix.TOPK_CONFIG["FINE_BITS"], WORDS=lay.pop("WORDS"))
    sig = {"x_ptr": "*fp32", "ks_ptr": "*i32", "ke_ptr": "*i32", "out_ptr": "*i32", "cand_ptr": "*i32",
           "ws_ptr": "*i32", "N": "i32", "stride_x": "i32", "TOPK": "i32"}
    nw, ns, cfg = _launch({k: v for k, v in ix.TOPK_SPLIT_CONFIG.items() if k != "MIN_SPLITS"})
    out = [(dict(module=MOD_I, kernel="_topk_split_kernel", signature=dict(sig, S="i32", STEP="i32"),
                 constexprs=dict(cfg, **lay, **common), aligned=["stride_x", "TOPK"],
                 num_warps=nw, num_stages=ns, tag="topk split steps 1-5"), None)]
    if arch != 89:
        nw, ns, cfg = _launch(ix.TOPK_CONFIG)
        out.append((dict(module=MOD_I, kernel="_topk_split_final_kernel", signature=sig,
                         constexprs=dict(BLOCK=cfg["BLOCK"], TOPK_PAD=2048, H9=lay["H9"], MM=lay["MM"], **common),
                         aligned=["stride_x", "TOPK"], num_warps=nw, num_stages=ns, tag="topk split final"), None))
    return out


def specs_for(arch: int) -> list[tuple[dict, str | None]]:
    """(compile spec, required MMA op or None) for every shipped config on `arch`."""
    from deepseek_v32_plugin.triton_kernels import fp8_quant as fq
    from deepseek_v32_plugin.triton_kernels import indexer as ix
    cap = (arch // 10, arch % 10)
    native = arch >= 89
    f8 = "*fp8e4nv" if native else "*u8"
    out = []
    simple = arch in (90, 80)   # memory-bound kernels without MMA: checked on two targets to save time
    # (sm_89 shares the sm_80 mma.sync code shape apart from FP8 QMMA: only the FP8 matmuls are built there)

    if simple:
        out.append((dict(module=MOD_Q, kernel="_fp8_quant_act_kernel",
                         signature={"x_ptr": "*bf16", "q_ptr": f8, "s_ptr": "*fp32", "R": "i32", "K": "i32",
                                    "NG": "i32"},
                         constexprs=dict(BLOCK_R=32, GROUP_SIZE=128, UE8M0=True, NATIVE_FP8=native),
                         aligned=["K"], num_warps=4, num_stages=1), None))
    for m in ((4096, 16) if arch == 90 else (4096,)):
        nw, ns, cfg = _launch(fq.gemm_config(m, 7168, 2048, cap))
        out.append((dict(module=MOD_Q, kernel="_fp8_gemm_nt_kernel",
                         signature={"a_ptr": f8, "as_ptr": "*fp32", "b_ptr": f8, "bs_ptr": "*fp32", "c_ptr": "*bf16",
                                    "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32", "stride_asm": "i32",
                                    "stride_bn": "i32", "stride_bsn": "i32", "stride_cm": "i32"},
                         constexprs=dict(cfg, NATIVE_FP8=native), aligned=["K", "stride_am", "stride_bn", "stride_cm"],
                         num_warps=nw, num_stages=ns, tag=f"gemm m={m}"), FP8_MMA[arch]))
    for to_cache in ((False, True) if arch == 90 else (True,) if arch in (100, 80) else ()):
        nw, ns, cfg = _launch(ix.quant_config(cap))
        out.append((dict(module=MOD_I, kernel="_indexer_quant_kernel",
                         signature={"x_ptr": "*bf16", "q_ptr": "*u8", "s_ptr": "*fp32", "slot_ptr": "*i64",
                                    "cache_ptr": "*u8", "cache_f32_ptr": "*fp32", "R": "i32"},
                         constexprs=dict(cfg, D=128, ROTATE=True, TO_CACHE=to_cache, NATIVE_FP8=native),
                         num_warps=nw, num_stages=ns, tag=f"quant to_cache={to_cache}"), BF16_MMA[arch]))
    for gather in ((False, True) if simple else ()):
        out.append((dict(module=MOD_I, kernel="_cache_copy_kernel",
                         signature={"k_ptr": "*u8", "ks_ptr": "*fp32", "slot_ptr": "*i32", "cache_ptr": "*u8",
                                    "cache_f32_ptr": "*fp32", "T": "i32", "TOTAL_SLOTS": "i32"},
                         constexprs=dict(BLOCK_T=32, D=128, GATHER=gather), num_warps=4, num_stages=1,
                         tag=f"cache gather={gather}"), None))
    nw, ns, cfg = _launch(ix.logits_config(64, cap))
    out.append((dict(module=MOD_I, kernel="_fp8_logits_kernel",
                     signature={"q_ptr": f8, "k_ptr": f8, "kscale_ptr": "*fp32", "w_ptr": "*fp32",
                                "ks_ptr": "*i32", "ke_ptr": "*i32", "out_ptr": "*fp32", "S": "i32", "N": "i32",
                                "H": "i32", "KEYS_PER_SPLIT": "i32"},
                     constexprs=dict(cfg, D=128, NATIVE_FP8=native), aligned=["N", "KEYS_PER_SPLIT"],
                     num_warps=nw, num_stages=ns, tag="logits H=64", fp8_operands_direct=native), FP8_MMA[arch]))
    for next_n in ((1, 2, 4) if arch in (90, 100) else (1, 4)):
        nw, ns, cfg = _launch(ix.paged_logits_config(64, next_n, cap))
        out.append((dict(module=MOD_I, kernel="_fp8_paged_logits_kernel",
                         signature={"q_ptr": f8, "cache_ptr": f8, "cache_f32_ptr": "*fp32", "w_ptr": "*fp32",
                                    "ctx_ptr": "*i32", "bt_ptr": "*i32", "out_ptr": "*fp32", "H": "i32",
                                    "MAX_LEN": "i32", "bt_stride": "i32", "PAGES_PER_SPLIT": "i32"},
                         constexprs=dict(cfg, NEXT_N=next_n, D=128, NATIVE_FP8=native), num_warps=nw, num_stages=ns,
                         tag=f"paged logits H=64 next_n={next_n}", fp8_operands_direct=native), FP8_MMA[arch]))
    out += topk_split_specs(arch)
    nw, ns, cfg = _launch(ix.TOPK_CONFIG)
    if arch == 89:   # slowest to compile; no MMA: sm_90/100/80 cover it
        return out
    out.append((dict(module=MOD_I, kernel="_topk_kernel",
                     signature={"x_ptr": "*fp32", "ks_ptr": "*i32", "ke_ptr": "*i32", "out_ptr": "*i32", "cand_ptr": "*i32", "N": "i32",
                                "stride_x": "i32", "TOPK": "i32"},
                     constexprs=dict(cfg, TOPK_PAD=2048, SORTED=True), aligned=["stride_x", "TOPK"],
                     num_warps=nw, num_stages=ns, tag="topk 2048"), None))
    if not simple:
        return out
    out.append((dict(module=MOD_I, kernel="_indices_to_slots_kernel",
                     signature={"idx_ptr": "*i32", "bt_ptr": "*i32", "out_ptr": "*i32", "K": "i32", "MAX_PAGES": "i32",
                                "idx_stride": "i32", "bt_stride": "i32", "PAGE_SIZE": "i32"},
                     constexprs=dict(BLOCK=1024), num_warps=4, num_stages=1, tag="indices_to_slots"), None))
    return out


@pytest.mark.parametrize("arch", [90, 100, 89, 80], ids=lambda a: f"sm{a}")
def test_shipped_configs_compile(arch):
    pytest.importorskip("triton")
    check_shipped_configs(specs_for(arch), arch)
