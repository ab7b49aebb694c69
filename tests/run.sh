#!/usr/bin/env bash
# The whole test suite, set-up included, on a fresh machine: what CI runs (.ci/run calls this).
# Installs ridgeline with its test extras, the real vLLM engine (CPU build, own venv), Prometheus and
# Chromium, then runs the quick suite and the slow suites (real engine, Prometheus, soak).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
for s in .ci/setup-*.sh; do
  [ -f "$s" ] && bash "$s"
done
python3 -m pytest -q -p no:cacheprovider
python3 -m pytest -q -p no:cacheprovider --run-slow -m slow
