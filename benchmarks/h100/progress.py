"""What a ridgeline run on the H100 has measured so far, read from its results directory while it runs.

Prints one line per finished step (requests, output tokens/s in the window, median TTFT and
inter-token gap) and, per variant, the lines of the server log that say what really ran (weight
memory, quantization, kernels, KV-cache size), so each device call's output shows the state
even when the call ends before the run does.

    python3 benchmarks/h100/progress.py /tmp/runs/all        # the newest run under that root
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's ridgeline, as on the host

LOG_FACTS = re.compile(r"Model loading took|quantization=|Using \w+ for \w+LinearMethod|KV cache size|"
                       r"Maximum concurrency|kv_cache_dtype|Using .*attention backend|"
                       r"graph capturing finished|init engine .* took|Error|Traceback", re.I)


def newest_run(root: Path) -> Optional[Path]:
    if (root / "manifest.json").exists():
        return root
    runs = [p.parent for p in root.glob("*/manifest.json")]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def step_line(run: Path, step: dict) -> str:
    import pyarrow.parquet as pq

    from analysis.steps import window_output_tokens

    v, i = step.get("variant"), step.get("step")
    head = f"{v:>10} step {i:>2} c={step.get('concurrency')!s:>4} {step.get('status', '?'):>10}"
    f = run / "requests" / str(v) / f"step-{int(i):03d}.parquet"
    if not f.exists():
        return head
    try:
        table = pq.read_table(f)
    except Exception as exc:  # noqa: BLE001 - a file being written is not an error here
        return f"{head} (unreadable now: {type(exc).__name__})"
    df = table.to_pandas()
    w0, w1 = step.get("window_start"), step.get("window_end")
    toks = 0.0
    if w0 and w1 and w1 > w0:
        toks = window_output_tokens(table, w0, w1)  # as the analysis counts them
    rate = toks / (w1 - w0) if w0 and w1 and w1 > w0 else float("nan")
    ok = df[df["status"] == "ok"] if "status" in df else df
    ttft = ok["ttft_s"].median() * 1e3 if "ttft_s" in ok and len(ok) else float("nan")
    itl = float("nan")
    if "itl_s" in ok and len(ok):
        import numpy as np

        gaps = [g for lst in ok["itl_s"] if lst is not None for g in lst]
        itl = float(np.median(gaps)) * 1e3 if gaps else float("nan")
    return (f"{head} requests={len(df):4d} errors={int((df['status'] == 'error').sum()) if 'status' in df else 0:3d} "
            f"out_tok/s={rate:8.1f} ttft_p50={ttft:7.1f}ms itl_p50={itl:6.2f}ms")


def main(argv: Optional[list[str]] = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    root = Path(args[0]) if args else Path("/tmp/runs/all")
    run = newest_run(root)
    if run is None:
        print(f"progress: no run under {root} yet")
        return 0
    m = json.loads((run / "manifest.json").read_text())
    print(f"progress: {run}")
    steps = m.get("steps", [])
    if isinstance(steps, dict):
        steps = list(steps.values())
    for s in steps:
        print("  " + step_line(run, s))
    for log in sorted((run / "logs").glob("*.log")):
        facts = [ln.strip()[:220] for ln in log.read_text(errors="replace").splitlines() if LOG_FACTS.search(ln)]
        print(f"  server log {log.name}: {log.stat().st_size / 1e6:.1f} MB")
        for ln in facts[:14]:
            print("    " + ln)
    for w in m.get("warnings", [])[-5:]:
        print(f"  warning: {w[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
