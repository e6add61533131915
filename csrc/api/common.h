// Kernel launchers are plain C++ (raw pointers + cudaStream_t, no ATen), so every .cu under csrc/
// compiles alone with nvcc (tests/cuda/test_compile.py); only api/bindings.cpp includes torch.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>
