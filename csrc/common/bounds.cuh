// Device-side bound checks for index tensors whose values only the device knows (slots, positions,
// block-table entries). A kernel treats an out-of-range entry as invalid (-1: skipped write, masked key,
// -1 slot, -inf logits), so a bad value never becomes an illegal address; when `err` is non-null it also
// records the first offence: err[0] = code (below), err[1] = the offending value (clamped to int32).
// The wrappers (ops/<family>/cuda.py, flag from ops/_cuda.py) pass `err` only with DSV32_CUDA_CHECK_BOUNDS=1
// and then raise an IndexError naming the tensor (that check synchronizes, so it is a debug switch: the
// decode path stays sync-free without it).
#pragma once

#include <stdint.h>

namespace dsv32 {

// Codes: keep in sync with deepseek_v32_plugin/ops/_cuda.py BOUNDS_ERRORS.
enum OobCode : int32_t {
  kOobSlotMapping = 1,  // slot_mapping entry >= cache slots (pages * 64)
  kOobSlots = 2,        // indexer_cache_gather: slots entry < 0 or >= cache slots
  kOobIndices = 3,      // sparse_mla_decode: indices entry >= cache slots
  kOobPositions = 4,    // indices_to_slots: position // page >= block_table columns
  kOobBlockTable = 5,   // a block_table entry < 0 or >= cache pages
};

__device__ __forceinline__ void report_oob(int32_t* err, int32_t code, int64_t value) {
  if (err != nullptr && atomicCAS(err, 0, code) == 0)
    err[1] = int32_t(value > INT32_MAX ? INT32_MAX : (value < INT32_MIN ? INT32_MIN : value));
}

}  // namespace dsv32
