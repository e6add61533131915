"""Compile the shipped sparse-MLA and grouped-FP8-MoE Triton configs for real GPU targets, without a GPU.

For sm_90a, sm_100a, sm_89, sm_80 and sm_120 every kernel must compile with no register spills (no
STL/LDL in the SASS) and shared memory within the limit. The grouped GEMM must use the target's FP8
tensor-core instruction (QGMMA = FP8 wgmma on sm_90a, UTCQMMA = tcgen05 FP8 on sm_100a, QMMA on sm_89 and
sm_120; HMMA on sm_80, where e4m3 bytes are decoded to fp16) and, on sm_89+, take e4m3 as fp8e4nv (no
u8 -> f8 bitcast in TTGIR; on sm_90a / sm_100a no ttg.local_load: shared memory feeds the MMA directly);
the attention kernel its bf16 one (HGMMA / UTCHMMA / HMMA), with its tensor-core work per key block (from the PTX) = the ideal
on sm_90a at 64 heads (no warpgroup computes another's scores).
A kernel that LLVM reduces to a bare `trap` (seen when accumulators overflow Blackwell's tensor memory)
has no MMA and fails the check. One child process per target compiles everything (tests/compile_util.py).
"""
from __future__ import annotations

import pytest

from compile_util import check_shipped_configs

MOD_A = "deepseek_v32_plugin.triton_kernels.sparse_mla"
MOD_M = "deepseek_v32_plugin.triton_kernels.fp8_moe"
FP8_MMA = {90: "QGMMA", 100: "UTCQMMA", 89: "QMMA", 80: "HMMA", 120: "QMMA"}
BF16_MMA = {90: "HGMMA", 100: "UTCHMMA", 89: "HMMA", 80: "HMMA", 120: "HMMA"}


def _split(cfg: dict):
    cfg = dict(cfg)
    return cfg.pop("num_warps"), cfg.pop("num_stages"), cfg


