"""Package layout: the repo's top-level triton_kernels/ and csrc/ folders are installed *inside* the
plugin's namespace (deepseek_v32_plugin.triton_kernels, deepseek_v32_plugin._csrc) so we never
claim the top-level name `triton_kernels`, which belongs to OpenAI's package that vLLM imports.
csrc/ holds CUDA sources only (JIT-built on first use, see ops/_cuda.py); each of its folders is
listed as a package so its sources install as package data."""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
packages = find_packages(include=["deepseek_v32_plugin", "deepseek_v32_plugin.*"])
packages.append("deepseek_v32_plugin.triton_kernels")
for root, dirs, _ in os.walk(os.path.join(HERE, "csrc")):
    dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
    rel = os.path.relpath(root, os.path.join(HERE, "csrc"))
    packages.append("deepseek_v32_plugin._csrc" + ("" if rel == "." else "." + rel.replace(os.sep, ".")))

setup(
    packages=packages,
    package_dir={
        "deepseek_v32_plugin.triton_kernels": "triton_kernels",
        "deepseek_v32_plugin._csrc": "csrc",
    },
    package_data={"": ["*.cu", "*.cuh", "*.h", "*.hpp", "*.cpp", "*.md"]},
)
