import pytest

from core.plan import PlanError, load_plan, parse_plan

GOOD = """
name: t1
variants:
  - name: fp16
  - name: awq
sweep:
  concurrency: [1, 4]
  duration_s: 2
"""


def test_good_plan_has_defaults():
    plan = parse_plan(GOOD, "good.yaml")
    assert plan.baseline == "fp16"
    assert plan.sweep.levels() == [1.0, 4.0]
    assert plan.scenario.prompt_tokens.value == 512
    assert plan.thresholds == [1.5, 1.2, 1.0]


def test_typo_three_levels_deep_names_file_path_and_line():
    text = GOOD + "scenario:\n  prompt_tokens:\n    dist: fixed\n    vaule: 3\n"
    with pytest.raises(PlanError) as ei:
        parse_plan(text, "p.yaml")
    msg = str(ei.value)
    assert "p.yaml" in msg
    assert "scenario.prompt_tokens.vaule" in msg
    assert "line 12" in msg
    assert "did you mean 'value'" in msg


@pytest.mark.parametrize(
    "snippet, path, why",
    [
        ("sweep:\n  concurrency: []\n", "sweep", "no steps"),
        ("sweep:\n  concurrency: [1, -2]\n", "sweep.concurrency", "at least 1"),
        ("sweep:\n  concurrency: [1, x]\n", "sweep.concurrency.1", "integer"),
        ("baseline: nope\n", "(top)", "not one of the variants"),
        ("name: ../../etc\n", "name", "cannot hold a path"),
    ],
)
def test_wrong_plans_fail_with_key_path(snippet, path, why):
    base = "variants:\n  - name: fp16\n"
    with pytest.raises(PlanError) as ei:
        parse_plan(base + snippet, "x.yaml")
    msg = str(ei.value)
    assert path in msg and why in msg


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(PlanError, match="not valid YAML"):
        parse_plan("variants: [\n", "bad.yaml")
    with pytest.raises(PlanError, match="no such file"):
        load_plan(tmp_path / "none.yaml")
    with pytest.raises(PlanError, match="empty"):
        parse_plan("", "e.yaml")


def test_request_counts_one_per_level():
    text = GOOD.replace("  duration_s: 2\n", "  duration_s: null\n  requests: [12, 16]\n")
    plan = parse_plan(text, "good.yaml")
    assert [plan.sweep.requests_at(i) for i in range(2)] == [12, 16]
    single = parse_plan(GOOD.replace("  duration_s: 2\n", "  requests: 5\n"), "good.yaml")
    assert single.sweep.requests_at(1) == 5
    assert parse_plan(GOOD, "good.yaml").sweep.requests_at(0) is None


@pytest.mark.parametrize("counts, why", [("[12]", "1 values for 2 levels"), ("[12, 0]", "at least 1"),
                                         ("[]", "empty list")])
def test_request_counts_that_do_not_fit_the_levels(counts, why):
    text = GOOD.replace("  duration_s: 2\n", f"  requests: {counts}\n")
    with pytest.raises(PlanError) as ei:
        parse_plan(text, "c.yaml")
    assert "sweep" in str(ei.value) and why in str(ei.value), str(ei.value)


def test_windows_per_level_mix_time_and_count():
    text = GOOD.replace("  duration_s: 2\n", "  warmup_s: [0.5, 0]\n  duration_s: [2, null]\n  requests: [null, 40]\n")
    sw = parse_plan(text, "good.yaml").sweep
    assert [(sw.warmup_at(i), sw.duration_at(i), sw.requests_at(i)) for i in range(2)] == [(0.5, 2, None), (0.0, None, 40)]


@pytest.mark.parametrize("sweep, why", [
    ("  duration_s: [2, null]\n", "missing at levels 2"),
    ("  duration_s: [2, 3, 4]\n", "duration_s has 3 values for 2 levels"),
    ("  duration_s: 2\n  warmup_s: [1, -1]\n", "warmup_s cannot be negative"),
    ("  duration_s: [2, 0]\n", "longer than 0 s"),
])
def test_per_level_windows_that_do_not_fit(sweep, why):
    with pytest.raises(PlanError) as ei:
        parse_plan(GOOD.replace("  duration_s: 2\n", sweep), "w.yaml")
    assert "sweep" in str(ei.value) and why in str(ei.value), str(ei.value)
