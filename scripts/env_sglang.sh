#!/usr/bin/env bash
# SGLang engine venv: sglang 0.5.23 on the CPU torch 2.13.0 wheel (see ../shared/v32/CPU_TESTING.md).
# sglang's own pins drag a CUDA torch 2.14 and CUDA kernel wheels, so we install a hand-picked,
# pinned dependency list and then sglang + torchvision with --no-deps. The three CPU shims
# (sgl_kernel stand-in, torchvision op schemas, SGLANG_USE_CPU_ENGINE=1) live in our package
# (deepseek_v32_plugin/engines/sglang/cpu_shims.py) and are switched on for this venv only, by a .pth
# file; a GPU user's SGLang install never gets them.
# Prints the venv path on stdout; (re)installs the plugin non-editable so tests use the installed package.
source "$(dirname "$0")/_venv.sh"
PINS="torch==2.13.0
numpy==2.4.6
orjson==3.13.0
psutil==7.2.2
pybase64==1.5.1
requests==2.34.2
triton==3.7.1
pillow==13.0.0
starlette==1.10.0
msgspec==0.22.0
pydantic==2.14.3
pyzmq==27.3.0
tqdm==4.70.1
aiohttp==3.14.5
transformers==5.19.0
tokenizers==0.23.2
dill==0.4.1
apache-tvm-ffi==0.1.11
sentencepiece==0.2.1
einops==0.8.2
compressed-tensors==0.18.0
gguf==0.19.0
openai==2.8.0
partial-json-parser==0.2.1.1.post7
uvloop==0.23.0
uvicorn==0.54.0
fastapi==0.165.0
setproctitle==1.3.8
xgrammar==0.2.7
python-multipart==0.0.34
jsonschema==4.26.0
packaging==26.3
prometheus-client==0.26.0
regex==2026.11.15
scipy==1.17.1
tiktoken==0.14.0
xxhash==4.1.0
zstandard==0.25.0
interegular==0.3.3
llguidance==1.9.1
watchfiles==1.3.0
python-dateutil==2.9.0.post0
blobfile==3.0.0
distro==1.9.0
easydict==1.14
safetensors==0.8.0
jinja2==3.1.6
ipython==9.18.1
soundfile==0.13.1
pytest==9.2.0
pytest-timeout==2.4.0
--no-deps sglang==0.5.23 torchvision==0.28.0"
if ensure_venv sglang "$PINS"; then
  # torch first so pip takes the local CPU wheel; the constraint keeps any dependency from pulling another torch.
  "$VENV/bin/pip" install -q torch==2.13.0 >&2
  printf 'torch==2.13.0+cpu\n' > "$VENV/constraints.txt"
  printf '%s\n' "$PINS" | grep -v -e '^torch==' -e '^--no-deps' > "$VENV/requirements.txt"
  "$VENV/bin/pip" install -q -c "$VENV/constraints.txt" -r "$VENV/requirements.txt" >&2
  # sglang's metadata pins CUDA-only wheels (torch 2.14, sglang-kernel, flashinfer...): skip its deps.
  "$VENV/bin/pip" install -q --no-deps sglang==0.5.23 torchvision==0.28.0 >&2
  finish_venv
fi
install_plugin
# The CPU shims, on for this venv only (every interpreter start: server, scheduler, detokenizer, TP workers).
"$VENV/bin/python" -m deepseek_v32_plugin.engines.sglang.cpu_shims --write-pth >&2
echo "$VENV"
