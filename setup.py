"""Package layout: the repo's top-level triton_kernels/ and csrc/ folders are installed *inside* the
plugin's namespace (deepseek_v32_plugin.triton_kernels, deepseek_v32_plugin._csrc) so we never
claim the top-level name `triton_kernels`, which belongs to OpenAI's package that vLLM imports."""
from setuptools import find_packages, setup

packages = find_packages(include=["deepseek_v32_plugin", "deepseek_v32_plugin.*"])
packages += ["deepseek_v32_plugin.triton_kernels"]

setup(
    packages=packages + ["deepseek_v32_plugin._csrc"],  # csrc: sources as package data
    package_dir={
        "deepseek_v32_plugin.triton_kernels": "triton_kernels",
        "deepseek_v32_plugin._csrc": "csrc",
    },
    package_data={
        "deepseek_v32_plugin._csrc": ["**/*.cu", "**/*.cuh", "**/*.h", "**/*.hpp", "**/*.cpp", "*.cpp", "*.h"],
        "deepseek_v32_plugin": ["assets/**/*"],
    },
)
