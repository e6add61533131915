import torch
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase


class InterpretDriver(DriverBase):
    """The CPU as the active Triton device; kernels run in Triton's interpreter (TRITON_INTERPRET=1)."""

    @classmethod
    def is_active(cls) -> bool:
        return True

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise NotImplementedError("dsv32_triton_interpret compiles nothing: set TRITON_INTERPRET=1")

    def get_current_target(self):
        return GPUTarget("cpu", 0, 0)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_benchmarker(self):
        from triton.testing import do_bench
        return do_bench

    def get_current_device(self) -> int:
        return 0

    def set_current_device(self, device) -> None:
        pass

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_device_interface(self):
        return torch.cpu
