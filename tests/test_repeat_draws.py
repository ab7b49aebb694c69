"""A level's draws from its repeats: Student-t on the repeats' spread from three repeats, the block
bootstrap's mean below that."""

from __future__ import annotations

import numpy as np
import pytest
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
    # 100 +- 4.303 x 10 / sqrt(3) = 100 +- 24.84
    assert row.repeats == 3 and row.output_tokens_per_s == 100.0
    assert row.output_tokens_per_s_lo == pytest.approx(75.16, abs=0.3)
    assert row.output_tokens_per_s_hi == pytest.approx(124.84, abs=0.3)


def test_a_run_with_drifting_repeats_reports_their_spread(tmp_path):
    from scipy import stats

    from analysis import analyze, render_reports
    from analysis.pipeline import compute
    from tests.support.synthetic import RunModel, StepModel, build_run, plan_dict

    # the host slows and speeds up between repeats: gaps 4, 4.6 and 3.5 ms; each step alone is steady
    # (no jitter), so its block bootstrap is tight and cannot see the drift
    def steps(speed: float) -> list[StepModel]:
        return [StepModel(16, g / speed, g / speed, output_tokens=100, warmup_s=0.5, duration_s=6.0, repeat=i)
                for i, g in enumerate([0.004, 0.0046, 0.0035])]

    plan = plan_dict(["fp16", "awq"], baseline="fp16", sweep={"concurrency": [16], "repeats": 3})
    build_run(tmp_path / "run", RunModel(steps={"fp16": steps(1.0), "awq": steps(1.25)}, plan=plan))
    a = compute(tmp_path / "run", use_cache=False)
    fp16 = a.steps[a.steps.variant == "fp16"].output_tokens_per_s.to_numpy()
    assert fp16.max() / fp16.min() > 1.25
    half = stats.t.ppf(0.975, 2) * fp16.std(ddof=1) / np.sqrt(3)
    row = a.levels[a.levels.variant == "fp16"].iloc[0]
    assert row.output_tokens_per_s_lo == pytest.approx(fp16.mean() - half, rel=0.005)
    assert row.output_tokens_per_s_hi == pytest.approx(fp16.mean() + half, rel=0.005)
    # a single step's own interval is far narrower than the spread of the three
    lo0, hi0 = interval(a.draws[("fp16", 0)])
    assert hi0 - lo0 < (fp16.max() - fp16.min()) / 2
    summary = analyze(tmp_path / "run")
    assert summary.data["interval_source"] == {"fp16": {"16": "repeats"}, "awq": {"16": "repeats"}}
    sp = a.speedups.iloc[0]
    assert sp.speedup == pytest.approx(1.25, rel=0.02) and sp.speedup_lo < 1.1 and sp.speedup_hi > 1.4
    render_reports(tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    assert "every level has 3 or more repeats and takes its interval from the spread between its repeats" in md


def test_the_reports_say_which_levels_take_the_repeats_spread():
    from types import SimpleNamespace

    from analysis.report_tables import interval_note

    def note(repeats: list[int]) -> str:
        return interval_note(SimpleNamespace(levels=pd.DataFrame({"repeats": repeats})))

    assert note([1, 1]).startswith("95% intervals: a circular block bootstrap")
    assert "With sweep.repeats of 3 or more" in note([2, 2])
    assert "1 of 2 levels have 3 or more repeats" in note([3, 2])
    assert note([4, 3]).startswith("95% intervals: every level has 3 or more repeats")
