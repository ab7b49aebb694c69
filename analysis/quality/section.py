"""summary.json["quality"]: per variant its status, figures, deltas against the baseline, intervals,
flags and gates, from the raw rows under results/<run>/quality/.

A variant that was not measured (dummy weights, the emulator) or failed keeps its status and reason
and gets no numbers. Rows the analysis cannot use (misaligned positions, an unreadable table) make
that variant "invalid" with the reason, and leave every other variant's figures and the speed
analysis as they are.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from analysis.quality.flags import broken_reasons
from analysis.quality.gates import check_gates, unknown_gates
from analysis.quality.metrics import METRICS, Figures, Pair
from analysis.quality.metrics.kl import TAIL
from analysis.quality.rows import INVALID, MEASURED, NOT_MEASURED, QualityError, VariantRows, read_quality

DEFAULT_CONFIDENCE = 0.95


def settings_of(plan: Optional[dict[str, Any]], rows: dict[str, VariantRows]) -> dict[str, Any]:
    """The plan's quality block; where the plan has none, the one a variant's quality.json recorded."""
    block = (plan or {}).get("quality") if isinstance(plan, dict) else None
    if isinstance(block, dict):
        return block
    for r in rows.values():
        if r.settings:
            return r.settings
    return {}


def message(status: str, reason: Optional[str]) -> str:
    """What the reports print instead of numbers for a variant without figures."""
    head = {NOT_MEASURED: "quality not measured", INVALID: "quality rows unusable"}.get(status, "quality measurement failed")
    return f"{head}: {reason}" if reason else head


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, list):
        return [_clean(v) for v in x]
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return x


def _figures(pair: Pair) -> Figures:
    out = Figures()
    for metric in METRICS:
        f = metric.compute(pair)
        if f is not None:
            out.merge(f)
    return out


def variant_entry(rows: VariantRows, base: Optional[VariantRows], settings: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"status": rows.status, "reason": rows.reason, "weights": rows.weights,
                             "served_model": rows.record.get("served_model"),
                             "metrics": {}, "deltas": {}, "intervals": {}, "counts": {}, "flags": [], "gates": [],
                             "notes": []}
    if not rows.has_rows:
        entry["message"] = message(rows.status, rows.reason)
        return entry
    if not rows.measured:
        entry["notes"].append(message(rows.status, rows.reason) + "; the figures below are from the blocks that "
                              "were measured")
    confidence = float(settings.get("confidence") or DEFAULT_CONFIDENCE)
    task = settings.get("task") if isinstance(settings.get("task"), dict) else {}
    reference = base if base is not None and base.has_rows else rows
    try:
        figs = _figures(Pair(rows, reference, confidence, task))
    except (QualityError, ValueError, TypeError) as exc:
        why = str(exc) if isinstance(exc, QualityError) else f"{rows.variant}: {type(exc).__name__}: {exc}"
        return {**entry, "status": INVALID, "reason": why, "message": message(INVALID, why)}
    entry.update(metrics=figs.metrics, intervals=figs.intervals, counts=figs.counts, notes=entry["notes"] + figs.notes)
    if reference is not rows:
        entry["deltas"] = figs.deltas
        reasons = broken_reasons(figs.deltas, figs.intervals)
        if reasons:
            entry["flags"].append("broken")
            entry["broken_reasons"] = reasons
        gates = settings.get("gates") if isinstance(settings.get("gates"), dict) else {}
        entry["gates"] = check_gates(gates, figs.deltas, figs.intervals)
        entry["flags"] += [f"gate_failed:{g['gate']}" for g in entry["gates"] if g["passed"] is False]
    return _clean(entry)


def quality_section(run_path: Path, plan: Optional[dict[str, Any]], speed_baseline: Optional[str],
                    variants: Optional[list[str]] = None) -> Optional[dict[str, Any]]:
    """The section, or None when the run has no quality rows and its plan no quality block."""
    rows = read_quality(Path(run_path))
    settings = settings_of(plan, rows)
    if not rows and not settings:
        return None
    baseline = str(settings.get("baseline") or speed_baseline or "")
    order = [v for v in (variants or []) if v in rows] + [v for v in rows if v not in (variants or [])]
    notes: list[str] = []
    base = rows.get(baseline)
    if not rows:
        notes.append("the plan asks for quality, but the run has no quality rows (quality/ is missing)")
    elif base is None:
        notes.append(f"the quality baseline {baseline} has no quality rows: no variant has deltas")
    elif not base.has_rows:
        notes.append(f"the quality baseline {baseline} was not measured ({message(base.status, base.reason)}): "
                     f"no variant has deltas")
    gates = settings.get("gates") if isinstance(settings.get("gates"), dict) else {}
    for g in unknown_gates(gates):
        notes.append(f"unknown quality gate {g!r} is ignored")
    section = {"baseline": baseline, "confidence": float(settings.get("confidence") or DEFAULT_CONFIDENCE),
               "kl_tail": TAIL, "gates": gates, "variants": {}, "notes": notes}
    for v in order:
        section["variants"][v] = variant_entry(rows[v], base, settings)
    chosen = settings.get("variants") if isinstance(settings.get("variants"), list) else None
    for v in variants or []:
        if v not in rows and rows:
            why = "not listed in quality.variants" if chosen is not None and v not in chosen else \
                f"no quality/{v}/ in the run"
            section["variants"][v] = {"status": "missing", "reason": why, "message": f"quality not measured: {why}",
                                      "weights": None, "metrics": {}, "deltas": {}, "intervals": {}, "counts": {},
                                      "flags": [], "gates": [], "notes": []}
    return section


def figure(entry: dict[str, Any], key: str) -> Optional[float]:
    """A variant's figure by name, whether absolute (metrics) or against the baseline (deltas)."""
    for part in ("deltas", "metrics"):
        v = (entry.get(part) or {}).get(key)
        if v is not None:
            return float(v)
    return None


def interval_of(entry: dict[str, Any], key: str) -> tuple[Optional[float], Optional[float]]:
    lo, hi = ((entry.get("intervals") or {}).get(key) or [None, None])[:2]
    return lo, hi


__all__ = ["quality_section", "variant_entry", "figure", "interval_of", "message", "MEASURED"]
