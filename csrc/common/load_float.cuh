// One element of an fp32 / bf16 / fp16 tensor as fp32, the dtype chosen at run time by `kind` (the values
// of api/fp8_quant.h FloatKind: 0 fp32, 1 bf16, 2 fp16; the bindings' float_kind). For the cache-write
// kernels, where a per-element branch costs nothing next to the store; fp8_quant.cu dispatches at compile time.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace dsv32 {

__device__ __forceinline__ float load_any(const void* p, int kind, int64_t i) {
  if (kind == 1) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  if (kind == 2) return __half2float(static_cast<const __half*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

}  // namespace dsv32
