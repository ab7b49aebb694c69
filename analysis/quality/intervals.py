"""Intervals for quality figures, with the independent unit made explicit.

Documents, prompts and task items are the independent units: tokens of one document share its
topic and its errors, so resampling tokens would give intervals far too narrow. Token-weighted
means over documents are ratio estimators (sum over documents of a per-document total, over the
sum of their token counts); their interval is a percentile bootstrap that resamples whole
documents. Proportions over items use closed forms that can be checked by hand: Wilson's score
interval for one proportion, and Agresti and Min's adjusted Wald interval for the paired
difference of two proportions on the same items (the McNemar setting).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Optional

import numpy as np

from analysis.speedup import seed_for

RESAMPLES = 2000
Interval = tuple[Optional[float], Optional[float]]


def z_value(confidence: float) -> float:
    """The two-sided normal quantile: 1.959964 for 0.95."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson's score interval for a proportion (None, None without items)."""
    if n <= 0:
        return None, None
    z = z_value(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_proportion_difference(a: np.ndarray, b: np.ndarray, confidence: float = 0.95
                                 ) -> tuple[Optional[float], Interval]:
    """Mean of a - b for paired 0/1 outcomes, with Agresti and Min's interval.

    Only the discordant items inform the difference: n10 (a right, b wrong) and n01. Each of the
    four cells of the 2x2 table gets half an observation added before the Wald interval, which
    keeps its coverage near nominal for small samples and for differences near 0 or +-1.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    n = a.size
    if n == 0:
        return None, (None, None)
    n10 = float(np.sum(a & ~b))
    n01 = float(np.sum(~a & b))
    diff = (n10 - n01) / n
    n_adj = n + 2.0
    d_adj = ((n10 + 0.5) - (n01 + 0.5)) / n_adj
    var = ((n10 + 0.5) + (n01 + 0.5) - n_adj * d_adj * d_adj) / (n_adj * n_adj)
    half = z_value(confidence) * math.sqrt(max(var, 0.0))
    return diff, (max(-1.0, d_adj - half), min(1.0, d_adj + half))


def cluster_ratio_draws(totals: np.ndarray, counts: np.ndarray, *seed: object,
                        resamples: int = RESAMPLES) -> np.ndarray:
    """Bootstrap draws of sum(totals) / sum(counts), resampling whole clusters (documents)."""
    totals = np.asarray(totals, dtype=float)
    counts = np.asarray(counts, dtype=float)
    k = totals.size
    if k == 0:
        return np.full(resamples, np.nan)
    rng = np.random.default_rng(seed_for("quality", *seed))
    idx = rng.integers(0, k, size=(resamples, k))
    num = totals[idx].sum(axis=1)
    den = counts[idx].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def mean_draws(values: np.ndarray, *seed: object, resamples: int = RESAMPLES) -> np.ndarray:
    """Bootstrap draws of the mean of independent per-unit values."""
    values = np.asarray(values, dtype=float)
    return cluster_ratio_draws(values, np.ones_like(values), *seed, resamples=resamples)


def percentile_interval(draws: np.ndarray, confidence: float = 0.95) -> Interval:
    d = np.asarray(draws, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None, None
    tail = (1 - confidence) / 2
    lo, hi = np.percentile(d, [100 * tail, 100 * (1 - tail)])
    return float(lo), float(hi)
