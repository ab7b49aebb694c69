"""The cross-check over rounds: each repeat of a level paired with the bench round run right after it."""

import math
import sys

import pytest

from analysis import analyze, render_reports
from analysis.crosscheck_rounds import paired_diff
from loadtest.runner import Sweep, new_run_dir
from tests.support.synthetic import RunModel, StepModel, build_run, plan_dict
from tests.test_crosscheck import _plan
from tests.test_crosscheck_analysis import _bench, _with_crosscheck

T975 = {2: 4.302653, 3: 3.182446}  # Student t, 97.5th percentile, by degrees of freedom (printed tables)


def test_paired_difference_is_the_geometric_mean_of_the_ratios_with_a_t_interval():
    ratios = [1.02, 0.98, 1.05]
    logs = [math.log(x) for x in ratios]
    m = sum(logs) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in logs) / 2)
    want = [(math.exp(m + k * T975[2] * sd / math.sqrt(3)) - 1) * 100 for k in (0, -1, 1)]
    bench = [1000.0, 1100.0, 900.0]  # drifting between rounds: the pairs carry it away
    got = paired_diff([b * r for b, r in zip(bench, ratios)], bench)
    assert got == pytest.approx(want)
    assert got[0] == pytest.approx((1.02 * 0.98 * 1.05) ** (1 / 3) * 100 - 100)
    one = paired_diff([1020.0], [1000.0])
    assert one[0] == pytest.approx(2.0) and math.isnan(one[1]) and math.isnan(one[2])
    assert all(math.isnan(x) for x in paired_diff([math.nan], [1000.0]))


def _run_with_repeats(tmp_path, repeats):
    steps = {"fp16": [StepModel(c, 0.005, 0.02, output_tokens=40, warmup_s=0.5, duration_s=3.0, repeat=r)
                      for r in range(repeats) for c in (1, 4)]}
    run = build_run(tmp_path / "run", RunModel(steps=steps, plan=plan_dict(["fp16"], sweep={"repeats": repeats})))
    s = analyze(run.path)
    return run, {(e["concurrency"], e["repeat"]): e for e in s.data["variants"]["fp16"]["steps"]}


def test_each_round_pairs_with_the_repeat_it_followed_and_levels_average_over_rounds(tmp_path):
    run, st = _run_with_repeats(tmp_path, 4)
    # each round's bench reads its repeat's throughput over these ratios ridgeline / bench
    ratios = {1: [1.06, 1.01, 1.04, 0.97], 4: [1.20, 1.12, 1.16, 1.10]}
    levels, files = [], {}
    for c in (1, 4):
        for r in range(4):
            name = f"crosscheck/fp16/c{c}.json" if r == 0 else f"crosscheck/fp16/c{c}-r{r}.json"
            e = st[(c, r)]
            files[name] = _bench(e["output_tokens_per_s"] / ratios[c][r], e["ttft_p50_s"], e["itl_p50_s"], c)
            levels.append({"concurrency": c, "repeat": r, "num_prompts": 4 * c, "status": "ok", "file": name,
                           "prefix_cache_queries": 1000, "prefix_cache_hits": 0})
    _with_crosscheck(run, {"fp16": levels}, files)
    s = analyze(run.path)
    rows = s.data["crosscheck"]
    assert [(r["concurrency"], r["round"], r["repeat"]) for r in rows] == [(c, r, r) for c in (1, 4) for r in range(4)]
    assert [round(r["output_tokens_diff_pct"], 6) for r in rows] == \
        [round((x - 1) * 100, 6) for c in (1, 4) for x in ratios[c]]
    lv = {r["concurrency"]: r for r in s.data["crosscheck_levels"]}
    assert [lv[c]["rounds"] for c in (1, 4)] == [4, 4]
    for c in (1, 4):
        logs = [math.log(x) for x in ratios[c]]
        m = sum(logs) / 4
        half = T975[3] * math.sqrt(sum((x - m) ** 2 for x in logs) / 3) / 2
        assert lv[c]["output_tokens_diff_pct"] == pytest.approx((math.exp(m) - 1) * 100)
        assert lv[c]["output_tokens_diff_lo_pct"] == pytest.approx((math.exp(m - half) - 1) * 100)
        assert lv[c]["output_tokens_diff_hi_pct"] == pytest.approx((math.exp(m + half) - 1) * 100)
    # at 1 one round of four is off by 6%, the level agrees; at 4 every round and the level differ
    assert rows[0]["verdict"].startswith("differs beyond 5%") and lv[1]["verdict"] == "agrees within 5%"
    assert lv[4]["verdict"] == "differs beyond 5%: output tokens/s"
    render_reports(run.path)
    md = (run.path / "report.md").read_text()
    assert "| round |" in md and "diff 95% interval" in md and "geometric mean of the rounds' ratios" in md
    html = (run.path / "report.html").read_text()
    assert "diff 95% interval" in html


