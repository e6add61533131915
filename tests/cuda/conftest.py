"""tests/cuda: CPU checks of the CUDA extension (compile, host headers, backend table); its GPU tests are the CUDA
sections of tests/triton/test_<family>.py."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # csrc_paths importable by plain name
    sys.path.insert(0, _HERE)
