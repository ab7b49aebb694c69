"""How long analysis and reports take on a large run, and how much memory they need.

Builds a modelled results directory (tests.support.synthetic) of 4 variants x 9 concurrency steps with
about 1,000,000 request rows in all (output lengths 64-256 tokens, so each row carries a realistic
list of inter-token gaps). Every step has the same measured window, as in a real sweep, so the
high-concurrency steps hold most rows; the server is scraped every second with pages of about 300
samples, as real vLLM pages are, and the GPU's power and energy counter are sampled every second
(modelled telemetry, so the energy section and its table are part of the work). Then `analyze` + `render_reports` run in a fresh process, which
reports its wall time and peak resident memory. Targets: 15 s and 2 GB on 2 cores.

    python benchmarks/analysis_scale.py [--rows 1000000] [--dir /tmp/ridgeline-scale] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {"fp16": 1.0, "awq": 1.55, "gptq": 1.5, "fp8kv": 1.0}
IDLE_W, PEAK_W = 120.0, 700.0
LEVELS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from analysis import analyze, render_reports
t1 = time.perf_counter()
s = analyze(sys.argv[1])
t2 = time.perf_counter()
render_reports(sys.argv[1])
t3 = time.perf_counter()
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"import_s": t1 - t0, "analyze_s": t2 - t1, "render_s": t3 - t2, "total_s": t3 - t0,
                  "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024,
                  "verdict": s.verdict}))
"""


def build(path: Path, rows: int) -> dict:
    from tests.support.synthetic import RunModel, StepModel, build_run

    def gap(c: int, speed: float) -> float:
        return 0.006 * (1 + c / 48) / (1 + (speed - 1) / (1 + c / 32))

    def req_s(c: int, speed: float) -> float:  # mean request duration (160 tokens on average)
        return 0.05 + 159 * gap(c, speed)

    def power(c: int, speed: float) -> float:  # busier at higher load; INT4 kernels draw a little less
        return IDLE_W + (PEAK_W - IDLE_W) * c / (c + 24) * (0.92 if speed > 1 else 1.0)

    per_second = sum(c / req_s(c, sp) for sp in VARIANTS.values() for c in LEVELS)
    duration = rows / per_second  # the same measured window for every step
    steps = {v: [StepModel(c, gap(c, sp), 0.05, output_tokens=(64, 256), jitter=0.3, warmup_s=req_s(c, sp),
                           duration_s=duration, power_w=power(c, sp)) for c in LEVELS] for v, sp in VARIANTS.items()}
    t = time.perf_counter()
    build_run(path, RunModel(steps=steps, seed=1, metric_padding=240))
    return {"build_s": time.perf_counter() - t, "window_s": duration}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/tmp/ridgeline-scale")
    ap.add_argument("--keep", action="store_true", help="keep the results directory")
    ap.add_argument("--reuse", action="store_true", help="reuse an existing directory instead of building one")
    args = ap.parse_args()
    path = Path(args.dir)
    info = {}
    if not (args.reuse and (path / "manifest.json").exists()):
        shutil.rmtree(path, ignore_errors=True)
        info.update(build(path, args.rows))
    import pyarrow.parquet as pq

    files = sorted((path / "requests").glob("*/step-*.parquet"))
    info["request_rows"] = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    info["token_events"] = int(sum(int(pq.read_table(f, columns=["token_events"]).column(0).to_numpy().sum())
                                   for f in files))
    info["size_mb"] = round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 1)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        return out.returncode
    info.update(json.loads(out.stdout.strip().splitlines()[-1]))
    info["cpus"] = os.cpu_count()
    info["load_avg"] = os.getloadavg()
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in info.items()}, indent=2))
    if not args.keep:
        shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
