"""summary.json's quality section and the verdict, on a modelled run with quality rows beside its steps."""

from __future__ import annotations

import json
import re

import pytest

from analysis import analyze
from tests.support.synthetic import RunModel, StepModel, build_run, plan_dict
from tests.support.quality_rows import add_quality, write_variant


def _steps(speed):
    return [StepModel(c, 0.004 * (1 + c / 16) / speed, 0.02, output_tokens=30, warmup_s=0.3, duration_s=2.0)
            for c in (1, 8)]


def _run(path, quality=True):
    steps = {"fp16": _steps(1.0), "awq": _steps(1.5), "dummy": _steps(1.2)}
    run = build_run(path, RunModel(steps=steps, plan=plan_dict(list(steps), baseline="fp16")))
    if quality:
        add_quality(run.path, {"fp16": 0.0, "awq": 0.8}, {"dummy": "dummy weights (--load-format dummy)"})
    return run.path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("qsummary")
    with_q, without = _run(root / "with"), _run(root / "without", quality=False)
    return analyze(with_q).to_dict(), analyze(without).to_dict(), with_q


def test_existing_keys_are_unchanged_and_quality_is_added(runs):
    sq, s0, _ = runs
    assert s0["quality"] is None
    assert set(sq) == set(s0)
    for key in ("baseline", "speedup", "crossover", "variants", "speedup_interval"):
        assert sq[key] == s0[key]


def test_quality_section_per_variant(runs):
    q = runs[0]["quality"]
    assert q["baseline"] == "fp16" and q["kl_tail"].startswith("top-k")
    awq = q["variants"]["awq"]
    assert awq["status"] == "measured" and awq["weights"] == "real"
    assert awq["deltas"]["ppl_change_pct"] > 0
    lo, hi = awq["intervals"]["ppl_change_pct"]
    assert 0 < lo < awq["deltas"]["ppl_change_pct"] < hi  # damage made every document worse
    assert awq["deltas"]["kl_mean"] > 0 and 0 <= awq["deltas"]["first_token_agreement"] < 1
    assert awq["deltas"]["accuracy_delta_points"] < 0
    assert q["variants"]["fp16"]["deltas"] == {} and q["variants"]["fp16"]["metrics"]["ppl"] > 1
    assert set(q["variants"]["fp16"]["intervals"]) == {"nll", "ppl", "accuracy"}  # no agreement with itself
    dummy = q["variants"]["dummy"]
    assert dummy["status"] == "not_measured" and dummy["metrics"] == {}
    assert dummy["message"] == "quality not measured: dummy weights (--load-format dummy)"


def test_summary_json_on_disk_holds_the_section(runs):
    on_disk = json.loads((runs[2] / "summary.json").read_text())
    assert on_disk["quality"]["variants"]["awq"]["deltas"] == runs[0]["quality"]["variants"]["awq"]["deltas"]


def test_verdict_states_speed_and_quality_per_variant(runs):
    s = runs[0]
    awq = s["quality"]["verdict"]["awq"]
    sp = s["speedup"]["awq"]
    assert awq.startswith(f"awq: {sp['1']:.2f}x at concurrency 1, {sp['8']:.2f}x at 8; perplexity +")
    assert re.search(r"perplexity \+\d+\.\d% \(\+\d+\.\d to \+\d+\.\d%\)", awq)
    assert "greedy agreement" in awq and re.search(r"task accuracy -\d+\.\d points \(", awq)
    assert s["quality"]["verdict"]["dummy"].endswith("quality not measured: dummy weights (--load-format dummy)")
    assert awq + "." in s["verdict"]


def test_a_gate_failure_is_in_the_verdict(tmp_path):
    path = _run(tmp_path / "run")
    m = json.loads((path / "manifest.json").read_text())
    m["plan"]["quality"] = {"baseline": "fp16", "gates": {"max_ppl_increase_pct": 0.5}, "task": {"scorer": "numeric"}}
    (path / "manifest.json").write_text(json.dumps(m))
    s = analyze(path).to_dict()
    assert "gate max_ppl_increase_pct 0.5% FAILED" in s["quality"]["verdict"]["awq"]
    assert "gate_failed:max_ppl_increase_pct" in s["quality"]["variants"]["awq"]["flags"]


def test_unusable_rows_keep_the_speed_analysis(tmp_path):
    path = _run(tmp_path / "run")
    write_variant(path, "awq", likelihood=[{"doc_id": "doc0", "position": 1, "token": "token_id:99999",
                                            "logprob": -1.0, "top_tokens": [], "top_logprobs": []}])
    s = analyze(path).to_dict()
    assert s["speedup"]["awq"]["1"] > 1
    assert s["quality"]["variants"]["awq"]["status"] == "invalid"
    assert any("quality of awq" in w and "doc0" in w for w in s["warnings"])
