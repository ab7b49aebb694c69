"""`ridgeline compare` gates quality as it gates speed: a quality figure of B against A, and B's plan gates."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from analysis import compare
from tests.support.synthetic import RunModel, StepModel, build_run, plan_dict
from loadtest.cli import app
from tests.support.quality_rows import add_quality


def _build(path, damage, seed, gates=None):
    steps = {v: [StepModel(c, 0.005 * (1 + c / 32) / s, 0.02, output_tokens=30, warmup_s=0.3, duration_s=2.0)
                 for c in (2, 8)] for v, s in (("fp16", 1.0), ("awq", 1.5))}
    run = build_run(path, RunModel(steps=steps, plan=plan_dict(["fp16", "awq"]), seed=seed))
    if damage is not None:
        add_quality(run.path, {"fp16": 0.0, "awq": damage}, docs=12)
    if gates:
        m = json.loads((run.path / "manifest.json").read_text())
        m["plan"]["quality"] = {"gates": gates, "task": {"scorer": "numeric"}}
        (run.path / "manifest.json").write_text(json.dumps(m))
    return run.path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("qcompare")
    return {"a": _build(root / "a", 0.3, 1), "same": _build(root / "same", 0.3, 2),
            "worse": _build(root / "worse", 2.0, 3), "none": _build(root / "none", None, 4),
            "gated": _build(root / "gated", 0.3, 5, gates={"max_ppl_increase_pct": 0.1})}


def _cli(*args):
    return CliRunner().invoke(app, ["compare", *map(str, args)], catch_exceptions=False)


def test_same_quality_is_no_regression(runs):
    res = compare(runs["a"], runs["same"], quality_metric="ppl_change_pct")
    (row,) = res.quality_rows
    assert row.variant == "awq" and row.change == pytest.approx(0.0, abs=1e-9)
    assert not row.regression and res.exit_code() == 0


def test_damaged_quality_is_a_significant_regression(runs):
    res = compare(runs["a"], runs["worse"], quality_metric="ppl_change_pct", quality_threshold=1.0)
    (row,) = res.quality_rows
    assert row.b > row.a + 1.0 and row.significant and row.regression
    assert res.exit_code() == 1
    # the other way round it is an improvement, not a regression
    back = compare(runs["worse"], runs["a"], quality_metric="ppl_change_pct")
    assert back.quality_rows[0].improvement and back.exit_code() == 0


def test_higher_is_better_figures_regress_downwards(runs):
    res = compare(runs["a"], runs["worse"], quality_metric="first_token_agreement", quality_threshold=0.05)
    (row,) = res.quality_rows
    assert row.b < row.a and row.regression


def test_cli_gates_quality_with_exit_code(runs):
    r = _cli(runs["a"], runs["worse"], "--quality-metric", "ppl_change_pct", "--quality-threshold", "1")
    assert r.exit_code == 1 and "REGRESSION" in r.output and "quality regression(s) beyond 1" in r.output
    r = _cli(runs["a"], runs["same"], "--quality-metric", "ppl_change_pct")
    assert r.exit_code == 0 and "no quality regression" in r.output


def test_a_failed_plan_gate_of_b_fails_compare(runs):
    r = _cli(runs["a"], runs["gated"])
    assert r.exit_code == 1 and "QUALITY GATE FAILED in B: awq max_ppl_increase_pct 0.1" in r.output


def test_bad_quality_requests_are_exit_code_2(runs):
    r = _cli(runs["a"], runs["same"], "--quality-metric", "bleu")
    assert r.exit_code == 2 and "quality metric 'bleu' is not known" in r.output and "ppl_change_pct" in r.output
    r = _cli(runs["a"], runs["none"], "--quality-metric", "ppl_change_pct")
    assert r.exit_code == 2 and "run B has no quality figures" in r.output
