#!/usr/bin/env bash
# The whole test suite, set-up included, on a fresh machine: what CI runs (.ci/run calls this).
# Installs ridgeline with its test extras, the real vLLM engine (CPU build, own venv), Prometheus and
# Chromium, then runs the quick suite and the slow suites (real engine, Prometheus, soak).
set -euo pipefail
cd "$(dirname "$0")/.."

# pytest's exit 5 means "no test selected" (e.g. a -k or -m that matches none): not a failure here
pytest_suite() {
  local rc=0
  python3 -m pytest -q -p no:cacheprovider "$@" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
    return "$rc"
  fi
}

python3 -m pip install -q -e '.[test]'
for s in .ci/setup-*.sh; do
  [ -f "$s" ] && bash "$s"
done
pytest_suite
pytest_suite --run-slow -m slow
