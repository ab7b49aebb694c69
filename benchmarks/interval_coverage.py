"""Coverage of the throughput and speedup intervals: many independent runs of the same steps.

Each run is a fresh `ridgeline` sweep (its own server, its own prompt seed and server seed) of fp16
and AWQ at a few concurrencies, analysed with the landed code. For every (variant, level) and every
speedup, the benchmark asks of each run: does its 95% interval hold the mean of the *other* runs?
and compares the interval's width with the spread the runs actually show (2 x 1.96 x their standard
deviation). A calibrated interval holds the others' mean about 95% of the time (a little more,
since that mean is itself noisy) with a width ratio near 1. Beside it ("old") is the rule it
replaced: for one repeat per level, the time-slice bootstrap (slices resampled one by one); with
`--repeats`, the mean of the repeats' block-bootstrap draws (where analysis.repeat_draws now uses
the spread between the repeats).

    python benchmarks/interval_coverage.py --runs 24                                # the emulator
    python benchmarks/interval_coverage.py --runs 12 --repeats 3                    # every level three times a run
    python benchmarks/interval_coverage.py --runs 24 --repeats 3 --warmup-s 2       # and each step warmed first
    python benchmarks/interval_coverage.py --backend vllm-cpu --runs 6              # the real CPU engine
    python benchmarks/interval_coverage.py --backend vllm-cpu --runs 6 --repeats 3

On the CPU engine the two servers (bf16 and AWQ of tests/support's tiny model) are started once and
every run is a fresh sweep against them with its own prompt seed.

Runs are kept under --out (default /tmp/ridgeline-coverage/<backend>); a second call with the same
--out reuses the runs already there and adds the missing ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LEVELS = {"emulator": [1, 16, 64], "vllm-cpu": [1, 8, 32]}
REQUESTS = {"emulator": [12, 64, 256], "vllm-cpu": [8, 32, 128]}


def emulator_plan(seed: int, out: Path, repeats: int = 1, warmup_s: float = 0.0) -> dict:
    """fp16 and AWQ of Llama-3-8B on the emulated H100, closed loop, whole waves of requests."""
    return {
        "name": f"coverage-{seed:02d}", "backend": "emulator", "model": "llama-3-8b", "gpu": "h100-sxm",
        "baseline": "fp16", "variants": [{"name": "fp16"}, {"name": "awq"}],
        "scenario": {"api": "completions", "prompt_tokens": 512, "output_tokens": 64, "ignore_eos": True,
                     "seed": seed},
        "sweep": {"mode": "concurrency", "concurrency": LEVELS["emulator"], "requests": REQUESTS["emulator"],
                  "warmup_s": warmup_s, "drain_s": 60, "repeats": repeats},
        "emulator": {"seed": seed}, "thresholds": [1.2], "output_dir": str(out),
    }


def cpu_plan(seed: int, out: Path, root: Path, urls: dict[str, str], repeats: int = 1,
             warmup_s: float = 0.0) -> dict:
    """bf16 and AWQ of the tiny model on vllm-cpu (tests/support), the same closed-loop shape, against
    servers started once for all runs (backend external: the runs differ by prompt seed, not by start)."""
    from tests.support.vllm_plan import tiny_vllm_plan

    plan = tiny_vllm_plan(root, list(urls), output_dir=out,
                          scenario={"api": "completions", "prompt_tokens": 64, "output_tokens": 32,
                                    "ignore_eos": True, "seed": seed},
                          sweep={"mode": "concurrency", "concurrency": LEVELS["vllm-cpu"],
                                 "requests": REQUESTS["vllm-cpu"], "warmup_s": warmup_s, "drain_s": 60,
                                 "repeats": repeats},
                          thresholds=[1.2], name=f"coverage-{seed:02d}")
    data = json.loads(plan.model_dump_json())
    data["backend"] = "external"
    for v in data["variants"]:
        v["url"] = urls[v["name"]]
    return data


@contextlib.contextmanager
def cpu_servers(root: Path) -> Iterator[dict[str, str]]:
    """The tiny model's bf16 and AWQ servers on vllm-cpu, stopped by process group on the way out."""
    from deploy.servers import server_commands
    from tests.support.vllm_plan import serving, tiny_vllm_plan

    cmds = server_commands(tiny_vllm_plan(root, ["bf16", "awq"]))
    with contextlib.ExitStack() as stack:
        urls = {c.variant: stack.enter_context(serving(c, root / f"{c.variant}.log")).url for c in cmds}
        yield urls


