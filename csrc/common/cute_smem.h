// Offsets into CuTe GMMA shared-memory layouts for hand-written loaders (cp.async / st.shared of 16-byte
// chunks). GMMA layouts carry their swizzle in *byte* units, applied to the address by CuTe's
// swizzle_ptr; calling such a layout directly on coordinates swizzles element offsets, which is right for
// 1-byte types only. `tile_offset` recasts the swizzle to element units first (position-independent
// form), so offset == &make_tensor(make_smem_ptr(base), L{})(coords) - base for a 1024-byte-aligned base.
// tests/cuda/test_host_headers.py (cute_layouts_main.cu) checks this for every layout the kernels use.
#pragma once

#include <cute/tensor.hpp>

namespace dsv32 {

template <class Layout, class... Coords>
CUTE_HOST_DEVICE constexpr int tile_offset(Coords... coords) {
  return int(cute::as_position_independent_swizzle_layout(Layout{})(coords...));
}

}  // namespace dsv32
