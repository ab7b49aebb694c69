"""Energy per step: what each variant's tokens cost in joules, from the run's GPU telemetry.

A quantized variant that is 1.2x faster but draws 30% more power is not cheaper, so the report
needs joules next to tokens. Per step this module gives mean and max power, the energy of the
measured window (from the cumulative energy counter, which is exact across missing samples;
integrated power where there is no counter or a stretch of it cannot be trusted), output tokens
per joule, tokens per second per GPU, and whether the clocks were throttled (such a step is not
comparable with the others).

Public: `energy_table(run_dir, steps)`, `step_energy(step, samples, ...)` (one step, as the analysis
calls it per step), `read_step_telemetry(path)`, `energy_sentence(table, variant, baseline)`,
`energy_sentences(table, baseline)`, `plot_energy(table, path)`, `write_energy(run_dir, ...)`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.server_metrics import dictionary
from analysis.steps import window_output_tokens
from core import telemetry as tm
from core.results import ResultsError, RunDir

# A counter jump that implies more than this per GPU is a reset or a glitch, not energy.
MAX_PLAUSIBLE_W = 5000.0
# Counters wrap at a power of two of their native unit (mJ); values here are in joules.
WRAP_MODULI_J = (2.0**32 * 1e-3, 2.0**32, 2.0**64 * 1e-3)
# Power samples further apart than this many median intervals leave the stretch uncovered.
GAP_FACTOR = 3.0
# Below this share of the window covered by telemetry, a step's energy is not comparable.
MIN_COVERAGE = 0.8

COLUMNS = [
    "variant", "step", "repeat", "concurrency", "rate", "level", "status", "source", "label", "gpus",
    "window_s", "output_tokens", "energy_j", "energy_method", "coverage", "mean_power_w",
    "max_power_w", "tokens_per_joule", "joules_per_token", "tokens_per_s", "tokens_per_s_per_gpu",
    "mean_util_percent", "mean_sm_clock_mhz", "max_temperature_c", "power_capped_share",
    "throttled", "throttle_reasons", "comparable",
]


# energy table column -> its name in the analysis' step table (and summary.json's step entries)
STEP_COLUMNS = {
    "gpus": "gpus", "source": "energy_source", "label": "energy_label", "energy_j": "energy_j",
    "energy_method": "energy_method", "coverage": "energy_coverage", "mean_power_w": "mean_power_w",
    "max_power_w": "max_power_w", "tokens_per_joule": "tokens_per_joule", "joules_per_token": "joules_per_token",
    "tokens_per_s_per_gpu": "tokens_per_s_per_gpu", "mean_util_percent": "mean_util_percent",
    "mean_sm_clock_mhz": "mean_sm_clock_mhz", "max_temperature_c": "max_temperature_c",
    "power_capped_share": "power_capped_share", "throttled": "throttled", "throttle_reasons": "throttle_reasons",
    "comparable": "energy_comparable",
}
_FLAGS = ("throttled", "energy_comparable")
_TEXT = ("energy_source", "energy_label", "energy_method", "throttle_reasons")


@dataclass(frozen=True)
class Energy:
    """Joules in a window, how they were found, and the share of the window the samples covered."""

    joules: float
    coverage: float  # 0..1
    method: str  # counter | power | none


# --- one series, one window ---------------------------------------------------------------------

def _clean(t: Sequence[float], v: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(t, dtype=float)
    v = np.asarray(v, dtype=float)
    ok = np.isfinite(t) & np.isfinite(v)
    t, v = t[ok], v[ok]
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if len(t) > 1:  # two readings at one instant: keep the last
        keep = np.append(np.diff(t) > 0, True)
        t, v = t[keep], v[keep]
    return t, v


def _overlap(a0: np.ndarray, a1: np.ndarray, t0: float, t1: float) -> np.ndarray:
    return np.clip(np.minimum(a1, t1) - np.maximum(a0, t0), 0.0, None)


def power_energy(t: Sequence[float], watts: Sequence[float], t0: float, t1: float) -> Energy:
    """Integrate power over [t0, t1]: linear between samples, the nearest sample beyond the ends.

    Coverage counts the window time between samples no further apart than GAP_FACTOR median
    intervals; a longer gap is bridged linearly but not counted as covered.
    """
    ts, ps = _clean(t, watts)
    span = t1 - t0
    if span <= 0 or len(ts) == 0:
        return Energy(math.nan, 0.0, "none")
    grid = np.unique(np.concatenate(([t0, t1], ts[(ts > t0) & (ts < t1)])))
    pw = np.interp(grid, ts, ps)
    joules = float(np.sum((pw[1:] + pw[:-1]) * 0.5 * np.diff(grid)))
    if len(ts) < 2:
        return Energy(joules, 0.0, "power")
    dt = np.diff(ts)
    limit = GAP_FACTOR * float(np.median(dt))
    good = dt <= limit
    covered = float(np.sum(_overlap(ts[:-1][good], ts[1:][good], t0, t1)))
    return Energy(joules, min(covered / span, 1.0), "power")


def counter_increase(t: np.ndarray, v: np.ndarray, max_watts: float = MAX_PLAUSIBLE_W,
                     moduli: Sequence[float] = WRAP_MODULI_J) -> np.ndarray:
    """Per-interval increase of a cumulative counter; NaN where the interval cannot be trusted.

    A decrease is a wrap when adding one of `moduli` gives a physically plausible increase
    (at most max_watts over the interval), else a reset (NaN: the interval is filled elsewhere).
    An increase above max_watts is a glitch (NaN).
    """
    d = np.diff(v)
    dt = np.diff(t)
    out = d.copy()
    for i in np.nonzero(d < 0)[0]:
        out[i] = math.nan
        for m in moduli:
            w = d[i] + m
            if v[i] < m and 0 <= w <= max_watts * dt[i]:
                out[i] = w
                break
    with np.errstate(invalid="ignore"):
        out[(out > max_watts * dt)] = math.nan
    return out


def counter_energy(t: Sequence[float], joules_total: Sequence[float], t0: float, t1: float,
                   power_t: Optional[Sequence[float]] = None, power_w: Optional[Sequence[float]] = None,
                   max_watts: float = MAX_PLAUSIBLE_W, moduli: Sequence[float] = WRAP_MODULI_J) -> Energy:
    """Energy in [t0, t1] from a cumulative counter (joules), spread linearly within intervals.

    Missing samples cost nothing (a counter integrates between any two readings). Intervals that
    cannot be trusted (reset, glitch) are filled from the power samples when given, else from the
    mean power of the trusted intervals. Window time beyond the first or last reading is
    extrapolated at the mean power seen and lowers the coverage.
    """
    ts, vs = _clean(t, joules_total)
    span = t1 - t0
    if span <= 0 or len(ts) < 2:
        return Energy(math.nan, 0.0, "none")
    inc = counter_increase(ts, vs, max_watts, moduli)
    a0, a1 = ts[:-1], ts[1:]
    ov = _overlap(a0, a1, t0, t1)
    good = np.isfinite(inc)
    joules = float(np.sum(inc[good] * ov[good] / (a1[good] - a0[good])))
    covered = float(np.sum(ov[good]))
    bad = (~good) & (ov > 0)
    have_power = power_t is not None and power_w is not None and len(power_t) > 0
    for i in np.nonzero(bad)[0]:
        lo, hi = max(a0[i], t0), min(a1[i], t1)
        if have_power:
            e = power_energy(power_t, power_w, lo, hi)
            if math.isfinite(e.joules):
                joules += e.joules
                covered += e.coverage * (hi - lo)
                continue
        # nothing better: the mean power of what was trusted, uncovered
        if covered > 0:
            joules += joules / covered * (hi - lo)
    if covered <= 0:
        return Energy(math.nan, 0.0, "none")
    inside = float(np.sum(ov))  # window time between the first and last reading
    if inside < span:
        joules += joules / covered * (span - inside) if covered > 0 else 0.0
    return Energy(joules, min(covered / span, 1.0), "counter")


def gpu_energy(samples: pd.DataFrame, t0: float, t1: float) -> Energy:
    """One GPU's energy in the window: the counter when it has two readings, else integrated power."""
    e = samples[samples.metric == tm.ENERGY]
    p = samples[samples.metric == tm.POWER]
    if len(e) >= 2:
        got = counter_energy(e.time.values, e.value.values, t0, t1, p.time.values, p.value.values)
        if math.isfinite(got.joules):
            return got
    if len(p):
        return power_energy(p.time.values, p.value.values, t0, t1)
    return Energy(math.nan, 0.0, "none")


