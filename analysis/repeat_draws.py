"""A load level's throughput draws from its repeats: the spread between repeats where there are enough.

One run's block bootstrap (analysis.block_bootstrap) sees only what varies inside a step. Two things
it cannot see are measured by repeats, which the sweep interleaves (every level once, then every
level again), so they sit minutes apart:

- drift from one part of a run to the next (a shared host's speed, another tenant, clocks); one
  step's window holds a single value of it, so its interval is too narrow;
- structure that repeats identically in every run (a closed loop's waves starting from an idle
  server, a deterministic engine): the blocks differ from one another, but the same way every time,
  so the interval is too wide.

With MIN_REPEATS or more complete repeats of a level, its draws are therefore the repeats' mean
plus Student-t quantiles (in random order) scaled by their standard error (s / sqrt(k), k - 1
degrees of freedom): exact for independent, normally spread repeats, and wide when only a few are
there (k = 3 multiplies s / sqrt(k) by 4.3 at 95%). With fewer repeats a level's draws are the mean of its steps' block-bootstrap
draws. benchmarks/interval_coverage.py (`--repeats`) measures how often either holds the mean of
other runs; docs/analysis.md has the tables.

Every throughput, speedup and crossover interval and `ridgeline compare` take a level's draws from
here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from analysis.block_bootstrap import RESAMPLES

MIN_REPEATS = 3  # below this the spread of the repeats is too loose a guide (k = 2: t at 95% is 12.7)
FROM_REPEATS = "repeats"
FROM_BLOCKS = "block bootstrap"


def source(repeats: int) -> str:
    """Where a level's interval comes from, given how many complete repeats it has (what the reports
    and summary.json's interval_source say)."""
    return FROM_REPEATS if repeats >= MIN_REPEATS else FROM_BLOCKS


def level_draws(values: Sequence[float], step_draws: Sequence[np.ndarray], rng: np.random.Generator,
                resamples: int = RESAMPLES) -> np.ndarray:
    """Draws of a level's throughput (the mean of its repeats' values).

    values: each complete repeat's measured throughput (a NaN one does not count); step_draws: the
    block-bootstrap draws of the repeats that have them, averaged when fewer than MIN_REPEATS values
    count; rng: seeded per level so a directory always gives the same intervals. Returns `resamples`
    draws, NaN when nothing was measured.
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if source(v.size) == FROM_REPEATS:
        from scipy import stats

        k = v.size
        # the t distribution's quantiles at evenly spaced probabilities, in random order: the level's own
        # interval is then exact (1000 random t draws with 2 degrees of freedom put its 97.5th percentile
        # 10% off), and pairing them at random with another level's draws still samples the ratio
        # (probabilities i / (n - 1), as np.percentile reads the i-th of n sorted values; the two ends,
        # 0 and 1, are moved in by a quarter step to stay finite)
        p = np.clip(np.arange(resamples) / (resamples - 1), 0.25 / resamples, 1 - 0.25 / resamples)
        t = stats.t.ppf(p, k - 1)
        return v.mean() + v.std(ddof=1) / math.sqrt(k) * rng.permutation(t)
    if not step_draws:
        return np.full(resamples, np.nan)
    return np.mean(step_draws, axis=0)