def sweep_one(plan_file: str) -> None:
    """Child process: run one plan's sweep (no report), print its results directory."""
    from gevent import monkey

    monkey.patch_all()
    from core.plan import load_plan
    from loadtest.runner import Sweep, new_run_dir

    plan = load_plan(Path(plan_file))
    run = new_run_dir(plan, None)
    Sweep(plan, run, plan_source=plan_file).execute()
    print(run.path)


def run_dirs(backend: str, runs: int, out: Path, repeats: int = 1, warmup_s: float = 0.0) -> list[Path]:
    """The runs' results directories, sweeping the missing ones."""
    out.mkdir(parents=True, exist_ok=True)
    marks = [out / f"run-{seed:02d}.path" for seed in range(runs)]
    missing = [seed for seed, m in enumerate(marks)
               if not (m.exists() and Path(m.read_text().strip(), "manifest.json").exists())]
    with (cpu_servers(out) if backend == "vllm-cpu" and missing else contextlib.nullcontext({})) as urls:
        for seed in missing:
            plan = (emulator_plan(seed, out / "results", repeats, warmup_s) if backend == "emulator"
                    else cpu_plan(seed, out / "results", out, urls, repeats, warmup_s))
            pf = out / f"plan-{seed:02d}.yaml"
            pf.write_text(yaml.safe_dump(plan, sort_keys=False))
            res = subprocess.run([sys.executable, __file__, "--sweep-one", str(pf)], capture_output=True, text=True,
                                 check=False)
            if res.returncode != 0:
                raise SystemExit(f"run {seed} failed:\n{res.stderr[-3000:]}")
            marks[seed].write_text(res.stdout.strip().splitlines()[-1])
            print(f"run {seed}: {marks[seed].read_text()}", file=sys.stderr, flush=True)
    return [Path(m.read_text().strip()) for m in marks]


def _slices_iid(slices: np.ndarray, window_s: float, rng: np.random.Generator) -> np.ndarray:
    """The estimator this one replaced: the window's slices resampled one by one."""
    idx = rng.integers(0, slices.size, size=(1000, slices.size))
    return slices[idx].sum(axis=1) / window_s


def measure(path: Path) -> dict[str, dict[str, float]]:
    """Per key ('fp16@64', 'awq/fp16@64'): value and 95% bounds, new and old estimator."""
    from analysis.pipeline import compute
    from analysis.speedup import interval, ratio_interval

    a = compute(path, use_cache=False)
    out: dict[str, dict[str, float]] = {}
    old: dict[tuple[str, float], np.ndarray] = {}
    done = a.steps[a.steps.status.isin(["complete", "unlisted"])]
    for r in a.levels.itertuples(index=False):
        st = done[(done.variant == r.variant) & (done.level == r.level)]
        if len(st) > 1:  # repeats: the mean of their block-bootstrap draws, the rule repeat_draws replaced
            old[(r.variant, r.level)] = np.mean([a.draws[(r.variant, int(s))] for s in st.step], axis=0)
        else:
            req = a.requests[(r.variant, int(st.step.iloc[0]))]
            old[(r.variant, r.level)] = _slices_iid(req.slice_tokens, st.window_s.iloc[0],
                                                    np.random.default_rng(0))
        lo_old, hi_old = interval(old[(r.variant, r.level)])
        out[f"{r.variant}@{r.level:g}"] = {"value": r.output_tokens_per_s, "lo": r.output_tokens_per_s_lo,
                                            "hi": r.output_tokens_per_s_hi, "lo_old": lo_old, "hi_old": hi_old}
    for r in a.speedups.itertuples(index=False):
        lo_old, hi_old = ratio_interval(old[(r.variant, r.level)], old[(a.baseline, r.level)])
        out[f"{r.variant}/{a.baseline}@{r.level:g}"] = {"value": r.speedup, "lo": r.speedup_lo, "hi": r.speedup_hi,
                                                         "lo_old": lo_old, "hi_old": hi_old}
    return out