# --- the per-step table -------------------------------------------------------------------------

def read_step_telemetry(path: Optional[Path]) -> pd.DataFrame:
    """One step's samples (time, metric, value, gpu, source), failed-sample rows left out.

    Strings stay categorical, as Parquet stores them: labels are decoded once per distinct label
    set, not once per sample, and comparisons are on codes.
    """
    if path is None or not Path(path).exists():
        empty = pd.Categorical([])
        return pd.DataFrame({"time": pd.Series(dtype=float), "metric": empty, "value": pd.Series(dtype=float),
                             "gpu": empty, "source": empty})
    try:
        t = pq.read_table(path, columns=["time", "metric", "labels", "value"], read_dictionary=["metric", "labels"])
    except (pa.ArrowInvalid, OSError) as exc:
        raise ResultsError(f"{path}: cannot be read as a telemetry table ({exc})") from None
    metric_codes, metrics = _codes(dictionary(t.column("metric")))
    label_codes, labels = _codes(dictionary(t.column("labels")))
    decoded = [_labels(x) for x in labels]
    df = pd.DataFrame({"time": t.column("time").to_numpy(), "metric": _categorical(metric_codes, metrics),
                       "value": t.column("value").to_numpy()})
    for key in ("gpu", "source"):
        df[key] = _categorical(label_codes, [d.get(key) for d in decoded])
    return df[df.metric != tm.GAP].reset_index(drop=True)


