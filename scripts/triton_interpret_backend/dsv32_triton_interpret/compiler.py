from triton.backends.compiler import BaseBackend


class InterpretBackend(BaseBackend):
    """Refuses to compile: this backend exists for TRITON_INTERPRET=1 runs only."""

    @staticmethod
    def supports_target(target) -> bool:
        return target.backend == "cpu"

    def hash(self) -> str:
        return "dsv32-triton-interpret"

    def parse_options(self, options: dict):
        raise RuntimeError("dsv32_triton_interpret compiles nothing: set TRITON_INTERPRET=1")

    def add_stages(self, stages: dict, options, language=None) -> None:
        raise RuntimeError("dsv32_triton_interpret compiles nothing: set TRITON_INTERPRET=1")

    def load_dialects(self, context) -> None:
        pass

    def get_module_map(self) -> dict:
        return {}
