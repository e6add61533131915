"""A Triton backend named "cpu" for running Triton kernels under TRITON_INTERPRET=1 only (see pyproject.toml)."""
