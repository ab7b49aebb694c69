#!/usr/bin/env bash
# On the H100 host: copy whichever carried folders (.h100c0 .. .h100c7) arrived with this call into
# /tmp/stage, check each new file's sha256 against wheels.sha256, and say which folders are still
# to come. Safe to run in every call: files already staged are not copied again.
#   bash benchmarks/h100/stage.sh
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
H=benchmarks/h100
STAGE=${STAGE:-/tmp/stage}
mkdir -p "$STAGE"

new=()
for d in $(grep -v '^#' "$H/carry.txt" | cut -d' ' -f1 | sort -u); do
  [ -d "$d" ] || continue
  n_new=0
  for f in "$d"/*; do
    [ -f "$f" ] || continue
    b=$(basename "$f")
    if [ ! -f "$STAGE/$b" ]; then
      cp "$f" "$STAGE/$b.tmp" && mv "$STAGE/$b.tmp" "$STAGE/$b" && new+=("$b") && n_new=$((n_new + 1))
    fi
  done
  echo "stage: $d arrived ($n_new new files)"
done

bad=0
if [ ${#new[@]} -gt 0 ]; then
  for b in "${new[@]}"; do
    want=$(awk -v n="$b" '$2 == n {print $1}' "$H/wheels.sha256")
    if [ -z "$want" ]; then
      echo "stage: $b is not in $H/wheels.sha256 (a stale folder?)"; rm -f "$STAGE/$b"; bad=1; continue
    fi
    got=$(sha256sum "$STAGE/$b" | cut -d' ' -f1)
    if [ "$got" != "$want" ]; then
      echo "stage: $b sha256 mismatch (got $got, want $want): removed, send its folder again"
      rm -f "$STAGE/$b"; bad=1
    fi
  done
fi

missing=$(grep -v '^#' "$H/carry.txt" | while read -r d f _; do [ -f "$STAGE/$f" ] || echo "$d"; done | sort -u | tr '\n' ' ')
echo "stage: $(ls "$STAGE" | wc -l) files, $(du -sh "$STAGE" | cut -f1) in $STAGE; still to come: ${missing:-none}"
df -h /tmp | tail -1
exit $bad
