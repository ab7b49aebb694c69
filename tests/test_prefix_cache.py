"""Prompts new to the server, per-level bench seeds, and prefix-cache hits flagged where traffic shares no prefix.

Prompts cut from one fixed text at random offsets start alike whenever two offsets coincide; every
prompt now opens with a head of its own, so among thousands none shares its first cache block (16
tokens) with another, while the shared-prefix scenario still shares its system prompts. The bench
cross-check gets a seed per level, run and variant. A step or bench level whose hit rate is over 1%
is flagged in the tables, the warnings and the verdict, unless the scenario shares prefixes.
"""

from __future__ import annotations

import json

import pytest
import yaml

from analysis import analyze, render_reports
from tests.support.synthetic import RunModel, StepModel, build_run, plan_dict
from deploy import prefix_cache
from deploy.servers import server_commands
from loadtest import crosscheck
from core.plan import ScenarioSpec, SharedPrefixSpec, parse_plan
from scenarios.prompts import load_tokenizer
from scenarios.unique import HEAD_TOKENS
from scenarios.workload import build_workload
from tests.support.tiny_model import make_tiny_model
from tests.test_crosscheck_analysis import _bench, _with_crosscheck


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return str(make_tiny_model(tmp_path_factory.mktemp("m") / "model"))


def _heads(workload, n, tok):
    t = load_tokenizer(tok)
    out = []
    for _ in range(n):
        body = workload.next_request().body
        out.append(tuple(t.encode(body["prompt"], add_special_tokens=False).ids[:HEAD_TOKENS]))
    return out


def test_no_two_prompts_share_their_first_block(tok):
    spec = ScenarioSpec(prompt_tokens=64, output_tokens=8, tokenizer=tok)
    w = build_workload(spec, "m", salt="run-a/fp16")
    heads = _heads(w, 3000, tok)  # warm-up and window alike: one stream of new prompts
    assert len(set(heads)) == len(heads)
    assert all(r.prompt_tokens == 64 for r in [w.next_request() for _ in range(50)])  # still exact
    again = _heads(build_workload(spec, "m", salt="run-a/fp16"), 50, tok)
    assert again == heads[:50]  # reproducible for the same run and variant
    other = _heads(build_workload(spec, "m", salt="run-b/fp16"), 3000, tok)
    assert not set(other) & set(heads)  # another run's prompts are new to a server this one used


def test_shared_prefix_scenario_still_shares_its_prefixes(tok):
    spec = ScenarioSpec(prompt_tokens=32, output_tokens=8, tokenizer=tok,
                        shared_prefix={"prefixes": 2, "prefix_tokens": 64, "questions": 4})
    w = build_workload(spec, "m", salt="x")
    by_prefix: dict[int, set[str]] = {}
    for _ in range(40):
        r = w.next_request()
        by_prefix.setdefault(r.meta["prefix"], set()).add(r.body["prompt"].split("\n\n")[0])
    assert sorted(by_prefix) == [0, 1] and all(len(v) == 1 for v in by_prefix.values())
    assert spec.expects_prefix_hits and not ScenarioSpec().expects_prefix_hits


def test_bench_levels_get_seeds_of_their_own(tok, tmp_path):
    plan = parse_plan(yaml.safe_dump({
        "name": "cc", "backend": "vllm", "variants": [{"name": "fp16"}],
        "scenario": {"prompt_tokens": 32, "output_tokens": 24, "tokenizer": tok},
        "sweep": {"concurrency": [1, 8]}, "crosscheck": {"concurrency": [1, 8, 64]},
        "server": {"prefix_cache": "reset"}}), "cc.yaml")
    spec = crosscheck.bench_args(plan, "http://127.0.0.1:9", "fp16", tmp_path, salt="run-a/fp16")
    assert "--seed" not in spec["common"]
    seeds = [int(lv["args"][lv["args"].index("--seed") + 1]) for lv in spec["levels"]]
    assert len(set(seeds)) == 3 and seeds == [lv["seed"] for lv in spec["levels"]]
    other = crosscheck.bench_args(plan, "http://127.0.0.1:9", "fp16", tmp_path, salt="run-a/awq")
    assert not set(seeds) & {lv["seed"] for lv in other["levels"]}
    assert spec["metrics_url"] == "http://127.0.0.1:9/metrics"
    assert spec["reset_url"] == "http://127.0.0.1:9/reset_prefix_cache"


