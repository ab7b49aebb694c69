#!/usr/bin/env bash
# Here, after a device call: unpack the run it brought back (run-NAME.tgz.partNN in the call's
# files folder) into a work folder outside the repository, and copy the small, reviewable files
# into docs/results/h100-llama3-8b/ (report, summary, per-step table, manifest, charts, the lines
# of each server log that say what really ran).
#   bash benchmarks/h100/collect.sh FILES_AT [NAME] [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
files=${1:?folder holding the files the call brought back}; name=${2:-all}; work=${3:-/work/h100-runs}
dest=docs/results/h100-llama3-8b
ls "$files"/run-"$name".tgz.part* >/dev/null 2>&1 || { echo "collect: no run-$name.tgz.part* in $files"; exit 1; }
mkdir -p "$work" "$dest"
top=$(cat "$files"/run-"$name".tgz.part* | tar tzf - | awk -F/ 'NR == 1 {print $1}')  # awk reads it all: no SIGPIPE
rm -rf "${work:?}/$top"
cat "$files"/run-"$name".tgz.part* | tar xzf - -C "$work"
run="$work/$top"
echo "collect: $run ($(du -sh "$run" | cut -f1))"
for f in manifest.json summary.json steps.csv report.md report.html plan.yaml energy.csv; do
  [ -f "$run/$f" ] && cp "$run/$f" "$dest/"
done
if [ -d "$run/charts" ]; then rm -rf "$dest/charts"; cp -r "$run/charts" "$dest/charts"; fi
: > "$dest/server-facts.txt"
for log in "$run"/logs/*.log; do
  [ -f "$log" ] || continue
  { echo "== $(basename "$log")"
    grep -E "Model loading took|quantization=|Using [A-Za-z0-9]+ for [A-Za-z]+LinearMethod|KV cache size|Maximum concurrency|kv_cache_dtype|attention backend|Error|Traceback" "$log" | cut -c1-400 | head -n 40
  } >> "$dest/server-facts.txt"
done
echo "collect: copied into $dest:"; ls "$dest"
