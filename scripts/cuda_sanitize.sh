#!/usr/bin/env bash
# compute-sanitizer memcheck + racecheck (+ synccheck) over every CUDA-extension kernel on small cases.
# Needs a CUDA GPU, a CUDA torch and the plugin installed (pip install --no-deps --no-build-isolation .).
#   scripts/cuda_sanitize.sh [memcheck racecheck synccheck initcheck]
# Builds the extension first (outside the sanitizer), then runs one small call of each op per tool,
# restricted to our kernels (mangled names contain "dsv32"). Exit status: non-zero on any reported error.
set -euo pipefail
PY="${PYTHON:-python3}"
if [[ $# -gt 0 ]]; then TOOLS=("$@"); else TOOLS=(memcheck racecheck synccheck); fi
SAN="${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}"
DRIVER="$(mktemp --suffix=.py)"
trap 'rm -f "$DRIVER"' EXIT
cat > "$DRIVER" <<'PYEOF'
import torch
from deepseek_v32_plugin.ops import _cuda
from deepseek_v32_plugin.ops.fp8_moe import cuda as moe_cuda
from deepseek_v32_plugin.ops.indexer import cuda as indexer_cuda
from deepseek_v32_plugin.ops.sparse_mla import cuda as mla_cuda
from deepseek_v32_plugin.ops.fp8_quant.naive import naive_fp8_quant_act, naive_fp8_quant_weight
from deepseek_v32_plugin.ops.indexer import naive as ix
from deepseek_v32_plugin.ops.sparse_mla import naive as mla
assert _cuda.is_available(), _cuda.unavailable_reason()
torch.manual_seed(0)
d = "cuda"
# indexer: paged logits (2 seqs, ragged lengths), ragged logits, top-k (short and long rows)
cache = torch.zeros(6, 64, 132, dtype=torch.uint8, device=d)
k8, ksc = ix.naive_indexer_quant(torch.randn(200, 128, device=d))
ix.naive_indexer_cache_write(k8, ksc, cache, torch.randperm(6 * 64, device=d)[:200])
table = torch.randperm(6, device=d)[:4].int().view(2, 2)
q8, qs = ix.naive_indexer_quant(torch.randn(2, 2, 64, 128, device=d))
indexer_cuda.fp8_paged_indexer_logits(q8, cache, torch.randn(4, 64, device=d), torch.tensor([70, 3], device=d).int(), table, 120)
indexer_cuda.fp8_indexer_logits(q8.view(4, 64, 128), k8, ksc, torch.randn(4, 64, device=d),
                                 torch.tensor([0, 5, 0, 199], device=d).int(), torch.tensor([200, 100, 0, 200], device=d).int())
lg = torch.randn(3, 5000, device=d)
indexer_cuda.indexer_topk(lg, 2048, torch.tensor([0, 10, 0], device=d).int(), torch.tensor([5000, 900, 0], device=d).int())
# sparse MLA decode, fp8 and bf16 caches, h not a multiple of 16, -1 indices
for fp8 in (True, False):
    c = torch.zeros(3, 64, 656 if fp8 else 576, dtype=torch.uint8 if fp8 else torch.bfloat16, device=d)
    mla.naive_mla_cache_write(torch.randn(150, 512, device=d), torch.randn(150, 64, device=d), c, torch.arange(150, device=d))
    idx = torch.randint(-1, 150, (2, 1, 70), device=d).int()
    mla_cuda.sparse_mla_decode(torch.randn(2, 1, 20, 576, device=d).bfloat16(), c, idx, 0.05)
# sparse MLA prefill: the default kernel (sm_90a wgmma on Hopper) and the forced sm80 one; h not a multiple
# of 16, -1 indices, topk not a multiple of 64, topk_length 0 / partial / full
import os
kvp = torch.randn(150, 1, 576, device=d).bfloat16()
idx = torch.randint(-1, 150, (3, 1, 70), device=d).int()
for path in ("default", "sm80"):
    if path == "sm80":
        os.environ["DSV32_CUDA_MLA"] = "sm80"
    mla_cuda.sparse_mla_prefill(torch.randn(3, 20, 576, device=d).bfloat16(), kvp, idx, 0.05,
                                topk_length=torch.tensor([70, 5, 0], device=d).int())
os.environ.pop("DSV32_CUDA_MLA")
# grouped GEMM: contiguous (unaligned ids, N tail) and masked, both the default and the sm80 path
w = torch.randn(3, 200, 256, device=d)
b = [naive_fp8_quant_weight(w[i]) for i in range(3)]
b8, bs = torch.stack([x for x, _ in b]), torch.stack([s for _, s in b])
a8, asc = naive_fp8_quant_act(torch.randn(70, 256, device=d))
moe_cuda.fp8_grouped_gemm_nt_contiguous(a8, asc, b8, bs, torch.randint(-1, 3, (70,), device=d).int())
a8m, ascm = naive_fp8_quant_act(torch.randn(3, 70, 256, device=d))
moe_cuda.fp8_grouped_gemm_nt_masked(a8m, ascm, b8, bs, torch.tensor([0, 5, 70], device=d).int())
os.environ["DSV32_CUDA_GEMM"] = "sm80"
moe_cuda.fp8_grouped_gemm_nt_contiguous(a8, asc, b8, bs, torch.randint(-1, 3, (70,), device=d).int())
moe_cuda.fp8_grouped_gemm_nt_masked(a8m, ascm, b8, bs, torch.tensor([0, 5, 70], device=d).int())
torch.cuda.synchronize()
print("driver ok")
PYEOF
echo "[sanitize] building the extension"
"$PY" -c "from deepseek_v32_plugin.ops import _cuda; assert _cuda.is_available(), _cuda.unavailable_reason()"
rc=0
for tool in "${TOOLS[@]}"; do
  echo "[sanitize] $tool"
  if ! "$SAN" --tool "$tool" --error-exitcode 17 --kernel-name kns=dsv32 --print-limit 20 \
      "$PY" "$DRIVER"; then
    echo "[sanitize] $tool: FAILED"; rc=1
  fi
done
exit $rc