def _codes(arr: pa.DictionaryArray) -> tuple[np.ndarray, list[Optional[str]]]:
    """Per-row codes into the dictionary's strings; a null row points at a None added at the end."""
    names = arr.dictionary.to_pylist() + [None]
    return np.asarray(arr.indices.fill_null(len(names) - 1).to_numpy(zero_copy_only=False), dtype=np.int64), names


def _categorical(codes: np.ndarray, names: list[Optional[str]]) -> pd.Categorical:
    """Per-row codes into a list of names (None: missing) as a pandas Categorical, without a loop per row."""
    cats = sorted({str(n) for n in names if n is not None})
    index = {c: i for i, c in enumerate(cats)}
    lut = np.array([index[str(n)] if n is not None else -1 for n in names], dtype=np.int64)
    return pd.Categorical.from_codes(lut[codes], categories=cats)


def _labels(text: Optional[str]) -> dict:
    try:
        d = json.loads(text) if text else {}
    except ValueError:
        return {}
    return {k: (str(v) if v is not None else None) for k, v in d.items()} if isinstance(d, dict) else {}


def sources_of(table: pd.DataFrame) -> list[str]:
    """The telemetry sources behind an energy table's rows (each row's `source` is comma-separated)."""
    return sorted(set(",".join(table.source.dropna().astype(str)).split(",")) - {""})


def energy_label(sources: Union[str, Sequence[str], None]) -> Optional[str]:
    """'modelled', 'measured', or 'measured and modelled' for a set of telemetry sources."""
    if isinstance(sources, str):
        sources = sources.split(",")
    found = {x for x in (sources or []) if x}
    if not found:
        return None
    if found == {"modelled"}:
        return "modelled"
    return "measured and modelled" if "modelled" in found else "measured"


def _window(step: dict) -> tuple[Optional[float], Optional[float]]:
    def first(*keys: str) -> Optional[float]:
        for k in keys:
            v = step.get(k)
            if v is not None and math.isfinite(float(v)):
                return float(v)
        return None

    t0, t1 = first("window_start", "started"), first("window_end", "ended")
    if t0 is None or t1 is None or t1 <= t0:
        return None, None
    return t0, t1


def step_energy(step: dict, tel: pd.DataFrame, req: Optional[Union[pd.DataFrame, pa.Table]] = None,
                tokens_per_s: Optional[float] = None) -> dict:
    """One row of COLUMNS for a step (a manifest step entry) and its telemetry samples.

    The output tokens are `tokens_per_s` x the window when given (the analysis' count), else
    counted from the request rows `req`.
    """
    t0, t1 = _window(step)
    level = step.get("concurrency") if step.get("concurrency") is not None else step.get("rate")
    row = {c: None for c in COLUMNS}
    row.update(variant=step["variant"], step=int(step["step"]), repeat=int(step.get("repeat") or 0),
               concurrency=step.get("concurrency"), rate=step.get("rate"), level=level,
               status=step.get("status"), throttled=False, comparable=False)
    if t0 is None:
        return row
    window = t1 - t0
    tel = tel[tel.metric != tm.GAP]
    gpus = sorted(map(str, tel.gpu.dropna().unique()), key=lambda g: (len(g), g))
    sources = sorted(map(str, tel.source.dropna().unique()))
    if tokens_per_s is not None and math.isfinite(tokens_per_s):
        tokens = tokens_per_s * window
    else:
        tokens = window_output_tokens(_table(req), t0, t1) if req is not None else 0.0
    row.update(window_s=window, output_tokens=tokens, gpus=len(gpus) or None,
               source=",".join(sources) or None, label=energy_label(sources), tokens_per_s=tokens / window)
    if gpus:
        row["tokens_per_s_per_gpu"] = tokens / window / len(gpus)
    energies = [gpu_energy(tel[tel.gpu == g], t0, t1) for g in gpus]
    energies = [e for e in energies if math.isfinite(e.joules)]
    if energies and len(energies) == len(gpus):
        joules = sum(e.joules for e in energies)
        methods = sorted({e.method for e in energies})
        row.update(energy_j=joules, energy_method=methods[0] if len(methods) == 1 else "mixed",
                   coverage=min(e.coverage for e in energies), mean_power_w=joules / window)
        if joules > 0:
            row["tokens_per_joule"] = tokens / joules
            row["joules_per_token"] = joules / tokens if tokens > 0 else None
    inwin = tel[(tel.time >= t0) & (tel.time <= t1)]
    power = inwin[inwin.metric == tm.POWER]
    if len(power):
        row["max_power_w"] = float(power.groupby("time").value.sum().max())
    for col, metric, how in (("mean_util_percent", tm.UTIL, "mean"), ("mean_sm_clock_mhz", tm.SM_CLOCK, "mean"),
                             ("max_temperature_c", tm.TEMP, "max")):
        vals = inwin[inwin.metric == metric].value
        if len(vals):
            row[col] = float(getattr(vals, how)())
    reasons = inwin[inwin.metric == tm.CLOCK_REASONS].value.astype("int64")
    if len(reasons):
        masks = reasons.values
        hit = int(np.bitwise_or.reduce(masks & tm.THROTTLE_MASK))
        row["throttled"] = hit != 0
        row["throttle_reasons"] = ",".join(tm.reasons_text(hit)) or None
        row["power_capped_share"] = float(np.mean((masks & tm.POWER_CAP_MASK) != 0))
    viol = tel[tel.metric == tm.THERMAL_VIOLATION]
    for _, g in viol.groupby("gpu"):
        g = g.sort_values("time")
        before = g[g.time <= t0].value
        after = g[g.time >= t1].value
        if len(before) and len(after) and after.iloc[0] > before.iloc[-1]:
            row["throttled"] = True
            row["throttle_reasons"] = ",".join(filter(None, [row["throttle_reasons"], "thermal_violation"]))
    row["comparable"] = bool(
        row["status"] == "complete" and not row["throttled"] and row["energy_j"] is not None
        and (row["coverage"] or 0.0) >= MIN_COVERAGE and tokens > 0)
    return row


