"""Shims that let SGLang 0.5.23 run on a CPU-only torch (see shared CPU_TESTING.md).

SGLang's wheel is built for CUDA: its CPU path still imports ``sgl_kernel`` (no CPU build on PyPI),
PyPI's torchvision ``_C`` links a CUDA torch (so its ``torchvision::nms``/``qnms`` op schemas never get
defined and ``torchvision._meta_registrations`` fails at import), and the CPU platform is chosen only
with ``SGLANG_USE_CPU_ENGINE=1``.

``install()`` is idempotent and does nothing that a real GPU install would notice:
- ``sgl_kernel``: a stand-in package is served by a meta-path finder placed *last* on ``sys.meta_path``,
  so a real ``sgl_kernel`` (any GPU install) is always found first. The CPU ops of SGLang's EAGLE path are
  torch functions (cpu_spec_ops.py); any other top-level name is a function that raises
  ``NotImplementedError`` naming itself when called (SGLang imports some unconditionally); it has no
  submodules, so SGLang's ``try: from sgl_kernel.<sub> import X / except ImportError`` fallbacks take their
  CPU branch.
- torchvision: the two op schemas are defined only when torch is a CPU build and torchvision's ``_C``
  has not registered them.
- ``SGLANG_USE_CPU_ENGINE`` defaults to ``1`` only when torch has neither CUDA nor ROCm.

It is applied at interpreter start by a ``.pth`` file that ``scripts/env_sglang.sh`` writes into the
CPU venv only (``python -m deepseek_v32_plugin.engines.sglang.cpu_shims --write-pth``), so every SGLang
process (server, scheduler, detokenizer, TP workers) gets it before SGLang's own imports run.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import sys
import types

_INSTALLED = False
_STUB_ROOT = "sgl_kernel"
PTH_NAME = "deepseek_v32_sglang_cpu_shims.pth"


def _torch_is_cpu_build() -> bool:
    """True for a CPU-only torch wheel, decided from its version string without importing torch."""
    try:
        ver = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    if "+cpu" in ver:
        return True
    if "torch" in sys.modules:
        t = sys.modules["torch"]
        return getattr(t.version, "cuda", None) is None and getattr(t.version, "hip", None) is None
    return False


class _StubModule(types.ModuleType):
    """Stand-in ``sgl_kernel``: the CPU ops of SGLang's EAGLE path in torch (cpu_spec_ops.py); any other
    top-level name is a function that refuses to run."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        from .cpu_spec_ops import OPS

        if name in OPS:
            return OPS[name]

        def _missing(*args, **kwargs):
            raise NotImplementedError(
                f"sgl_kernel.{name} is a compiled SGLang kernel and sgl_kernel is not installed (CPU stand-in "
                "from deepseek_v32_plugin.engines.sglang.cpu_shims): this path needs a GPU build of SGLang"
            )

        _missing.__name__ = _missing.__qualname__ = name
        return _missing


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        mod = _StubModule(spec.name, "CPU stand-in for sgl_kernel (deepseek_v32_plugin cpu_shims)")
        mod.__path__ = []  # a package with no submodules: `from sgl_kernel.x import y` raises ImportError
        mod.__version__ = "0.0.0+cpu-stub"
        mod.DSV32_CPU_STUB = True
        return mod

    def exec_module(self, module):
        return None


class _StubFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == _STUB_ROOT:
            return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)
        return None


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Defines torchvision's nms/qnms schemas right before ``torchvision`` itself is imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            _define_torchvision_schemas()
        return None


def _define_torchvision_schemas() -> None:
    import torch

    if torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None:
        return
    for name in ("nms", "qnms"):
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
            continue  # already defined (a matching torchvision _C loaded)
        except RuntimeError:
            pass
        lib = torch.library.Library("torchvision", "FRAGMENT")
        _LIBS.append(lib)  # keep alive: dropping the Library object removes the schema
        if name == "nms":
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        else:
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


_LIBS: list = []


def install() -> None:
    """Apply the CPU shims if this interpreter runs a CPU-only torch; no-op otherwise or when repeated."""
    global _INSTALLED
    if _INSTALLED or not _torch_is_cpu_build():
        return
    _INSTALLED = True
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    sys.meta_path.append(_StubFinder())  # last: a real sgl_kernel always wins
    if "torchvision" in sys.modules:
        _define_torchvision_schemas()
    else:
        sys.meta_path.insert(0, _TorchvisionHook())


def write_pth(site_dir: str) -> str:
    """Write the .pth file that calls install() at every interpreter start of this venv."""
    path = os.path.join(site_dir, PTH_NAME)
    with open(path, "w") as f:
        f.write(
            "import os; os.environ.get('DSV32_NO_CPU_SHIMS') or "
            "__import__('deepseek_v32_plugin.engines.sglang.cpu_shims', fromlist=['install']).install()\n"
        )
    return path


if __name__ == "__main__":
    import argparse
    import sysconfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-pth", action="store_true", help="write the .pth into this interpreter's site-packages")
    a = ap.parse_args()
    if a.write_pth:
        print(write_pth(sysconfig.get_paths()["purelib"]))
