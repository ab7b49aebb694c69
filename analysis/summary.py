"""summary.json and the verdict: the answer in a stable shape for scripts and in words for people.

The keys documented in docs/analysis.md (baseline, backend, variants.*.steps, speedup, crossover,
verdict) keep their shape; more keys may be added beside them, never renamed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.crosscheck import verdict_word
from analysis.crosscheck_rounds import level_verdict
from analysis.energy import STEP_COLUMNS, energy_label, sources_of
from analysis.energy_text import energy_sentences
from analysis.pipeline import Analysis, compute, finite
from analysis.quality.verdict import verdict_lines
from analysis.prefix_cache import leak_sentence
from analysis.repeat_draws import source as interval_source_of
from analysis.roofline import explain
from analysis.roofline_gap import gap_table
from analysis.speedup import SLO_ATTAINMENT, interval
from core.backends import BACKENDS, is_modelled
from core.backends import note as backend_note
from core.hardware.formats import INT4_FORMATS
from core.results import (
    RunDir,
    atomic_write_json,
    atomic_write_table,
    atomic_write_text,
)

STEP_KEYS = [
    "step", "repeat", "status", "concurrency", "rate", "level", "window_s", "output_tokens_per_s",
    "output_tokens_per_s_lo", "output_tokens_per_s_hi", "total_tokens_per_s", "requests_per_s",
    "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "itl_p50_s", "itl_p90_s", "itl_p99_s", "tpot_p50_s", "tpot_p99_s",
    "e2e_p50_s", "e2e_p99_s", "requests", "errors", "cancelled", "goodput_requests_per_s", "goodput_tokens_per_s",
    "slo_attainment", "server_running_mean", "server_waiting_mean", "kv_cache_usage_mean", "preemptions",
    "server_generation_tokens_per_s", "prefix_cache_hit_rate", "server_ttft_p50_s", "server_itl_p50_s",
    "roofline_batch", "roofline_regime", "roofline_bound_share", "client_saturated",
    "lateness_p50_s", "lateness_p99_s", "lateness_max_s", "achieved_flops_per_s", "achieved_read_bytes_per_s",
    *STEP_COLUMNS.values(),
]
INT_KEYS = ("concurrency", "gpus")
BACKEND_NOTE = {name: b.note for name, b in BACKENDS.items()}  # kept for the reports' imports


def level_key(level: float, mode: str) -> str:
    """A load level as a summary key: the concurrency ("64") or the rate ("2.5")."""
    if mode == "concurrency" and float(level).is_integer():
        return str(int(level))
    return f"{level:g}"


def threshold_key(t: float) -> str:
    s = f"{t:g}"
    return s if "." in s or "e" in s else s + ".0"


def _fmt_level(x: Optional[float], mode: str) -> str:
    if x is None:
        return "?"
    if mode == "concurrency":
        return f"{x:.0f}" if x >= 10 or float(x).is_integer() else f"{x:.1f}"
    return f"{x:.3g} req/s"


def _clean(v: Any) -> Any:
    if v is pd.NA:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return finite(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


@dataclass
class Summary:
    """The summary.json document, with the analysis it came from (not serialised)."""

    data: dict[str, Any]
    analysis: Optional[Analysis] = field(default=None, repr=False)

    @property
    def verdict(self) -> str:
        return self.data["verdict"]

    @property
    def baseline(self) -> str:
        return self.data["baseline"]

    @property
    def speedup(self) -> dict[str, dict[str, Optional[float]]]:
        return self.data["speedup"]

    @property
    def crossover(self) -> dict[str, dict[str, Optional[float]]]:
        return self.data["crossover"]

    @property
    def quality(self) -> Optional[dict[str, Any]]:
        return self.data.get("quality")

    def to_dict(self) -> dict[str, Any]:
        return self.data


def served_problem(a: Analysis, variant: str) -> Optional[str]:
    """'gptq ran at 16-bit size: not INT4 (...)' when the served report says the variant did not match."""
    vi = a.info.variant_info.get(variant)
    if vi is None or vi.served_verdict != "mismatch":
        return None
    why = "; ".join(vi.served_reasons[:2])
    if vi.weights in INT4_FORMATS:
        text = f"{variant} ran at 16-bit size: not INT4"
    elif vi.kv_cache_dtype.startswith("fp8"):
        text = f"{variant} did not run with an FP8 KV cache"
    else:
        text = f"{variant} did not serve what its variant asked for"
    return text + (f" ({why})" if why else "")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _crossings_text(crossings: list[Any], mode: str, word: str, first_level: float, last_level: float) -> str:
    """'falls below 1.5x at 3.9 (interval 1 to 37) and 1.2x at 44 (...); stays above 1.0x up to 256'."""
    L = lambda x: _fmt_level(x, mode)
    falls, start, never = [], [], []
    for c in sorted(crossings, key=lambda c: -c.threshold):
        t = f"{threshold_key(c.threshold)}x"
        if c.level is None:
            never.append(t)
        elif c.below_from_start:
            start.append(t)
        else:
            lo = L(c.low) if c.low is not None else "?"
            hi = L(c.high) if c.high is not None else f"beyond {L(last_level)}"
            falls.append(f"{t} at {L(c.level)} (interval {lo} to {hi})")
    groups = []
    if start:
        groups.append(f"is already below {_join(start)} at {word} {L(first_level)}")
    if falls:
        groups.append("falls below " + _join(falls))
    if never:
        groups.append(f"stays above {_join(never)} up to {L(last_level)}")
    return "; ".join(groups)


def verdict(a: Analysis) -> str:
    """One paragraph, in plain words, computed from the numbers."""
    info = a.info
    mode = info.mode
    word = "concurrency" if mode == "concurrency" else "rate"
    parts: list[str] = []
    if is_modelled(info.backend):
        parts.append("Emulator run (modelled, not measured on a GPU).")
    sp = a.speedups
    if a.levels.empty:
        parts.append("No complete step was measured, so there is no comparison.")
        return " ".join(parts + [line + "." for line in quality_lines(a).values()])
    others = [v for v in info.variants if v != info.baseline]
    for v in others:
        problem = served_problem(a, v)
        g = sp[sp.variant == v].sort_values("level")
        g = g[g.speedup.notna()]
        if g.empty:
            errs = a.steps[(a.steps.variant == v) & a.steps.step_error.notna()].step_error
            why = f" (its steps: {str(errs.iloc[0]).splitlines()[0]})" if len(errs) else ""
            parts.append(f"{v}: no step to compare with {info.baseline}{why}." if not problem else f"{problem}.")
            continue
        first, last = g.iloc[0], g.iloc[-1]
        head = (f"{v} gives {first.speedup:.2f}x {info.baseline}'s output throughput at {word} "
                f"{_fmt_level(first.level, mode)}")
        if len(g) > 1:
            head += f" and {last.speedup:.2f}x at {_fmt_level(last.level, mode)}"
        crossings = list(a.crossings.get(v, {}).values())
        sentence = head
        if crossings:
            sentence += "; it " + _crossings_text(crossings, mode, word, float(first.level), float(last.level))
        lo_ok = g.speedup_lo.notna() & g.speedup_hi.notna()
        if lo_ok.any() and ((g.speedup_lo[lo_ok] <= 1.0) & (g.speedup_hi[lo_ok] >= 1.0)).all():
            sentence += f"; at no {word} does it differ from {info.baseline} beyond the 95% interval"
        if problem:
            sentence = f"{problem}; as served, " + sentence
        parts.append(sentence + ".")
    parts += [line + "." for line in quality_lines(a).values()]
    caps = {v: c for v, c in a.capacity.items() if c.output_tokens_per_s}
    if caps:
        best = max(caps.values(), key=lambda c: c.output_tokens_per_s or 0)
        base = caps.get(info.baseline)
        most = "the most" if len(caps) > 1 else ""
        text = (f"Under the SLO ({info.slo.describe()}, met by {SLO_ATTAINMENT:.0%} of requests) {best.variant} "
                f"sustains {most}{': ' if most else ''}{best.output_tokens_per_s:.0f} tokens/s at {word} "
                f"{_fmt_level(best.level, mode)}")
        if base is not None and best.variant != info.baseline and base.output_tokens_per_s:
            text += (f", {best.output_tokens_per_s / base.output_tokens_per_s:.2f}x {info.baseline}'s "
                     f"{base.output_tokens_per_s:.0f} at {_fmt_level(base.level, mode)}")
        parts.append(text + ".")
    elif a.capacity:
        parts.append(f"No step of any variant met the SLO ({info.slo.describe()}) for {SLO_ATTAINMENT:.0%} of requests.")
    leak = leak_sentence(a.steps, a.crosscheck, info.plan)
    if leak:
        parts.append(leak)
    why = _roofline_sentence(a)
    if why:
        parts.append("In roofline terms: " + why)
    energy = energy_sentences(a.energy, info.baseline)
    if energy:
        parts.append("Energy: " + "; ".join(energy) + ".")
    bad = a.steps[~a.steps.status.isin(["complete"])]
    if len(bad):
        parts.append(f"{len(bad)} step(s) did not complete and are left out of the curves.")
    sat = a.steps[a.steps.client_saturated.astype(bool)]
    if len(sat):
        parts.append(f"The load generator was CPU-saturated in {len(sat)} step(s); latencies there may include "
                     f"client delay.")
    return " ".join(parts)


def quality_lines(a: Analysis) -> dict[str, str]:
    """Per variant, its speed and quality in one line (empty: the run measured no quality)."""
    return verdict_lines(a.quality, a.speedups, a.info.baseline, a.info.mode)


def _quality_entry(a: Analysis) -> Optional[dict[str, Any]]:
    """summary.json's quality section with each variant's verdict line (None: no quality measured)."""
    if a.quality is None:
        return None
    return {**a.quality, "verdict": quality_lines(a)}


def _roofline_sentence(a: Analysis) -> Optional[str]:
    """Why the first variant that crossed a threshold did, in roofline terms."""
    info = a.info
    word = info.level_name()
    if info.mode != "concurrency":
        return None
    prefer = [t for t in info.thresholds if abs(t - 1.2) < 1e-9] + list(info.thresholds)
    for v in info.variants:
        if v == info.baseline or served_problem(a, v):
            continue
        for t in prefer:
            c = a.crossings.get(v, {}).get(t)
            if c is not None and c.level is not None and not c.below_from_start:
                return explain(a.roofline, info.baseline, v, c.level, t, word)
    return None


def _step_entries(a: Analysis, variant: str) -> list[dict[str, Any]]:
    st = a.steps[a.steps.variant == variant]
    out = []
    for r in st.to_dict(orient="records"):
        d = a.draws.get((variant, int(r["step"])))
        if d is not None:
            r["output_tokens_per_s_lo"], r["output_tokens_per_s_hi"] = interval(d)
        entry = {k: _clean(r.get(k)) for k in STEP_KEYS}
        for k in INT_KEYS:
            entry[k] = int(r[k]) if finite(r.get(k)) is not None else None
        entry["rate"] = finite(r.get("rate"))
        out.append(entry)
    return out


def build_summary(a: Analysis) -> dict[str, Any]:
    info = a.info
    mode = info.mode
    variants: dict[str, Any] = {}
    for v in info.variants:
        vi = info.variant_info.get(v)
        cap = a.capacity.get(v)
        variants[v] = {
            "steps": _step_entries(a, v),
            "weights": vi.weights if vi else None,
            "kv_cache_dtype": vi.kv_cache_dtype if vi else None,
            "served_verdict": vi.served_verdict if vi else None,
            "capacity": {k: _clean(x) for k, x in cap.to_dict().items() if k != "variant"} if cap else None,
            "ridge_batch": finite(a.roofline.ridge.get(v)),
        }
    speedup: dict[str, dict[str, Optional[float]]] = {}
    speedup_interval: dict[str, dict[str, list]] = {}
    for v in info.variants:
        if v == info.baseline:
            continue
        g = a.speedups[a.speedups.variant == v].sort_values("level")
        speedup[v] = {level_key(r.level, mode): finite(r.speedup) for r in g.itertuples(index=False)}
        speedup_interval[v] = {level_key(r.level, mode): [finite(r.speedup_lo), finite(r.speedup_hi)]
                               for r in g.itertuples(index=False)}
    interval_source = {v: {level_key(r.level, mode): interval_source_of(int(r.repeats))
                           for r in a.levels[a.levels.variant == v].itertuples(index=False)}
                       for v in info.variants} if "repeats" in a.levels.columns else {}
    crossover: dict[str, dict[str, Optional[float]]] = {}
    crossover_interval: dict[str, dict[str, list]] = {}
    for v in info.variants:
        if v == info.baseline:
            continue
        cs = a.crossings.get(v, {})
        crossover[v] = {threshold_key(t): _round(cs[t].level) if t in cs else None for t in info.thresholds}
        crossover_interval[v] = {threshold_key(t): [_round(cs[t].low), _round(cs[t].high)] if t in cs else [None, None]
                                 for t in info.thresholds}
    return {
        "baseline": info.baseline,
        "backend": info.backend,
        "variants": variants,
        "speedup": speedup,
        "crossover": crossover,
        "verdict": verdict(a),
        "run": info.name,
        "backend_note": backend_note(info.backend),
        "level": "concurrency" if mode == "concurrency" else "rate",
        "thresholds": list(info.thresholds),
        "speedup_interval": speedup_interval,
        "interval_source": interval_source,
        "crossover_interval": crossover_interval,
        "crossover_below_from_start": {v: {threshold_key(t): bool(c.below_from_start) for t, c in cs.items()}
                                       for v, cs in a.crossings.items()},
        "slo": {"ttft_s": info.slo.ttft_s, "itl_s": info.slo.itl_s, "tpot_s": info.slo.tpot_s,
                "e2e_s": info.slo.e2e_s, "attainment": SLO_ATTAINMENT},
        "model": info.model,
        "gpu": info.gpu,
        "roofline_context_tokens": finite(a.roofline.context_tokens),
        "energy": _energy_entry(a),
        "crosscheck": crosscheck_rows(a),
        "crosscheck_levels": crosscheck_level_rows(a),
        "quality": _quality_entry(a),
        "warnings": a.warnings,
        "failed_starts": failed_starts(info.manifest),
        "roofline_gaps": [{k: _clean(x) for k, x in r.items()} for r in gap_table(a.roofline).to_dict(orient="records")],
    }


def failed_starts(manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each variant's server starts that failed before one worked or the variant was given up (retries)."""
    return {v: list(e.get("failed_starts") or []) for v, e in (manifest.get("servers") or {}).items()
            if isinstance(e, dict) and e.get("failed_starts")}


