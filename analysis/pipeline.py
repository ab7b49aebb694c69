"""From a results directory to every derived table, in one pass over its files.

Steps are read one file at a time (requests, then scraped metrics), aggregated, and dropped, so
memory stays bounded by the largest step, not the run. What later stages need per request (tokens
in the window, latencies) is kept as compact arrays. The result is cached per directory, keyed by
the files' sizes and modification times, so `analyze` followed by `render_reports` reads the run
once.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis import energy as en
from analysis import fmt
from analysis import server_metrics as sm
from analysis.agreement import agreement_columns
from analysis.block_bootstrap import rate_draws
from analysis.crosscheck import crosscheck_table
from analysis.crosscheck_rounds import rounds_table
from analysis.data import AnalysisError, RunInfo, load_run
from analysis.prefix_cache import leak_warnings
from analysis.quality.rows import quality_files
from analysis.quality.section import quality_section
from analysis.roofline import Roofline, analyse_roofline
from analysis.speedup import (
    Capacity,
    Crossing,
    capacities,
    crossovers,
    level_table,
    seed_for,
    speedup_table,
)
from analysis.steps import StepRequests, aggregate_step, level_of, read_step_table
from core.records import REQUEST_SCHEMA
from core.results import ResultsError, RunDir

METRIC_NAMES = sorted(
    {sm.GAP, sm.UP, sm.RESET, *sm.RUNNING, *sm.WAITING, *sm.KV_USAGE, *sm.COUNTERS}
    | {f"{n}{suffix}" for names in sm.HISTOGRAMS.values() for n in names for suffix in ("_bucket", "_sum", "_count")}
)
THREADS = 2


@dataclass
class Analysis:
    """Everything derived from one results directory."""

    info: RunInfo
    steps: pd.DataFrame  # one row per (variant, step)
    levels: pd.DataFrame  # one row per (variant, level), repeats averaged, with throughput intervals
    speedups: pd.DataFrame  # variant, level, speedup and its interval
    crossings: dict[str, dict[float, Crossing]]
    capacity: dict[str, Capacity]
    roofline: Roofline
    series: pd.DataFrame  # server gauges per scrape, for charts
    errors: pd.DataFrame  # variant, step, error_kind, count, example
    energy: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=en.COLUMNS))  # empty: no telemetry
    crosscheck: pd.DataFrame = field(default_factory=pd.DataFrame)  # vllm bench serve beside ridgeline's steps
    crosscheck_levels: pd.DataFrame = field(default_factory=pd.DataFrame)  # the same over rounds, one row a level
    requests: dict[tuple[str, int], StepRequests] = field(default_factory=dict)
    draws: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    level_draws: dict[tuple[str, float], np.ndarray] = field(default_factory=dict)
    quality: Optional[dict[str, Any]] = None  # summary.json's quality section (None: no quality measured)
    warnings: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> str:
        return self.info.baseline


def _read_metrics(path: Optional[Path]) -> Optional[pa.Table]:
    """The rows of the series the analysis uses, strings kept dictionary-encoded (as Parquet stores them)."""
    if path is None:
        return None
    try:
        return pq.read_table(path, columns=["time", "metric", "labels", "value"], read_dictionary=["metric", "labels"],
                             filters=[("metric", "in", METRIC_NAMES)])
    except (pa.ArrowInvalid, OSError) as exc:
        raise AnalysisError(f"{path}: cannot be read as a metrics table ({exc})") from None


@dataclass
class _StepResult:
    head: dict[str, Any]  # the step's row
    requests: StepRequests
    kinds: pd.DataFrame  # errors by kind
    series: pd.DataFrame  # server gauges per scrape
    draws: np.ndarray  # bootstrap throughputs
    energy: dict[str, Any]  # its row of the energy table
    warnings: list[str]


def _one_step(info: RunInfo, s: Any) -> _StepResult:
    path = info.request_file(s.variant, s.step)
    table = read_step_table(path) if path is not None else REQUEST_SCHEMA.empty_table()
    conc, rate = s.concurrency, s.rate
    if conc is None and rate is None:
        conc, rate = level_of(table)
    level = conc if info.mode == "concurrency" else rate
    if level is None:
        level = conc if conc is not None else rate
    row, reqs, kinds = aggregate_step(table, s.window_start, s.window_end, info.slo)
    w0 = row["window_start"]
    w1 = w0 + row["window_s"] if np.isfinite(row["window_s"]) else np.nan
    scraped = sm.scraped(_read_metrics(info.metrics_file(s.variant, s.step)))
    row.update(sm.step_server_metrics(scraped, w0, w1))
    series = sm.step_series(scraped)
    series.insert(0, "step", s.step)
    series.insert(0, "variant", s.variant)
    head = {"variant": s.variant, "step": s.step, "repeat": s.repeat, "concurrency": conc, "rate": rate,
            "level": float(level) if level is not None else np.nan, "status": s.status,
            "step_error": s.error, "sent": s.sent, "recorded": s.recorded,
            "client_cpu_max": s.client_cpu_max if s.client_cpu_max is not None else np.nan,
            "client_saturated": bool(s.client_saturated), "window_end": w1}
    head.update(row)
    if path is None and s.status == "complete":
        head["status"] = "missing"
    kinds.insert(0, "step", s.step)
    kinds.insert(0, "variant", s.variant)
    rng = np.random.default_rng(seed_for(s.variant, s.step))
    draws = rate_draws(reqs.slice_tokens, row["window_s"], reqs.e2e_s, rng, reqs.lead_s)
    energy, warnings = _step_energy(info, s, head)
    head.update(en.step_columns(energy))
    return _StepResult(head, reqs, kinds, series, draws, energy, warnings)


def _step_energy(info: RunInfo, s: Any, head: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The step's energy over the analysis' own window and token count (no second pass over requests)."""
    step = dict(s.to_dict(), concurrency=head["concurrency"], rate=head["rate"], status=head["status"],
                window_start=finite(head["window_start"]), window_end=finite(head["window_end"]))
    warnings = []
    try:
        samples = en.read_step_telemetry(info.telemetry_file(s.variant, s.step))
    except ResultsError as exc:
        samples, warnings = en.read_step_telemetry(None), [f"{exc}; that step has no energy figures"]
    return en.step_energy(step, samples, tokens_per_s=finite(head["output_tokens_per_s"])), warnings


