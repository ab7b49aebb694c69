"""A level's draws from its repeats: Student-t on the repeats' spread from three repeats, the block
bootstrap's mean below that."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.repeat_draws import MIN_REPEATS, level_draws
from analysis.speedup import interval, level_table


def test_three_repeats_give_the_t_interval_of_their_mean() -> None:
    # mean 102, s = 2, k = 3: 102 +- t(0.975, 2) x 2 / sqrt(3) = 102 +- 4.303 x 1.1547 = 102 +- 4.968
    d = level_draws([100.0, 102.0, 104.0], [np.full(10, 1.0)] * 3, np.random.default_rng(1), resamples=400_000)
    lo, hi = interval(d)
    assert abs(lo - 97.03) < 0.15 and abs(hi - 106.97) < 0.15


def test_fewer_repeats_keep_the_block_bootstrap_draws() -> None:
    a, b = np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0, 5.0])
    assert MIN_REPEATS == 3
    assert np.allclose(level_draws([2.0, 4.0], [a, b], np.random.default_rng(0), resamples=3), [2.0, 3.0, 4.0])
    assert np.isnan(level_draws([], [], np.random.default_rng(0), resamples=4)).all()


def test_a_failed_repeat_does_not_count() -> None:
    # two finite values are below MIN_REPEATS: the step draws' mean, not a t interval on [10, 12]
    d = level_draws([10.0, float("nan"), 12.0], [np.full(5, 11.0)], np.random.default_rng(0), resamples=5)
    assert np.allclose(d, 11.0)


def test_the_interval_holds_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    held = 0
    trials = 2000
    for _ in range(trials):
        vals = rng.normal(500.0, 20.0, size=4)
        lo, hi = interval(level_draws(list(vals), [], rng, resamples=2000))
        held += lo <= 500.0 <= hi
    assert 0.93 <= held / trials <= 0.97


def test_level_table_uses_the_repeats_spread() -> None:
    steps = pd.DataFrame({"variant": ["a"] * 3, "step": [0, 1, 2], "repeat": [0, 1, 2], "level": [8.0] * 3,
                          "status": ["complete"] * 3, "output_tokens_per_s": [90.0, 100.0, 110.0]})
    # every step's own block-bootstrap draws are tight around its value; the repeats spread 10
    draws = {("a", i): np.full(1000, v) for i, v in enumerate([90.0, 100.0, 110.0])}
    levels, _ = level_table(steps, draws)
    row = levels.iloc[0]
    # 100 +- 4.303 x 10 / sqrt(3) = 100 +- 24.8, within the sampling error of 1000 t draws
    assert row.repeats == 3 and row.output_tokens_per_s == 100.0
    assert 70 < row.output_tokens_per_s_lo < 80 and 120 < row.output_tokens_per_s_hi < 130
