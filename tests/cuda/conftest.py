"""tests/cuda: compile-only checks (CPU) and GPU numerical tests of the CUDA extension."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # csrc_paths importable by plain name
    sys.path.insert(0, _HERE)