def test_one_round_a_level_keeps_the_single_table(tmp_path):
    run, st = _run_with_repeats(tmp_path, 2)
    e = st[(1, 0)]
    _with_crosscheck(run, {"fp16": [{"concurrency": 1, "num_prompts": 4, "status": "ok",
                                     "file": "crosscheck/fp16/c1.json"}]},
                     {"crosscheck/fp16/c1.json": _bench(e["output_tokens_per_s"] / 1.03, 0.02, 0.005, 1)})
    s = analyze(run.path)
    (row,) = s.data["crosscheck"]
    assert row["round"] == 0 and row["repeat"] == 0  # an entry without "repeat" is the first round
    (lv,) = s.data["crosscheck_levels"]
    assert lv["rounds"] == 1 and lv["output_tokens_diff_pct"] == pytest.approx(3.0)
    assert lv["output_tokens_diff_lo_pct"] is None
    render_reports(run.path)
    md = (run.path / "report.md").read_text()
    assert "ridgeline vs vllm bench serve" in md and "diff 95% interval" not in md and "| round |" not in md


def test_a_failed_round_is_left_out_of_its_level_and_said(tmp_path):
    run, st = _run_with_repeats(tmp_path, 3)
    levels, files = [], {}
    for r, ratio in enumerate([1.01, None, 0.99]):
        name = f"crosscheck/fp16/c4{'' if r == 0 else f'-r{r}'}.json"
        levels.append({"concurrency": 4, "repeat": r, "num_prompts": 16, "status": "ok" if ratio else "failed",
                       "error": None if ratio else "vllm bench serve did not finish within 900 s", "file": name})
        if ratio:
            files[name] = _bench(st[(4, r)]["output_tokens_per_s"] / ratio, 0.02, 0.005, 4)
    _with_crosscheck(run, {"fp16": levels}, files)
    (lv,) = analyze(run.path).data["crosscheck_levels"]
    assert lv["rounds"] == 2 and lv["status"] == "ok"
    assert lv["output_tokens_diff_pct"] == pytest.approx((math.sqrt(1.01 * 0.99) - 1) * 100)
    assert lv["note"].startswith("1 of 3 rounds not compared; round 1: vllm bench serve failed")


def test_interleaved_rounds_follow_every_repeat(tmp_path):
    """With sweep.repeats, the bench runs a round after each repeat's step at its concurrency, with a seed and a
    result file of its own (a Python without vllm stands in for the bench: each round fails at once, and what
    is checked is when it ran and what it was given)."""
    plan = _plan(tmp_path, sys.executable)
    plan.crosscheck.interleave = True
    plan.sweep.repeats = 2
    plan.crosscheck.retries = 0
    run = new_run_dir(plan)
    Sweep(plan, run).execute()
    man = run.read_manifest()
    assert man["status"] == "complete"
    levels = man["crosscheck"]["fp16"]["levels"]
    assert [(lv["concurrency"], lv["repeat"]) for lv in levels] == [(1, 0), (8, 0), (1, 1), (8, 1)]
    assert len({lv["seed"] for lv in levels}) == 4  # new prompts every round
    steps = sorted((s for s in man["steps"] if s["variant"] == "fp16"), key=lambda s: s["started"])
    assert [(s["concurrency"], s["repeat"]) for s in steps] == [(1, 0), (8, 0), (1, 1), (8, 1)]
    log = (run.path / man["crosscheck"]["fp16"]["log"]).read_text()
    # one bench start per round
    assert sum(line.startswith("During handling of the above exception") for line in log.splitlines()) == 4, log
    s = analyze(run.path)
    assert [(r["concurrency"], r["round"], r["repeat"], r["status"]) for r in s.data["crosscheck"]] == \
        [(1, 0, 0, "failed"), (8, 0, 0, "failed"), (1, 1, 1, "failed"), (8, 1, 1, "failed")]
    assert [(r["concurrency"], r["rounds"], r["status"]) for r in s.data["crosscheck_levels"]] == \
        [(1, 0, "failed"), (8, 0, "failed")]


def test_a_difference_the_rounds_cannot_resolve_is_called_so(tmp_path):
    run, st = _run_with_repeats(tmp_path, 4)
    ratios = [1.30, 0.95, 1.10, 0.98]  # a geometric mean of +7.4%, rounds spread over 35 points
    levels, files = [], {}
    for r, ratio in enumerate(ratios):
        name = f"crosscheck/fp16/c1{'' if r == 0 else f'-r{r}'}.json"
        e = st[(1, r)]
        files[name] = _bench(e["output_tokens_per_s"] / ratio, e["ttft_p50_s"], e["itl_p50_s"], 1)
        levels.append({"concurrency": 1, "repeat": r, "num_prompts": 4, "status": "ok", "file": name})
    _with_crosscheck(run, {"fp16": levels}, files)
    (lv,) = analyze(run.path).data["crosscheck_levels"]
    assert lv["output_tokens_diff_pct"] == pytest.approx(((1.30 * 0.95 * 1.10 * 0.98) ** 0.25 - 1) * 100)
    assert lv["output_tokens_flagged"] and lv["output_tokens_diff_lo_pct"] < 5.0
    assert lv["verdict"] == "not resolved within 5% by 4 rounds: output tokens/s"
