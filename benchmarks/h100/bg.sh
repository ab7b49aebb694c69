#!/usr/bin/env bash
# Run a ridgeline plan on the H100 host in the background, across device calls.
#
# A device command lasts at most 10 minutes; the whole sweep takes longer. `start` launches the run
# in its own process session (it outlives the call while the machine stays held: the next call
# must come within the 30 s the machine idles), `wait` follows it for up to N seconds and then packs
# what has been measured into $OUT, so every call brings back the results so far.
#
#   bash benchmarks/h100/bg.sh start PLAN [NAME]     launch (no-op when NAME already runs)
#   bash benchmarks/h100/bg.sh resume ARCHIVE [NAME]  unpack a run brought back earlier and continue it
#   bash benchmarks/h100/bg.sh wait SECONDS [NAME]   follow, then pack
#   bash benchmarks/h100/bg.sh pack [NAME]           results so far -> $OUT/run-NAME.tgz.partNN
#   bash benchmarks/h100/bg.sh fg SECONDS PLAN [NAME] foreground run or resume, SIGINT after SECONDS, pack
#   bash benchmarks/h100/bg.sh stop [NAME]           interrupt (ridgeline stops the server, writes the report)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
REPO=$PWD
H=benchmarks/h100
RUNS=${RUNS:-/tmp/runs}
OUT=${OUT:-/tmp/out}
SITE=${SITE:-/tmp/site}
cmd=${1:-}; shift || true
mkdir -p "$RUNS" "$OUT"

env_setup() {
  export PYTHONPATH=$SITE:$REPO PATH=$SITE/bin:$PATH HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 PYTHONUNBUFFERED=1
}

alive() { [ -f "$RUNS/$1.pid" ] && kill -0 "$(cat "$RUNS/$1.pid")" 2>/dev/null; }

launch() {  # NAME, then the arguments of `ridgeline run`
  local name=$1; shift
  env_setup
  setsid nohup python3 -m loadtest.cli run "$@" --quiet >> "$RUNS/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUNS/$name.pid"
  echo "bg: $name started (pid $(cat "$RUNS/$name.pid")): ridgeline run $*"
}

case "$cmd" in
  start)
    plan=${1:?plan file}; name=${2:-all}
    if alive "$name"; then echo "bg: $name already running (pid $(cat "$RUNS/$name.pid"))"; exit 0; fi
    [ -f "$SITE/.ok" ] || { echo "bg: $SITE is not installed (run install.sh first)"; exit 1; }
    launch "$name" "$plan" --out "$RUNS/$name"
    ;;
  resume)
    archive=${1:?archive (a run-NAME.tgz, or the first of its .partNN pieces)}; name=${2:-all}
    if alive "$name"; then echo "bg: $name already running"; exit 0; fi
    mkdir -p "$RUNS/$name"
    case "$archive" in
      *.part00) cat "${archive%00}"?? | tar xzf - -C "$RUNS/$name" ;;
      *) tar xzf "$archive" -C "$RUNS/$name" ;;
    esac
    run=$(ls -td "$RUNS/$name"/*/ 2>/dev/null | head -1)
    [ -n "$run" ] || { echo "bg: no run directory in $archive"; exit 1; }
    launch "$name" --resume "${run%/}"
    ;;
  wait)
    secs=${1:?seconds}; name=${2:-all}
    t_end=$(( $(date +%s) + secs )); last=0
    while alive "$name" && [ "$(date +%s)" -lt "$t_end" ]; do
      if [ $(( $(date +%s) - last )) -ge 60 ]; then
        last=$(date +%s); echo "--- $(date -u +%H:%M:%S) ridgeline log tail:"; tail -n 3 "$RUNS/$name.log" | cut -c1-300
      fi
      sleep 5
    done
    if alive "$name"; then echo "bg: $name still running after ${secs}s"; else echo "bg: $name finished"; fi
    env_setup; python3 "$H/progress.py" "$RUNS/$name"
    bash "$0" pack "$name"
    ;;
  pack)
    name=${1:-all}
    run=$(ls -td "$RUNS/$name"/*/ 2>/dev/null | head -1)
    [ -n "$run" ] || { echo "bg: nothing to pack under $RUNS/$name"; exit 0; }
    run=${run%/}
    tmp=$(mktemp -d)
    cp -r "$run" "$tmp/"
    # server logs: the start (what ran) and the end (how it stopped) are what matter
    for f in "$tmp/$(basename "$run")"/logs/*.log; do
      [ -f "$f" ] || continue
      if [ "$(wc -l < "$f")" -gt 6000 ]; then
        { head -n 4000 "$f"; echo "... [$(wc -l < "$f") lines; trimmed for transfer] ..."; tail -n 1000 "$f"; } > "$f.t" && mv "$f.t" "$f"
      fi
    done
    cp "$RUNS/$name.log" "$tmp/$(basename "$run")/ridgeline-console.log" 2>/dev/null || true
    rm -f "$OUT/run-$name.tgz".part*
    tar czf - -C "$tmp" "$(basename "$run")" | split -b 15m -d -a 2 - "$OUT/run-$name.tgz.part"
    if [ "$(cat "$OUT/run-$name.tgz".part* | wc -c)" -gt $((58 * 1024 * 1024)) ]; then
      # at most 64 MiB come back in all: the scraped series are the first thing to leave out
      echo "bg: over 58 MiB packed; leaving out metrics/ (the scraped series) to fit what comes back"
      rm -f "$OUT/run-$name.tgz".part*
      tar czf - -C "$tmp" --exclude="$(basename "$run")/metrics" "$(basename "$run")" |
        split -b 15m -d -a 2 - "$OUT/run-$name.tgz.part"
    fi
    rm -rf "$tmp"
    echo "bg: packed $(basename "$run") into $(ls "$OUT/run-$name.tgz".part* | wc -l) piece(s) of at most 15 MiB:" \
         "$(du -ch "$OUT/run-$name.tgz".part* | tail -1 | cut -f1)"
    ;;
  fg)
    # the fallback when a background run does not outlive its call: run (or resume) in the
    # foreground for at most SECONDS, then SIGINT (the step in flight is kept as incomplete and
    # the next `fg` resumes it), then pack
    secs=${1:?seconds}; plan=${2:?plan file}; name=${3:-all}
    env_setup
    run=$(ls -td "$RUNS/$name"/*/ 2>/dev/null | head -1)
    if [ -n "$run" ]; then
      echo "bg: resuming ${run%/} in the foreground for at most ${secs}s"
      timeout -s INT -k 120 "$secs" python3 -m loadtest.cli run --resume "${run%/}" --quiet 2>&1 | tee -a "$RUNS/$name.log" | tail -n 20
    else
      echo "bg: running $plan in the foreground for at most ${secs}s"
      timeout -s INT -k 120 "$secs" python3 -m loadtest.cli run "$plan" --out "$RUNS/$name" --quiet 2>&1 | tee -a "$RUNS/$name.log" | tail -n 20
    fi
    python3 "$H/progress.py" "$RUNS/$name"
    bash "$0" pack "$name"
    ;;
  stop)
    name=${1:-all}
    if alive "$name"; then
      kill -INT "$(cat "$RUNS/$name.pid")"; echo "bg: sent SIGINT to $name; it stops the server and writes the report"
    else
      echo "bg: $name is not running"
    fi
    ;;
  *)
    sed -n '2,15p' "$0"; exit 2 ;;
esac