def _energy_entry(a: Analysis) -> Optional[dict[str, Any]]:
    """Where the energy figures came from and what they say (None: the run recorded no telemetry)."""
    e = a.energy
    if e.empty:
        return None
    sources = sources_of(e)
    return {"label": energy_label(sources), "sources": sources, "sentences": energy_sentences(e, a.baseline),
            "comparable_steps": int(e.comparable.astype(bool).sum()),
            "throttled_steps": int(e.throttled.astype(bool).sum())}


def crosscheck_rows(a: Analysis) -> list[dict[str, Any]]:
    """The vllm bench serve comparison, one entry per (variant, concurrency, round), with its verdict."""
    return _verdict_rows(a.crosscheck, verdict_word,
                         ("concurrency", "round", "num_prompts", "step", "repeat", "bench_completed", "bench_failed"))


def crosscheck_level_rows(a: Analysis) -> list[dict[str, Any]]:
    """The comparison over rounds, one entry per (variant, concurrency), with its verdict."""
    return _verdict_rows(a.crosscheck_levels, level_verdict, ("concurrency", "rounds"))


def _verdict_rows(table: pd.DataFrame, verdict_of: Callable[[Any], str],
                  counts: tuple[str, ...]) -> list[dict[str, Any]]:
    """A table's rows as JSON-ready dicts: NaN as null, the `counts` columns as integers, and a verdict."""
    out = []
    for r in table.itertuples(index=False):
        d = {k: _clean(v) for k, v in r._asdict().items()}
        for k in counts:
            d[k] = int(d[k]) if finite(d.get(k)) is not None else None
        d["verdict"] = verdict_of(r)
        out.append(d)
    return out


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else round(float(x), 1)


