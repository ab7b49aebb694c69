"""Quality in `ridgeline compare`: a quality figure of run B against run A per variant, and B's plan gates.

Mirrors the speed comparison: a regression is a change in the bad direction larger than the
threshold that is significant, or untested. Here the threshold is in the figure's own units (1.0
for ppl_change_pct is one percentage point more perplexity change than in A), since most figures
are already changes against the baseline. Significance: the two runs are independent measurements,
so each run's interval gives a standard error ((hi - lo) / 2z) and the difference has
sqrt(se_A^2 + se_B^2); significant when its interval excludes 0. Two runs that scored the same
documents are positively correlated, which makes this test conservative. A figure without an
interval in both runs is untested. Separately, every failed gate of run B's plan (quality.gates)
counts as a regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from analysis.data import AnalysisError
from analysis.quality.intervals import z_value
from analysis.quality.section import figure, interval_of

LOWER_IS_BETTER = {"ppl_change_pct", "delta_nll", "kl_mean", "nll", "ppl"}
HIGHER_IS_BETTER = {"accuracy", "accuracy_delta_points", "first_token_agreement", "mean_matched_prefix",
                    "exact_match_rate"}
DEFAULT_THRESHOLD = {"ppl_change_pct": 1.0, "delta_nll": 0.01, "kl_mean": 0.01, "nll": 0.01, "ppl": 0.1,
                     "accuracy": 0.02, "accuracy_delta_points": 2.0, "first_token_agreement": 0.02,
                     "mean_matched_prefix": 0.5, "exact_match_rate": 0.02}
CONFIDENCE = 0.95


@dataclass
class QualityDiff:
    variant: str
    metric: str
    a: Optional[float]
    b: Optional[float]
    change: Optional[float]  # b - a, in the metric's units
    change_lo: Optional[float]
    change_hi: Optional[float]
    test: str  # intervals | none
    significant: Optional[bool]
    regression: bool
    improvement: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class GateFailure:
    variant: str
    gate: str
    metric: str
    limit: float
    value: Optional[float]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def known_metrics() -> list[str]:
    return sorted(LOWER_IS_BETTER | HIGHER_IS_BETTER)


def check_metric(metric: str) -> None:
    if metric not in LOWER_IS_BETTER | HIGHER_IS_BETTER:
        raise AnalysisError(f"quality metric {metric!r} is not known; known: {', '.join(known_metrics())}")


def _se(entry: dict[str, Any], metric: str, z: float) -> Optional[float]:
    lo, hi = interval_of(entry, metric)
    return None if lo is None or hi is None else (hi - lo) / (2 * z)


def quality_diffs(qa: Optional[dict[str, Any]], qb: Optional[dict[str, Any]], metric: str, threshold: float,
                  names: tuple[str, str]) -> tuple[list[QualityDiff], list[str]]:
    """Per variant measured in both runs: B's figure against A's, tested; and notes on what was left out."""
    check_metric(metric)
    if threshold < 0:
        raise ValueError(f"quality threshold must be >= 0 (in the metric's units), got {threshold}")
    for name, q in zip(names, (qa, qb)):
        if not q or not q.get("variants"):
            raise AnalysisError(f"run {name} has no quality figures: cannot compare {metric}")
    z = z_value(CONFIDENCE)
    higher = metric in HIGHER_IS_BETTER
    rows, notes = [], []
    va, vb = qa["variants"], qb["variants"]
    for v in [v for v in va if v in vb]:
        xa, xb = figure(va[v], metric), figure(vb[v], metric)
        if xa is None or xb is None:
            notes.append(f"{v}: {metric} is not in both runs ({'A' if xa is None else 'B'} has none)")
            continue
        change = xb - xa
        sa, sb = _se(va[v], metric, z), _se(vb[v], metric, z)
        lo = hi = None
        significant: Optional[bool] = None
        test = "none"
        if sa is not None and sb is not None:
            half = z * math.sqrt(sa * sa + sb * sb)
            lo, hi, test = change - half, change + half, "intervals"
            significant = not (lo <= 0.0 <= hi)
        worse = (change < -threshold) if higher else (change > threshold)
        better = (change > threshold) if higher else (change < -threshold)
        rows.append(QualityDiff(v, metric, xa, xb, change, lo, hi, test, significant,
                                bool(worse and significant is not False), bool(better and significant is not False)))
    for v in sorted(set(va) ^ set(vb)):
        notes.append(f"{v}: quality only in run {'A' if v in va else 'B'}")
    return rows, notes


def gate_failures(qb: Optional[dict[str, Any]]) -> list[GateFailure]:
    """Every gate of run B's plan that a variant of B failed."""
    out = []
    for v, e in ((qb or {}).get("variants") or {}).items():
        for g in e.get("gates") or []:
            if g.get("passed") is False:
                out.append(GateFailure(v, g["gate"], g["metric"], g["limit"], g.get("value")))
    return out
