"""vllm bench serve against the same live server after a variant's sweep, and its failures."""

import json

import pytest

from analysis import analyze
from core.plan import PlanError, parse_plan
from loadtest import crosscheck
from loadtest.runner import Sweep, new_run_dir
from tests.support.tiny_model import make_tiny_model
from tests.support.vllm_env import SKIP_REASON, vllm_python

PLAN = """
name: cc
backend: emulator
variants: [{{name: fp16}}, {{name: awq}}]
scenario: {{prompt_tokens: 32, output_tokens: 24, tokenizer: "{tok}"}}
sweep: {{concurrency: [1, 8], warmup_s: 0, duration_s: null, requests: [6, 24], drain_s: 30}}
crosscheck: {{python: "{python}", variants: [{variants}], concurrency: [1, 8], num_prompts: [6, 24], retry_pause_s: 0}}
output_dir: "{out}"
"""


def _plan(tmp_path, python, variants="fp16"):
    tok = make_tiny_model(tmp_path / "model")
    return parse_plan(PLAN.format(tok=tok, python=python, variants=variants, out=tmp_path / "results"), "cc.yaml")


def test_plan_checks_the_crosscheck(tmp_path):
    tok = make_tiny_model(tmp_path / "model")
    base = PLAN.format(tok=tok, python="python3", variants="fp16", out=tmp_path)
    with pytest.raises(PlanError, match="crosscheck.variants names nope"):
        parse_plan(base.replace("variants: [fp16]", "variants: [nope]"), "cc.yaml")
    with pytest.raises(PlanError, match="num_prompts has 1 counts for 2 levels"):
        parse_plan(base.replace("num_prompts: [6, 24]", "num_prompts: [6]"), "cc.yaml")
    with pytest.raises(PlanError, match="needs scenario.tokenizer"):
        parse_plan(base.replace(f', tokenizer: "{tok}"', ""), "cc.yaml")
    with pytest.raises(PlanError, match="fixed prompt_tokens"):
        parse_plan(base.replace("prompt_tokens: 32", "prompt_tokens: {dist: uniform, min: 8, max: 32}"), "cc.yaml")
    plan = parse_plan(base.replace("num_prompts: [6, 24]", "num_prompts: 5"), "cc.yaml")
    assert [plan.crosscheck.prompts_at(i) for i in range(2)] == [5, 5]
    assert parse_plan(base.replace(", num_prompts: [6, 24]", ""), "cc.yaml").crosscheck.prompts_at(1) == 32


def test_bench_arguments_follow_the_scenario(tmp_path):
    plan = _plan(tmp_path, "python3")
    spec = crosscheck.bench_args(plan, "http://127.0.0.1:9", "fp16", tmp_path)
    common = spec["common"]
    assert common[common.index("--random-input-len") + 1] == "32"
    assert common[common.index("--random-output-len") + 1] == "24"
    assert "--ignore-eos" in common and common[:2] == ["--backend", "vllm"]
    assert [lv["args"][1] for lv in spec["levels"]] == ["1", "8"]
    assert [lv["num_prompts"] for lv in spec["levels"]] == [6, 24]
    assert "--extra-body" not in common
    plan.scenario.min_tokens = True
    plan.scenario.extra_body = {"top_k": 5}
    common = crosscheck.bench_args(plan, "http://127.0.0.1:9", "fp16", tmp_path)["common"]
    assert json.loads(common[common.index("--extra-body") + 1]) == {"top_k": 5, "min_tokens": 24}


def test_a_client_that_cannot_start_fails_the_crosscheck_not_the_run(tmp_path):
    plan = _plan(tmp_path, str(tmp_path / "no-such-python"))
    run = new_run_dir(plan)
    Sweep(plan, run).execute()
    man = run.read_manifest()
    assert man["status"] == "complete"
    assert all(s["status"] == "complete" for s in man["steps"])
    entry = man["crosscheck"]["fp16"]
    assert "cannot start" in entry["error"]
    assert [lv["status"] for lv in entry["levels"]] == ["failed", "failed"]
    assert "awq" not in man["crosscheck"]  # only the variants asked for
    said = [w for w in man["warnings"] if "cross-check incomplete" in w]
    assert len(said) == 1 and said[0].startswith("fp16: ") and "(levels 1, 8)" in said[0] and "cannot start" in said[0]
    report = analyze(run.path)  # the analysis says it once too, beside the table's per-level notes
    assert [w for w in report.data["warnings"] if "vllm bench serve" in w] == said
    assert {r["status"] for r in report.data["crosscheck"]} == {"failed"}


@pytest.mark.slow
def test_vllm_bench_serve_measures_the_same_server(tmp_path):
    python = vllm_python()
    if python is None:
        pytest.skip(SKIP_REASON)
    plan = _plan(tmp_path, python, variants="fp16, awq")
    run = new_run_dir(plan)
    Sweep(plan, run).execute()
    man = run.read_manifest()
    assert man["status"] == "complete"
    for variant in ("fp16", "awq"):
        entry = man["crosscheck"][variant]
        assert [lv["status"] for lv in entry["levels"]] == ["ok", "ok"], entry
        for lv in entry["levels"]:
            res = json.loads((run.path / lv["file"]).read_text())
            assert res["completed"] == lv["num_prompts"] and res["failed"] == 0
            assert res["max_concurrency"] == lv["concurrency"]
            # ignore_eos held the length (the reference client counts tokens by re-tokenizing the text)
            assert abs(res["total_output_tokens"] - 24 * lv["num_prompts"]) <= 0.05 * 24 * lv["num_prompts"]
    # the emulator is faster with AWQ at concurrency 1; the reference client must see that too
    bench = {v: json.loads((run.path / f"crosscheck/{v}/c1.json").read_text())["output_throughput"]
             for v in ("fp16", "awq")}
    assert bench["awq"] > 1.2 * bench["fp16"], bench


def test_interleaved_levels_run_right_after_the_step_at_their_concurrency(tmp_path):
    """crosscheck.interleave: one bench run per level, each between ridgeline's steps (here a Python without
    vllm stands in for the bench, so every level fails at once; what is checked is when each one ran)."""
    import sys

    plan = _plan(tmp_path, sys.executable)
    plan.crosscheck.interleave = True
    run = new_run_dir(plan)
    Sweep(plan, run).execute()
    man = run.read_manifest()
    assert man["status"] == "complete"
    entry = man["crosscheck"]["fp16"]
    assert [lv["concurrency"] for lv in entry["levels"]] == [1, 8]
    steps = {s["concurrency"]: s for s in man["steps"] if s["variant"] == "fp16"}
    log = (run.path / entry["log"]).read_text()
    # started once per level, not for all, and once more for each (the process died before reporting it)
    assert sum(line.startswith("During handling of the above exception") for line in log.splitlines()) == 4, log
    assert log.count("not reported (vllm bench serve exited with status 1") == 2, log
    assert len(entry["retried"]) == 2 and all("exited with status 1" in e for e in entry["retried"])
    assert sum("started again after its process ended early" in w for w in man["warnings"]) == 2
    # the first level ran between the two steps, the second after the last one
    assert steps[1]["ended"] <= entry["started"] <= steps[8]["started"] <= steps[8]["ended"] <= entry["ended"]
    said = [w for w in man["warnings"] if "cross-check incomplete" in w]
    assert [("(levels 1)" in w, "(levels 8)" in w) for w in said] == [(True, False), (False, True)]