def steps_table(a: Analysis) -> pd.DataFrame:
    """The per-step table as written to steps.parquet and steps.csv."""
    st = a.steps.copy()
    lo, hi = [], []
    for r in st.itertuples(index=False):
        d = a.draws.get((r.variant, int(r.step)))
        x = interval(d) if d is not None else (np.nan, np.nan)
        lo.append(x[0])
        hi.append(x[1])
    st.insert(st.columns.get_loc("output_tokens_per_s") + 1, "output_tokens_per_s_lo", lo)
    st.insert(st.columns.get_loc("output_tokens_per_s_lo") + 1, "output_tokens_per_s_hi", hi)
    for c in st.columns:
        if st[c].dtype == object:
            st[c] = st[c].map(lambda x: None if x is None or (isinstance(x, float) and math.isnan(x)) else str(x))
    return st


def analyze(run_dir: Union[str, Path, RunDir]) -> Summary:
    """Analyse a results directory; write steps.parquet, steps.csv and summary.json into it."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    a = compute(run)
    data = build_summary(a)
    table = steps_table(a)
    atomic_write_table(run.path / "steps.parquet", pa.Table.from_pandas(table, preserve_index=False))
    atomic_write_text(run.path / "steps.csv", table.to_csv(index=False))
    atomic_write_json(run.summary_path, data)
    return Summary(data, a)


def load_summary(run_dir: Union[str, Path, RunDir]) -> dict[str, Any]:
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    return json.loads(run.summary_path.read_text(encoding="utf-8"))
