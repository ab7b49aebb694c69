"""Speedup over the baseline with a confidence interval, where it crosses thresholds, knees, capacity.

Each step's throughput comes with bootstrap draws from analysis.block_bootstrap (circular blocks of
time slices, each block at least one request's lifetime long; its docstring and docs/analysis.md
say why, and what its measured coverage is). Variant and baseline are resampled independently; the
interval of the speedup is the 2.5th to 97.5th percentile of the ratio of their draws. A level with
repeats takes its draws from analysis.repeat_draws (the spread between repeats from three on).

A crossover is the lowest load where the speedup falls below a threshold, interpolated linearly
in log2(load) between the last step above and the first below; its interval comes from the same
crossing on the lower and upper bound curves.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from analysis.repeat_draws import level_draws as repeat_level_draws

CONFIDENCE = 0.95
KNEE_GAIN = 0.10  # throughput growth per doubling of load below which the curve has flattened
SLO_ATTAINMENT = 0.90  # share of requests meeting the SLO for a step to count as within it


def seed_for(*parts: object) -> int:
    """A stable seed per step, so the same results directory always gives the same intervals."""
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def interval(draws: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    d = draws[np.isfinite(draws)]
    if d.size == 0:
        return np.nan, np.nan
    a = (1 - confidence) / 2
    lo, hi = np.percentile(d, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def ratio_interval(num: np.ndarray, den: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    return interval(r, confidence)


@dataclass(frozen=True)
class Crossing:
    """Where a curve falls below a threshold; interval from the bound curves (None: not within the steps)."""

    threshold: float
    level: Optional[float]
    low: Optional[float]
    high: Optional[float]
    below_from_start: bool = False

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "level": self.level, "low": self.low, "high": self.high,
                "below_from_start": self.below_from_start}


def first_crossing(levels: Sequence[float], values: Sequence[float], threshold: float) -> tuple[Optional[float], bool]:
    """Lowest level where values fall below threshold, log2-interpolated; (None, False) if never.

    The flag is True when the first step is already below (the crossing is at or before it).
    """
    x = np.asarray(levels, dtype=float)
    y = np.asarray(values, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    if x.size == 0:
        return None, False
    order = np.argsort(x)
    x, y = x[order], y[order]
    below = np.nonzero(y < threshold)[0]
    if below.size == 0:
        return None, False
    i = int(below[0])
    if i == 0:
        return float(x[0]), True
    lx0, lx1 = math.log2(x[i - 1]), math.log2(x[i])
    y0, y1 = y[i - 1], y[i]
    frac = (y0 - threshold) / (y0 - y1) if y0 != y1 else 1.0
    return float(2 ** (lx0 + frac * (lx1 - lx0))), False


def crossover(levels: Sequence[float], speedup: Sequence[float], lo: Sequence[float], hi: Sequence[float],
              threshold: float) -> Crossing:
    """The crossing of the point estimate, with the crossings of the lower and upper bound curves."""
    level, start = first_crossing(levels, speedup, threshold)
    low, _ = first_crossing(levels, lo, threshold)
    high, _ = first_crossing(levels, hi, threshold)
    return Crossing(threshold, level, low, high, start)


def knee(levels: Sequence[float], throughput: Sequence[float], gain: float = KNEE_GAIN) -> Optional[float]:
    """The load beyond which doubling it adds less than `gain` throughput; None if it keeps growing."""
    x = np.asarray(levels, dtype=float)
    y = np.asarray(throughput, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    order = np.argsort(x)
    x, y = x[order], y[order]
    for i in range(1, x.size):
        doublings = math.log2(x[i] / x[i - 1])
        if doublings <= 0:
            continue
        per_doubling = (y[i] / y[i - 1]) ** (1.0 / doublings) - 1.0
        if per_doubling < gain:
            return float(x[i - 1])
    return None


def level_table(steps: pd.DataFrame, draws: dict[tuple[str, int], np.ndarray]
                ) -> tuple[pd.DataFrame, dict[tuple[str, float], np.ndarray]]:
    """One row per (variant, level): repeats averaged, with the interval of throughput.

    Only complete steps count; a failed or interrupted step stays in the step table but not in the
    curves. Also returns each level's draws (analysis.repeat_draws: the steps' block-bootstrap draws,
    or the spread between repeats where there are enough).
    """
    ok = steps[steps["status"].isin(["complete", "unlisted"]) & steps["level"].notna()]
    numeric = [c for c in ok.columns if pd.api.types.is_numeric_dtype(ok[c]) and c not in ("step", "repeat", "level")]
    rows = []
    level_draws: dict[tuple[str, float], np.ndarray] = {}
    for (variant, level), g in ok.groupby(["variant", "level"], sort=False):
        row = {"variant": variant, "level": float(level), "repeats": len(g)}
        row.update(g[numeric].mean(numeric_only=True).to_dict())
        ds = [draws[(variant, int(s))] for s in g["step"] if (variant, int(s)) in draws]
        d = repeat_level_draws(g["output_tokens_per_s"].tolist(), ds,
                               np.random.default_rng(seed_for("level", variant, float(level))))
        level_draws[(variant, float(level))] = d
        row["output_tokens_per_s_lo"], row["output_tokens_per_s_hi"] = interval(d)
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        out = out.sort_values(["variant", "level"], kind="stable").reset_index(drop=True)
    return out, level_draws


def speedup_table(levels: pd.DataFrame, draws: dict[tuple[str, float], np.ndarray], baseline: str,
                  metric: str = "output_tokens_per_s") -> pd.DataFrame:
    """Speedup of every other variant over the baseline at each level both ran, with its interval."""
    cols = ["variant", "level", "speedup", "speedup_lo", "speedup_hi", "value", "baseline_value"]
    if levels.empty:
        return pd.DataFrame(columns=cols)
    base = levels[levels.variant == baseline].set_index("level")
    rows = []
    for r in levels[levels.variant != baseline].itertuples(index=False):
        if r.level not in base.index:
            continue
        b = base.loc[r.level, metric]
        v = getattr(r, metric)
        s = v / b if b and b > 0 else np.nan
        lo, hi = ratio_interval(draws.get((r.variant, r.level), np.full(1, np.nan)),
                                draws.get((baseline, r.level), np.full(1, np.nan)))
        rows.append({"variant": r.variant, "level": r.level, "speedup": s, "speedup_lo": lo, "speedup_hi": hi,
                     "value": v, "baseline_value": b})
    return pd.DataFrame(rows, columns=cols)


def crossovers(speedups: pd.DataFrame, thresholds: Sequence[float]) -> dict[str, dict[float, Crossing]]:
    out: dict[str, dict[float, Crossing]] = {}
    for variant, g in speedups.groupby("variant", sort=False):
        g = g.sort_values("level")
        out[str(variant)] = {t: crossover(g.level, g.speedup, g.speedup_lo, g.speedup_hi, t) for t in thresholds}
    return out


@dataclass(frozen=True)
class Capacity:
    """The most a variant delivered while its requests still met the SLO."""

    variant: str
    level: Optional[float]  # load level of the best step within the SLO
    output_tokens_per_s: Optional[float]
    goodput_tokens_per_s: Optional[float]
    slo_break: Optional[float]  # lowest load where attainment fell below SLO_ATTAINMENT
    knee: Optional[float]
    peak_level: Optional[float]
    peak_output_tokens_per_s: Optional[float]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def capacities(levels: pd.DataFrame, attainment: float = SLO_ATTAINMENT) -> dict[str, Capacity]:
    out: dict[str, Capacity] = {}
    for variant, g in levels.groupby("variant", sort=False):
        g = g.sort_values("level")
        within = g[g.slo_attainment >= attainment]
        broke = g[g.slo_attainment < attainment]
        best = within.loc[within.output_tokens_per_s.idxmax()] if len(within) and within.output_tokens_per_s.notna().any() else None
        peak = g.loc[g.output_tokens_per_s.idxmax()] if g.output_tokens_per_s.notna().any() else None
        out[str(variant)] = Capacity(
            variant=str(variant),
            level=float(best.level) if best is not None else None,
            output_tokens_per_s=float(best.output_tokens_per_s) if best is not None else None,
            goodput_tokens_per_s=float(best.goodput_tokens_per_s) if best is not None else None,
            slo_break=float(broke.level.iloc[0]) if len(broke) else None,
            knee=knee(g.level, g.output_tokens_per_s),
            peak_level=float(peak.level) if peak is not None else None,
            peak_output_tokens_per_s=float(peak.output_tokens_per_s) if peak is not None else None,
        )
    return out