def step_columns(row: dict) -> dict:
    """A step's energy row under its step-table names; all empty (flags too) without telemetry."""
    sampled = row.get("gpus") is not None
    return {name: (row.get(col) if sampled else None) for col, name in STEP_COLUMNS.items()}


def typed_step_columns(steps: pd.DataFrame) -> pd.DataFrame:
    """The energy columns of a step table with one type each (numbers, nullable flags, text), so a run
    without telemetry writes the same columns as one with it."""
    out = steps.copy()
    for name in STEP_COLUMNS.values():
        if name not in out:
            out[name] = None
        if name in _FLAGS:
            out[name] = out[name].astype("boolean")
        elif name not in _TEXT:
            out[name] = pd.to_numeric(out[name], errors="coerce").astype(float)
    return out


_TOKEN_COLUMNS = ["send_time", "ttft_s", "itl_s", "output_tokens", "token_events", "status"]


def _table(requests: Union[pd.DataFrame, pa.Table]) -> pa.Table:
    if isinstance(requests, pa.Table):
        return requests
    return pa.Table.from_pandas(requests[[c for c in _TOKEN_COLUMNS if c in requests.columns]], preserve_index=False)


def energy_table(run_dir: Union[str, Path, RunDir], steps: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per step of the run (COLUMNS); energy columns are empty where there was no telemetry.

    `steps` (the analysis' per-step table, with variant, step and output_tokens_per_s) makes the
    token counts those of the report and spares reading the request rows; without it tokens are
    counted here from each step's request file. Files are read one step at a time.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    manifest_steps = [s for s in run.read_manifest().get("steps", []) if isinstance(s, dict)]
    paths = {(s["variant"], int(s["step"])): tm.telemetry_path(run, s["variant"], int(s["step"])) for s in manifest_steps}
    if not any(p.exists() for p in paths.values()):
        return pd.DataFrame(columns=COLUMNS)
    tps: dict[tuple[str, int], float] = {}
    if steps is not None and len(steps):
        known = steps[np.isfinite(steps.output_tokens_per_s.astype(float))]
        tps = dict(zip(zip(known.variant, known.step.astype(int)), known.output_tokens_per_s.astype(float)))
    rows = []
    for s in manifest_steps:
        key = (s["variant"], int(s["step"]))
        req = None
        if key not in tps:
            f = run.requests_path(*key)
            req = pq.read_table(f, columns=_TOKEN_COLUMNS) if f.exists() else None
        rows.append(step_energy(s, read_step_telemetry(paths[key]), req, tps.get(key)))
    return sorted_table(rows)


def sorted_table(rows: list[dict], variants: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Rows of COLUMNS as a table in (variant, step) order; `variants` gives the variants' order
    (the run's), else by name."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    rank = {v: i for i, v in enumerate(variants or sorted(set(df.variant)))}
    df["_rank"] = df.variant.map(rank).fillna(len(rank))
    return df.sort_values(["_rank", "step"], kind="stable").drop(columns="_rank").reset_index(drop=True)
