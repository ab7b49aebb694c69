"""Speedup intervals, threshold crossings, knees and capacity, on curves whose answers are known."""

import math

import numpy as np
import pytest

from analysis import analyze
from analysis.block_bootstrap import RESAMPLES, rate_draws
from analysis.speedup import (
    crossover,
    first_crossing,
    interval,
    knee,
    ratio_interval,
)
from tests.support.synthetic import RunModel, StepModel, build_run, plan_dict

# a speedup of 1.3 at 32 and this much at 64 crosses 1.2 at 48 exactly, interpolating in log2
S64 = 1.3 - 0.1 / (math.log2(48) - 5)


def test_crossing_is_interpolated_in_log2():
    level, start = first_crossing([16, 32, 64, 128], [1.4, 1.3, S64, 1.0], 1.2)
    assert level == pytest.approx(48.0) and not start
    assert first_crossing([16, 32], [1.4, 1.3], 1.2) == (None, False)
    assert first_crossing([1, 2, 4], [1.1, 1.0, 0.9], 1.2) == (1.0, True)
    # unsorted input and a missing value are fine
    assert first_crossing([64, 32, 16, 8], [S64, 1.3, float("nan"), 1.5], 1.2)[0] == pytest.approx(48.0)


def test_crossover_interval_comes_from_the_bound_curves():
    c = crossover([16, 32, 64], [1.4, 1.3, S64], [1.3, 1.15, 1.0], [1.5, 1.4, 1.25], 1.2)
    assert c.level == pytest.approx(48.0)
    assert c.low is not None and c.low < 48 < 64
    assert c.high is None  # the upper curve never falls below 1.2 within the steps


def test_knee_is_where_doubling_stops_paying():
    assert knee([1, 2, 4, 8, 16], [100, 200, 400, 420, 430]) == 4
    assert knee([1, 2, 4], [100, 200, 400]) is None
    assert knee([1, 4, 16], [100, 390, 400]) == 4  # 1.95x over two doublings still pays 40% per doubling


SHORT = np.full(8, 0.1)  # requests far shorter than a slice: blocks of one slice


def test_bootstrap_is_reproducible_and_covers_the_rate():
    rng = np.random.default_rng(1)
    slices = rng.poisson(100, size=50).astype(float)
    a = rate_draws(slices, 10.0, SHORT, np.random.default_rng(5))
    b = rate_draws(slices, 10.0, SHORT, np.random.default_rng(5))
    assert a.shape == (RESAMPLES,) and np.array_equal(a, b)
    lo, hi = interval(a)
    assert lo < slices.sum() / 10 < hi
    # the interval of a sum of 50 Poisson(100) slices is about +-2 standard errors
    assert (hi - lo) / 2 == pytest.approx(1.96 * math.sqrt(50 * 100) / 10, rel=0.25)
    assert np.isnan(rate_draws(np.zeros(0), 10.0, SHORT, rng)).all()


def test_ratio_interval_of_equal_rates_contains_one():
    rng = np.random.default_rng(2)
    x = rate_draws(rng.poisson(50, 50).astype(float), 1.0, SHORT / 10, rng)
    y = rate_draws(rng.poisson(50, 50).astype(float), 1.0, SHORT / 10, rng)
    lo, hi = ratio_interval(x, y)
    assert lo < 1.0 < hi


def _gap(c: int) -> float:
    return 0.004 * (1 + c / 32)


SPEEDUP = {8: 1.5, 16: 1.4, 32: 1.3, 64: S64, 128: 1.0}


def _model(jitter: float = 0.2) -> RunModel:
    base = [StepModel(c, _gap(c), _gap(c), output_tokens=200, jitter=jitter, warmup_s=1.0, duration_s=20.0)
            for c in SPEEDUP]
    fast = [StepModel(c, _gap(c) / s, _gap(c) / s, output_tokens=200, jitter=jitter, warmup_s=1.0, duration_s=20.0)
            for c, s in SPEEDUP.items()]
    return RunModel(steps={"fp16": base, "awq": fast}, plan=plan_dict(["fp16", "awq"], baseline="fp16"))


def test_a_curve_built_to_cross_1_2_at_48_is_reported_there(tmp_path):
    build_run(tmp_path / "run", _model())
    s = analyze(tmp_path / "run")
    x = s.crossover["awq"]["1.2"]
    assert x == pytest.approx(48, abs=2)
    lo, hi = s.data["crossover_interval"]["awq"]["1.2"]
    assert lo <= 48 <= hi
    # one step a level: every interval is the step's block bootstrap
    assert s.data["interval_source"]["awq"] == {str(c): "block bootstrap" for c in SPEEDUP}
    # the measured speedups are the ones built in
    for c, want in SPEEDUP.items():
        assert s.speedup["awq"][str(c)] == pytest.approx(want, rel=0.02)
    assert s.crossover["awq"]["1.5"] is not None and s.crossover["awq"]["1.5"] <= 16
    assert s.crossover["awq"]["1.0"] is None  # 1.0 at 128 is not below 1.0
    assert "falls below 1.2x at 48" in s.verdict or "falls below 1.2x at 47" in s.verdict or \
        "falls below 1.2x at 49" in s.verdict


def test_throughput_matches_the_model(tmp_path):
    build_run(tmp_path / "run", _model(jitter=0.0))
    s = analyze(tmp_path / "run")
    for step in s.data["variants"]["fp16"]["steps"]:
        c = step["concurrency"]
        assert step["output_tokens_per_s"] == pytest.approx(c / _gap(c), rel=0.01)
        assert step["output_tokens_per_s_lo"] <= step["output_tokens_per_s"] <= step["output_tokens_per_s_hi"]
        assert step["itl_p50_s"] == pytest.approx(_gap(c), rel=1e-5)


def test_capacity_under_the_slo(tmp_path):
    # an 11 ms inter-token limit holds up to concurrency 32 for fp16 (gaps 5, 6, 8, 12, 20 ms)
    model = _model(jitter=0.0)
    model.plan = plan_dict(["fp16", "awq"], baseline="fp16", slo={"ttft_s": 1.0, "itl_s": 0.011})
    build_run(tmp_path / "run", model)
    s = analyze(tmp_path / "run")
    cap = s.data["variants"]["fp16"]["capacity"]
    assert cap["level"] == 32 and cap["slo_break"] == 64
    assert cap["output_tokens_per_s"] == pytest.approx(32 / _gap(32), rel=0.01)
    cap_awq = s.data["variants"]["awq"]["capacity"]
    assert cap_awq["level"] == 64  # awq (10.6 ms at 64) holds one step further
    assert "awq sustains the most" in s.verdict