def coverage_table(per_run: list[dict[str, dict[str, float]]]) -> list[dict]:
    """Per key: how often a run's interval holds the other runs' mean, and width over observed spread."""
    keys = [k for k in per_run[0] if all(k in r for r in per_run)]
    rows = []
    for k in keys:
        v = np.array([r[k]["value"] for r in per_run])
        spread = 2 * 1.96 * v.std(ddof=1)
        row = {"key": k, "runs": len(v), "mean": v.mean(), "sd_pct": 100 * v.std(ddof=1) / v.mean()}
        for tag, lo_k, hi_k in (("new", "lo", "hi"), ("old", "lo_old", "hi_old")):
            lo = np.array([r[k][lo_k] for r in per_run])
            hi = np.array([r[k][hi_k] for r in per_run])
            others = (v.sum() - v) / (len(v) - 1)
            row[f"cover_{tag}"] = float(np.mean((lo <= others) & (others <= hi)))
            row[f"ratio_{tag}"] = float(np.median(hi - lo) / spread) if spread > 0 else float("inf")
            row[f"halfwidth_pct_{tag}"] = float(np.median((hi - lo) / 2 / v) * 100)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("| step | runs | mean | run-to-run sd | half-width | holds others' mean | width / spread "
            "| old: half-width | old: holds | old: width / spread |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        mean = f"{r['mean']:,.0f} tok/s" if "/" not in r["key"] else f"{r['mean']:.3f}x"
        lines.append(f"| {r['key']} | {r['runs']} | {mean} | {r['sd_pct']:.2f}% | ±{r['halfwidth_pct_new']:.2f}% "
                     f"| {100 * r['cover_new']:.0f}% | {r['ratio_new']:.2f} | ±{r['halfwidth_pct_old']:.2f}% "
                     f"| {100 * r['cover_old']:.0f}% | {r['ratio_old']:.2f} |")
    n = sum(r["runs"] for r in rows)
    cov = sum(r["cover_new"] * r["runs"] for r in rows) / n
    cov_old = sum(r["cover_old"] * r["runs"] for r in rows) / n
    lines.append(f"| all | {n} | | | | {100 * cov:.1f}% | {np.median([r['ratio_new'] for r in rows]):.2f} (median) "
                 f"| | {100 * cov_old:.1f}% | {np.median([r['ratio_old'] for r in rows]):.2f} (median) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["emulator", "vllm-cpu"], default="emulator")
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=1, help="sweep.repeats of every run (levels interleaved)")
    ap.add_argument("--warmup-s", type=float, default=0.0,
                    help="sweep.warmup_s of every step (without it a run's very first step starts cold)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    ap.add_argument("--sweep-one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.sweep_one:
        sweep_one(a.sweep_one)
        return
    out = a.out or Path("/tmp/ridgeline-coverage") / (a.backend + (f"-r{a.repeats}" if a.repeats > 1 else ""))
    if a.warmup_s:
        out = out.with_name(out.name + f"-w{a.warmup_s:g}")
    dirs = run_dirs(a.backend, a.runs, out, a.repeats, a.warmup_s)
    per_run = [measure(d) for d in dirs]
    rows = coverage_table(per_run)
    print(format_table(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
