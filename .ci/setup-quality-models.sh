#!/usr/bin/env bash
# Real weights for the quality proof: a small Llama trained here on the Python standard library's
# own text, its llm-compressor INT4 variants (GPTQ, AWQ, round-to-nearest), a damaged checkpoint,
# their bf16-dequantized twins, and eval sets from held-out modules (docs/quality.md).
#
# Idempotent and cached: the output directory is named by a content hash of the recipe
# (tests/support/quality_build.py, quality_quantize.py, the pins, the interpreter's version), so a
# second run finds it and does nothing. $RIDGELINE_QUALITY_MODELS overrides the directory;
# $RIDGELINE_QUANT_VENV the quantization venv (its pins clash with nothing of ridgeline's this way).
# RIDGELINE_QUALITY_MODELS_SKIP=1 skips the whole step (tests then skip with a message).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${RIDGELINE_QUALITY_MODELS_SKIP:-}" = "1" ]; then
  echo "quality models: skipped (RIDGELINE_QUALITY_MODELS_SKIP=1)"
  exit 0
fi
RECIPE=tests/support/quality_build.py
PY="${PYTHON:-python3}"
VENV="${RIDGELINE_QUANT_VENV:-$HOME/.cache/ridgeline/quant-venv}"
OUT="${RIDGELINE_QUALITY_MODELS:-$HOME/.cache/ridgeline/quality-models/$("$PY" "$RECIPE" hash)}"

if [ -f "$OUT/variants.json" ] && [ -f "$OUT/base/model.safetensors" ] && [ -f "$OUT/evals/task.jsonl" ]; then
  echo "quality models: already in $OUT"
  exit 0
fi

read -r -a PINS <<< "$("$PY" "$RECIPE" pins)"
if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llmcompressor, torch" >/dev/null 2>&1; }; then
  echo "quality models: making the quantization venv $VENV (${PINS[*]})"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first and alone: pip takes the local CPU wheel; llm-compressor then finds it satisfied
  "$VENV/bin/python" -m pip install -q "${PINS[0]}"
  "$VENV/bin/python" -m pip install -q "${PINS[@]}"
  # the registry's torchvision is a CUDA build that breaks `import transformers` beside a CPU torch
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
fi

mkdir -p "$OUT"
# PASSIVE: on a shared, oversubscribed host OpenMP threads that spin at barriers starve each other
# (seen here: 10x slower); sleeping instead changes no result
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
SECONDS=0
if [ ! -f "$OUT/base/model.safetensors" ] || [ ! -f "$OUT/evals/task.jsonl" ]; then
  nice -n 10 "$VENV/bin/python" "$RECIPE" "$OUT" base
fi
BASE_S=$SECONDS
nice -n 10 "$VENV/bin/python" "$RECIPE" "$OUT" variants
echo "quality models: built in $OUT (base ${BASE_S}s, variants $((SECONDS - BASE_S))s)"
