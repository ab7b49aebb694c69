#!/usr/bin/env bash
# On the H100 host, once stage.sh has every carried folder in /tmp/stage: reassemble the vLLM wheel,
# check every wheel's sha256, install all of them into /tmp/site (no index, no dependencies: the set
# is complete and the host's PyTorch stays), make the dummy model directories in /tmp/models, and run
# the preflight (imports, and whether GPTQ will really be INT4). Idempotent: /tmp/site/.ok marks a
# finished install. Afterwards: export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
#   bash benchmarks/h100/install.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
H=benchmarks/h100
STAGE=${STAGE:-/tmp/stage}
SITE=${SITE:-/tmp/site}
MODELS=${MODELS:-/tmp/models}
t0=$(date +%s)

if [ ! -f "$SITE/.ok" ]; then
  missing=$(grep -v '^#' "$H/carry.txt" | while read -r d f _; do [ -f "$STAGE/$f" ] || echo "$d"; done | sort -u | tr '\n' ' ')
  if [ -n "$missing" ]; then
    echo "install: folders not staged yet: $missing(send each with a call that runs stage.sh)"; exit 1
  fi
  if grep -q ' site\.tar\.xz\.part' "$H/carry.txt"; then
    # pack_site.py: an installed folder, xz-compressed; pieces were checked when staged
    parts=$(grep -v '^#' "$H/carry.txt" | awk '{print $2}')  # in carry order: part0, part1, ...
    want=$(awk '$2 == "site.tar.xz" {print $1}' "$H/wheels.sha256")
    rm -rf "$SITE" /tmp/h100site
    if command -v xz >/dev/null; then
      (cd "$STAGE" && cat $parts) | tee >(sha256sum | cut -d' ' -f1 > /tmp/site.sha) | xz -d -T0 | tar -x -C /tmp
    else
      (cd "$STAGE" && cat $parts) | tee >(sha256sum | cut -d' ' -f1 > /tmp/site.sha) |
        python3 -c "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp')"
    fi
    sleep 1
    if [ "$(cat /tmp/site.sha)" != "$want" ]; then
      echo "install: site.tar.xz sha256 mismatch ($(cat /tmp/site.sha) != $want)"; rm -rf /tmp/h100site; exit 1
    fi
    mv /tmp/h100site "$SITE"
    touch "$SITE/.ok"
    echo "install: unpacked $(ls "$SITE" | wc -l) entries into $SITE after $(( $(date +%s) - t0 ))s"
  fi
fi

if [ ! -f "$SITE/.ok" ]; then
  vw=$(awk '$2 ~ /^vllm-.*\.whl$/ {print $2}' "$H/wheels.sha256")
  if [ ! -f "$STAGE/$vw" ]; then
    parts=$(grep -v '^#' "$H/carry.txt" | awk -v w="$vw" 'index($2, w ".part") == 1 {print $2}')
    (cd "$STAGE" && cat $parts > "$vw.tmp" && mv "$vw.tmp" "$vw")
  fi
  # every wheel, the reassembled vLLM one included (the pieces were checked when staged)
  if ! (cd "$STAGE" && grep -E '  [^ ]+\.whl$' "$REPO/$H/wheels.sha256" | sha256sum -c --quiet); then
    echo "install: sha256 mismatch (above); the wheel set is not the one packed"; rm -f "$STAGE/$vw"; exit 1
  fi
  rm -rf "$SITE"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$SITE" "$STAGE"/*.whl
  touch "$SITE/.ok"
  rm -f "$STAGE/$vw"  # the pieces stay; the whole wheel is 266 MiB of /tmp
  echo "install: $(ls "$SITE" | wc -l) entries in $SITE after $(( $(date +%s) - t0 ))s"
else
  echo "install: $SITE already installed"
fi

export PYTHONPATH=$SITE:$REPO PATH=$SITE/bin:$PATH
[ -f "$MODELS/gptq/config.json" ] || python3 "$H/make_models.py" "$MODELS"
# PREFLIGHT=0 skips the import check (the servers' own start shows a missing module within seconds)
[ "${PREFLIGHT:-1}" = 0 ] && { echo "install: ready after $(( $(date +%s) - t0 ))s (no preflight)"; exit 0; }
rc=0; python3 "$H/preflight.py" --gptq-model "$MODELS/gptq" || rc=$?
[ $rc -eq 1 ] && exit 1
[ $rc -eq 2 ] && echo "install: WARNING the GPTQ variant would not be INT4 (see above); the others can run"
echo "install: ready after $(( $(date +%s) - t0 ))s"