def _map_steps(fn, items: list) -> list:
    """fn over the steps on two native threads (file decoding and numpy release the GIL).

    Where gevent has patched `threading` (the command line runs Locust), threads made by
    concurrent.futures would be greenlets on one core, so gevent's own pool of native threads is used.
    """
    if THREADS <= 1 or len(items) < 2:
        return list(map(fn, items))
    try:
        from gevent import monkey

        patched = monkey.is_module_patched("threading")
    except ImportError:
        patched = False
    if patched:
        from gevent.threadpool import ThreadPool

        pool = ThreadPool(THREADS)
        try:
            return list(pool.imap(fn, items))
        finally:
            pool.kill()
    with ThreadPoolExecutor(max_workers=THREADS) as ex:
        return list(ex.map(fn, items))


def _fingerprint(path: Path) -> tuple:
    files = [path / "manifest.json", *(f for d in ("requests", "metrics", "telemetry")
                                       for f in sorted((path / d).glob("*/step-*.parquet"))),
             *sorted((path / "crosscheck").glob("*/*.json")), *quality_files(path)]
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append((str(f), st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            pass
    return tuple(out)


_CACHE: dict[str, tuple[tuple, "Analysis"]] = {}


def compute(run_dir: Union[str, Path, RunDir], use_cache: bool = True) -> Analysis:
    """Analyse a results directory (cached while its files are unchanged)."""
    path = (run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)).resolve()
    fp = _fingerprint(path)
    hit = _CACHE.get(str(path))
    if use_cache and hit is not None and hit[0] == fp:
        return hit[1]
    result = _compute(load_run(path))
    _CACHE.clear()  # one run at a time: keep memory bounded
    _CACHE[str(path)] = (fp, result)
    return result


def _compute(info: RunInfo) -> Analysis:
    rows, series, kinds, energy_rows, step_warnings = [], [], [], [], []
    requests: dict[tuple[str, int], StepRequests] = {}
    draws: dict[tuple[str, int], np.ndarray] = {}
    results = _map_steps(lambda st: _one_step(info, st), info.steps)
    for s, res in zip(info.steps, results):
        rows.append(res.head)
        requests[(s.variant, s.step)] = res.requests
        draws[(s.variant, s.step)] = res.draws
        energy_rows.append(res.energy)
        step_warnings += res.warnings
        if len(res.series):
            series.append(res.series)
        if len(res.kinds):
            kinds.append(res.kinds)
    steps = pd.DataFrame(rows)
    if steps.empty:
        raise AnalysisError(f"{info.path}: no steps to analyse (the manifest lists none and no request files exist)")
    steps = steps.sort_values(["variant", "step"], kind="stable").reset_index(drop=True)
    order = {v: i for i, v in enumerate(info.variants)}
    steps = steps.iloc[sorted(range(len(steps)), key=lambda i: (order.get(steps.variant[i], 1e9), steps.step[i]))]
    steps = en.typed_step_columns(agreement_columns(steps.reset_index(drop=True)))

    levels, level_draws = level_table(steps, draws)
    speedups = speedup_table(levels, level_draws, info.baseline)
    cross = crossovers(speedups, info.thresholds)
    caps = capacities(levels) if not levels.empty else {}
    roof = analyse_roofline(info, steps)
    if not roof.steps.empty:
        extra = roof.steps[["variant", "step", "batch", "bound_s", "regime", "bound_share"]].rename(
            columns={"batch": "roofline_batch", "bound_s": "roofline_bound_s", "regime": "roofline_regime",
                     "bound_share": "roofline_bound_share"})
        steps = steps.merge(extra, on=["variant", "step"], how="left")
    ser = pd.concat(series, ignore_index=True) if series else pd.DataFrame(
        columns=["variant", "step", "time", "running", "waiting", "kv_cache_usage", "generation_tokens_per_s"])
    errs = pd.concat(kinds, ignore_index=True) if kinds else pd.DataFrame(
        columns=["variant", "step", "error_kind", "count", "example"])
    energy = en.sorted_table(energy_rows, info.variants)
    if not energy.gpus.notna().any():
        energy = pd.DataFrame(columns=en.COLUMNS)
    cc, cc_warnings = crosscheck_table(info.path, info.manifest, steps)
    analysis = Analysis(info=info, steps=steps, levels=levels, speedups=speedups, crossings=cross, capacity=caps,
                        roofline=roof, series=ser, errors=errs, energy=energy, crosscheck=cc,
                        crosscheck_levels=rounds_table(cc), requests=requests, draws=draws, level_draws=level_draws)
    analysis.quality, q_warnings = _quality(info)
    leaks = leak_warnings(steps, cc, info.plan, lambda x: f"{info.level_name()} {fmt.level(x, info.mode)}")
    analysis.warnings = list(dict.fromkeys(_warnings(analysis) + step_warnings + cc_warnings + q_warnings + leaks))
    return analysis


def _quality(info: RunInfo) -> tuple[Optional[dict[str, Any]], list[str]]:
    """The quality section and what it warns of; rows it cannot read never stop the speed analysis."""
    plan = info.manifest.get("plan") if isinstance(info.manifest.get("plan"), dict) else None
    try:
        section = quality_section(info.path, plan, info.baseline, info.variants)
    except (AnalysisError, ValueError, TypeError) as exc:
        return None, [f"quality figures left out: {type(exc).__name__}: {exc}"]
    if section is None:
        return None, []
    warnings = [f"quality: {n}" for n in section["notes"]]
    warnings += [f"quality of {v}: {e['reason']}" for v, e in section["variants"].items() if e["status"] == "invalid"]
    return section, warnings


def _warnings(a: Analysis) -> list[str]:
    out = [str(w) for w in a.info.manifest.get("warnings", []) if w]
    out += a.info.warnings
    st = a.steps
    for r in st[~st.status.isin(["complete"])].itertuples(index=False):
        why = f": {r.step_error}" if isinstance(r.step_error, str) and r.step_error else ""
        out.append(f"{r.variant} step {r.step} is {r.status}{why.splitlines()[0] if why else ''}; "
                   f"it is left out of the curves")
    empty = st[st.status.isin(["complete"]) & (st.requests == 0) & (st.requests_total > 0)]
    if len(empty):
        out.append("no request was sent inside the measured window of " + ", ".join(
            f"{r.variant} step {r.step}" for r in empty.itertuples(index=False)) + ": their throughput counts the "
            "tokens that arrived in the window, but they have no latency figures (the window is shorter than one "
            "request there; lengthen sweep.duration_s or use sweep.requests)")
    sat = st[st.client_saturated.astype(bool)]
    if len(sat):
        out.append("the load generator was CPU-saturated in " + ", ".join(f"{r.variant} step {r.step}"
                   for r in sat.itertuples(index=False)) + ": latencies there may include client delay")
    resets = st[st.counter_resets.fillna(0) > 0]
    for r in resets.itertuples(index=False):
        out.append(f"{r.variant} step {r.step}: the server restarted inside the window (counters reset)")
    gaps = st[st.scrape_gaps.fillna(0) > 0]
    for r in gaps.itertuples(index=False):
        out.append(f"{r.variant} step {r.step}: {int(r.scrape_gaps)} failed scrape(s) inside the window")
    for v, vi in a.info.variant_info.items():
        if vi.served_verdict == "mismatch":
            out.append(f"{v}: the served model does not match the variant ({'; '.join(vi.served_reasons) or 'no reason given'})")
    if a.roofline.unavailable:
        out.append(f"no roofline: {a.roofline.unavailable}")
    return list(dict.fromkeys(out))


def finite(x: Any) -> Optional[float]:
    """A JSON-safe number: None for missing, NaN or infinite."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