def specs_for(arch: int) -> list[tuple[dict, str | None]]:
    from deepseek_v32_plugin.triton_kernels import fp8_moe as fm
    from deepseek_v32_plugin.triton_kernels import sparse_mla as sm
    cap = (arch // 10, arch % 10)
    native = arch >= 89
    out = []

    # ---- sparse MLA attention: bf16 cache / prefill kv, fp8_ds_mla cache (native or byte-decoded), 128 heads
    # and h <= 16 (e.g. 128 heads over TP8: heads padded to 16, not 64)
    for fp8, h in ((False, 128), (True, 128), (True, 16)):
        nw, ns, c = _split(sm.attn_config(cap, fp8, h))
        sig = {"q_ptr": "*bf16", "stride_q_t": "i64", "stride_q_h": "i32",
               "kv_ptr": "*u8" if fp8 else "*bf16", "kv_scale_ptr": "*fp32" if fp8 else "*bf16",
               "kv_rope_ptr": "*bf16", "stride_kv_row": "i32", "n_rows": "i32",
               "idx_ptr": "*i32", "stride_idx_t": "i32", "topk": "i32", "split_len": "i32",
               "len_ptr": "*i32", "o_ptr": "*bf16", "stride_o_t": "i32", "stride_o_s": "i32", "stride_o_h": "i32",
               "lse_ptr": "*fp32", "stride_l_t": "i32", "stride_l_s": "i32", "H": "i32", "qk_scale_log2": "fp32"}
        # tensor-core work per K step: S = [BLOCK_H, BLOCK_T] x 576 and PV = [BLOCK_H, 512 / DV_SPLIT] x BLOCK_T
        ideal = c["BLOCK_H"] * c["BLOCK_T"] * (576 + 512 // c["DV_SPLIT"])
        # sm_90a at 64 heads: the ideal (issue 14 fix 4: S split over the warpgroups). mma.sync tiles (32 and 16
        # heads): Triton lays S out on [1, 8] warps, 4 of them repeating the others' columns: measured 1.53x
        work = 1.0 if c["BLOCK_H"] >= 64 else 1.53
        out.append((dict(module=MOD_A, kernel="_sparse_mla_attn_kernel", signature=sig,
                         constexprs=dict(c, KV_FP8=fp8, FP8_NATIVE=fp8 and native, DOT_FP16=False, HAS_LEN=True),
                         aligned=["stride_q_t", "stride_q_h", "stride_kv_row", "stride_idx_t", "stride_o_t",
                                  "stride_o_s", "stride_o_h"],
                         num_warps=nw, num_stages=ns,
                         tag=f"mla attn {'fp8' if fp8 else 'bf16'} BLOCK_H={c['BLOCK_H']}",
                         ideal_macs=ideal, max_mma_work=work),
                    BF16_MMA[arch] if c["BLOCK_H"] >= 64 else BF16_MMA[80]))
    out.append((dict(module=MOD_A, kernel="_combine_kernel",
                     signature={"op_ptr": "*fp32", "lp_ptr": "*fp32", "out_ptr": "*bf16", "lse_ptr": "*fp32",
                                "H": "i32", "n_splits": "i32"},
                     constexprs=dict(BLOCK_S=16, BLOCK_D=128), num_warps=4, num_stages=1, tag="mla combine"), None))
    for fp8 in (False, True):
        out.append((dict(module=MOD_A, kernel="_mla_cache_write_kernel",
                         signature={"c_ptr": "*bf16", "stride_c": "i32", "pe_ptr": "*bf16", "stride_pe": "i32",
                                    "slot_ptr": "*i64", "cache_ptr": "*u8" if fp8 else "*bf16",
                                    "cache_scale_ptr": "*fp32" if fp8 else "*bf16", "cache_rope_ptr": "*bf16",
                                    "stride_row": "i32", "n_rows": "i32"},
                         constexprs=dict(KV_FP8=fp8, FP8_NATIVE=fp8 and native), num_warps=2, num_stages=1,
                         tag=f"mla cache write {'fp8' if fp8 else 'bf16'}"), None))
        out.append((dict(module=MOD_A, kernel="_mla_cache_gather_kernel",
                         signature={"slot_ptr": "*i32", "n_slots": "i32", "kv_ptr": "*u8" if fp8 else "*bf16",
                                    "kv_scale_ptr": "*fp32" if fp8 else "*bf16", "kv_rope_ptr": "*bf16",
                                    "stride_row": "i32", "n_rows": "i32", "out_ptr": "*fp32"},
                         constexprs=dict(KV_FP8=fp8, FP8_NATIVE=fp8 and native, BLOCK_T=16), num_warps=4,
                         num_stages=1, tag=f"mla cache gather {'fp8' if fp8 else 'bf16'}"), None))

    # ---- grouped FP8 GEMMs (contiguous, masked) + SiLU-and-mul quant (with the padded layout's row mask)
    gcfg = fm.gemm_config_for(cap)
    bm = gcfg["BLOCK_M"]
    nw, ns, cfg = _split(gcfg)
    f8 = "*fp8e4nv" if native else "*u8"
    sig_c = {"a_ptr": f8, "stride_am": "i32", "as_ptr": "*fp32", "stride_asm": "i32",
             "b_ptr": f8, "stride_bg": "i64", "stride_bn": "i32", "bs_ptr": "*fp32", "stride_bsg": "i32",
             "stride_bsn": "i32", "mi_ptr": "*i32", "c_ptr": "*bf16", "stride_cm": "i32",
             "M": "i32", "N": "i32", "K": "i32", "G": "i32"}
    al = ["stride_am", "stride_bg", "stride_bn", "stride_cm", "K"]
    out.append((dict(module=MOD_M, kernel="_grouped_gemm_contiguous_kernel", signature=sig_c,
                     constexprs=dict(cfg, FP8_NATIVE=native), aligned=al,
                     num_warps=nw, num_stages=ns, tag="gemm contiguous", fp8_operands_direct=native), FP8_MMA[arch]))
    sig_m = {"a_ptr": f8, "stride_ag": "i64", "stride_am": "i32", "as_ptr": "*fp32", "stride_asg": "i32",
             "stride_asm": "i32", "b_ptr": f8, "stride_bg": "i64", "stride_bn": "i32", "bs_ptr": "*fp32",
             "stride_bsg": "i32", "stride_bsn": "i32", "mm_ptr": "*i32", "c_ptr": "*bf16", "stride_cg": "i64",
             "stride_cm": "i32", "M": "i32", "N": "i32", "K": "i32"}
    out.append((dict(module=MOD_M, kernel="_grouped_gemm_masked_kernel", signature=sig_m,
                     constexprs=dict(cfg, FP8_NATIVE=native),
                     aligned=["stride_ag", "stride_am", "stride_bg", "stride_bn", "stride_cg", "stride_cm", "K"],
                     num_warps=nw, num_stages=ns, tag="gemm masked", fp8_operands_direct=native), FP8_MMA[arch]))
    out.append((dict(module=MOD_M, kernel="_silu_mul_quant_kernel",
                     signature={"x_ptr": "*bf16", "stride_xm": "i32", "q_ptr": "*u8", "stride_qm": "i32",
                                "s_ptr": "*fp32", "stride_sm": "i32", "mi_ptr": "*i32", "M": "i32", "N": "i32"},
                     constexprs=dict(BLOCK_M=fm.SILU_BLOCK_M, FP8_NATIVE=native, HAS_ROWS=True),
                     aligned=["stride_xm", "stride_qm", "N"],
                     num_warps=4, num_stages=1, tag="silu_and_mul quant"), None))
    return out


@pytest.mark.parametrize("arch", [90, 100, 89, 80, 120], ids=lambda a: f"sm{a}")
def test_shipped_configs_compile(arch):
    pytest.importorskip("triton")
    check_shipped_configs(specs_for(arch), arch)


def test_mma_duplication_parser():
    """compile_util.mma_duplication on TTGIR shaped like Triton's: [8, 1] warps on a 64-row dot = x2."""
    from compile_util import mma_duplication
    ttgir = ("#mma = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [8, 1], instrShape = [16, 16, 16]}>\n"
             "#mma1 = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 2], instrShape = [16, 64, 16]}>\n"
             "%s = ttng.warp_group_dot %a, %b, %c : !ttg.memdesc<64x64xbf16> * !ttg.memdesc<64x32xbf16> -> tensor<64x32xf32, #mma>\n"
             "%o = ttng.warp_group_dot %p, %k, %d : tensor<64x32xbf16> * !ttg.memdesc<32x128xbf16> -> tensor<64x128xf32, #mma1>\n")
    assert mma_duplication(ttgir) == 2
    assert mma_duplication(ttgir.replace("[8, 1]", "[4, 1]")) == 1


def test_mma_macs_parser():
    """compile_util.mma_macs: a wgmma runs once per warpgroup, an mma.sync once per warp; tcgen05 is not counted."""
    from compile_util import mma_macs
    ptx = ("wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {...};\n" * 3
           + "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {...};\n")
    assert mma_macs(ptx, 8) == 2 * (3 * 64 * 16 * 16 + 64 * 64 * 16)
    assert mma_macs("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {...};\n", 8) == 8 * 16 * 8 * 16
    assert mma_macs("tcgen05.mma.cta_group::1.kind::f16 [...];\n", 8) is None
