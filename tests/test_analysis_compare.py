"""Comparing two runs: differences per step, their significance, regressions and the exit code."""

import pytest

from analysis import compare, compare_cli
from tests.support.synthetic import RunModel, StepModel, build_run, plan_dict

LEVELS = (2, 8, 32)


def _build(path, awq_speed: float, ttft: float = 0.02, seed: int = 0):
    steps = {
        "fp16": [StepModel(c, 0.005 * (1 + c / 32), ttft, output_tokens=(40, 80), jitter=0.3, warmup_s=0.5,
                           duration_s=5.0) for c in LEVELS],
        "awq": [StepModel(c, 0.005 * (1 + c / 32) / awq_speed, ttft, output_tokens=(40, 80), jitter=0.3, warmup_s=0.5,
                          duration_s=5.0) for c in LEVELS],
    }
    return build_run(path, RunModel(steps=steps, plan=plan_dict(["fp16", "awq"]), seed=seed)).path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    return {
        "a": _build(root / "a", 1.5, seed=1),
        "same": _build(root / "same", 1.5, seed=2),
        "slower": _build(root / "slower", 1.2, seed=3),
        "late": _build(root / "late", 1.5, ttft=0.2, seed=4),
    }


def test_a_rerun_of_the_same_model_has_no_regression(runs):
    res = compare(runs["a"], runs["same"])
    assert len(res.rows) == 2 * len(LEVELS)
    assert res.exit_code() == 0
    for r in res.rows:
        assert abs(r.change) < 0.05


def test_a_run_against_a_copy_of_itself_still_carries_both_runs_noise(runs, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs["a"], copy)
    res = compare(runs["a"], copy)
    for r in res.rows:
        assert r.change == 0.0 and r.test == "bootstrap"
        # the two runs are resampled independently: an interval around 0, not the point 0
        assert r.change_lo < 0.0 < r.change_hi and r.significant is False, (r.variant, r.level, r.change_lo)


def test_slower_throughput_is_a_significant_regression(runs):
    res = compare(runs["a"], runs["slower"], threshold=0.05)
    awq = [r for r in res.rows if r.variant == "awq"]
    fp16 = [r for r in res.rows if r.variant == "fp16"]
    assert all(r.regression and r.significant and r.test == "bootstrap" for r in awq)
    assert all(r.change == pytest.approx(1.2 / 1.5 - 1, abs=0.03) for r in awq)
    assert all(r.change_hi < 0 for r in awq)
    assert not any(r.regression for r in fp16)
    assert res.exit_code() == 1
    # the other way round it is an improvement, not a regression
    back = compare(runs["slower"], runs["a"])
    assert back.exit_code() == 0 and all(r.improvement for r in back.rows if r.variant == "awq")


def test_a_larger_threshold_tolerates_the_change(runs):
    assert compare(runs["a"], runs["slower"], threshold=0.5).exit_code() == 0


def test_latency_metrics_use_welch_and_lower_is_better(runs):
    res = compare(runs["a"], runs["late"], metric="ttft_p50_s")
    assert not res.higher_is_better
    assert all(r.test == "welch" and r.p_value < 0.01 and r.regression for r in res.rows)
    assert res.exit_code() == 1


def test_cli_prints_a_table_and_returns_the_exit_code(runs, capsys):
    assert compare_cli(runs["a"], runs["slower"], "output_tokens_per_s", 0.05) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "awq" in out
    assert compare_cli(runs["a"], runs["same"], "output_tokens_per_s", 0.05) == 0
    assert "no regression" in capsys.readouterr().out


def test_cli_bad_input_is_exit_code_2(runs, tmp_path, capsys):
    assert compare_cli(runs["a"], tmp_path / "nothing", "output_tokens_per_s", 0.05) == 2
    assert "no such results directory" in capsys.readouterr().err
    assert compare_cli(runs["a"], runs["same"], "no_such_metric", 0.05) == 2
    assert "no_such_metric" in capsys.readouterr().err
    with pytest.raises(ValueError, match="threshold"):
        compare(runs["a"], runs["same"], threshold=-1)
