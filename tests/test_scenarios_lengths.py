"""Length distributions: moments and limits, reproducible by seed."""

import numpy as np
import pytest

from core.plan import LengthSpec
from scenarios.lengths import sample_lengths

N = 100_000


def draw(**kw):
    return sample_lengths(LengthSpec(**kw), N, np.random.default_rng(7))


def test_fixed():
    x = draw(dist="fixed", value=300)
    assert (x == 300).all()


def test_uniform_covers_its_bounds_evenly():
    x = draw(dist="uniform", min=100, max=200)
    assert x.min() == 100 and x.max() == 200
    assert x.mean() == pytest.approx(150, rel=0.01)
    assert x.var() == pytest.approx((101 ** 2 - 1) / 12, rel=0.03)


def test_normal_moments_and_clip():
    x = draw(dist="normal", mean=500, std=50)
    assert x.mean() == pytest.approx(500, rel=0.01)
    assert x.std() == pytest.approx(50, rel=0.02)
    y = draw(dist="normal", mean=500, std=200, min=400, max=550)
    assert y.min() == 400 and y.max() == 550


def test_lognormal_median_is_mean_parameter_and_sigma_is_log_spread():
    x = draw(dist="lognormal", mean=256, sigma=0.5)
    assert np.median(x) == pytest.approx(256, rel=0.02)
    assert np.log(x).std() == pytest.approx(0.5, rel=0.03)
    assert x.min() >= 1


def test_lengths_are_at_least_one_and_seeded():
    x = draw(dist="normal", mean=2, std=10)
    assert x.min() >= 1
    assert (draw(dist="normal", mean=50, std=5) == draw(dist="normal", mean=50, std=5)).all()


def test_incomplete_and_dataset_specs_fail():
    with pytest.raises(ValueError, match="needs sigma"):
        LengthSpec(dist="lognormal", mean=3)
    with pytest.raises(ValueError, match="dataset"):
        sample_lengths(LengthSpec(dist="dataset"), 3, np.random.default_rng(0))