def test_the_plan_turns_caching_off_or_enables_the_reset_endpoint(tok):
    def cmd(setting):
        plan = parse_plan(yaml.safe_dump({
            "name": "p", "backend": "vllm", "model": tok, "variants": [{"name": "fp16"}],
            "server": {"prefix_cache": setting, "mfu_metrics": "off"}}), "p.yaml")
        return server_commands(plan, api_key=None)[0]
    assert "--no-enable-prefix-caching" in cmd("off").argv
    reset = cmd("reset")
    assert reset.env["VLLM_SERVER_DEV_MODE"] == "1" and "--no-enable-prefix-caching" not in reset.argv
    on = cmd("on")
    assert "VLLM_SERVER_DEV_MODE" not in on.env and "--no-enable-prefix-caching" not in on.argv


def test_reset_says_why_when_the_server_does_not_offer_it():
    assert "failed" in prefix_cache.reset("http://127.0.0.1:9")  # nothing listens there


@pytest.fixture
def run_with_hits(tmp_path):
    steps = {"fp16": [StepModel(c, 0.005, 0.02, output_tokens=40, warmup_s=0.5, duration_s=3.0) for c in (1, 4)]}
    run = build_run(tmp_path / "run", RunModel(steps=steps, plan=plan_dict(["fp16"], baseline="fp16")))
    s = analyze(run.path)
    st = {e["concurrency"]: e for e in s.data["variants"]["fp16"]["steps"]}
    files = {f"crosscheck/fp16/c{c}.json": _bench(st[c]["output_tokens_per_s"], st[c]["ttft_p50_s"],
                                                  st[c]["itl_p50_s"], c) for c in (1, 4)}
    levels = [{"concurrency": 1, "num_prompts": 4, "status": "ok", "file": "crosscheck/fp16/c1.json",
               "prefix_cache_queries": 2048.0, "prefix_cache_hits": 16.0},  # 0.8%: under the limit
              {"concurrency": 4, "num_prompts": 16, "status": "ok", "file": "crosscheck/fp16/c4.json",
               "prefix_cache_queries": 8192.0, "prefix_cache_hits": 2304.0}]  # 28%: the leak seen on the H100
    _with_crosscheck(run, {"fp16": levels}, files)
    return run


def test_a_bench_level_that_hit_the_cache_is_flagged(run_with_hits):
    s = analyze(run_with_hits.path)
    rows = {r["concurrency"]: r for r in s.data["crosscheck"]}
    assert rows[1]["bench_prefix_cache_hit_rate"] == pytest.approx(16 / 2048) and not rows[1]["prefix_cache_flagged"]
    assert rows[4]["bench_prefix_cache_hit_rate"] == pytest.approx(2304 / 8192) and rows[4]["prefix_cache_flagged"]
    assert rows[4]["verdict"].endswith("the bench hit the prefix cache (28.1%)")
    assert any("concurrency 4 hit the prefix cache for 28.1%" in w for w in s.data["warnings"])
    assert "Prefix-cache leak: 1 cross-check level(s) did (up to 28.1%, fp16 at 4)" in s.data["verdict"]
    render_reports(run_with_hits.path)
    md = (run_with_hits.path / "report.md").read_text()
    assert "| bench prefix hit |" in md.replace("bench prefix hit | note", "bench prefix hit |")
    assert "**28.1%**" in md and "0.8%" in md


def test_a_step_that_hit_the_cache_is_flagged_unless_the_scenario_shares_prefixes(run_with_hits):
    from analysis.prefix_cache import step_leaks

    s = analyze(run_with_hits.path)
    steps = s.analysis.steps.copy()
    steps.loc[steps.step == 1, "prefix_cache_hit_rate"] = 0.035
    assert [(v, st) for v, st, _, _ in step_leaks(steps, s.analysis.info.plan)] == [("fp16", 1)]
    plan = s.analysis.info.plan
    shared = plan.model_copy(update={"scenario": plan.scenario.model_copy(
        update={"shared_prefix": SharedPrefixSpec(prefixes=2, prefix_tokens=64)})})
    assert step_leaks(steps, shared) == []
