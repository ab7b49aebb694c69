"""Quality metrics against expectations computed by hand or from the known model behind the rows."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from analysis.quality import intervals
from analysis.quality.metrics.kl import position_kl
from analysis.quality.rows import QualityError, read_quality
from analysis.quality.scorers import SCORERS, scorer
from analysis.quality.section import quality_section
from core.results import atomic_write_table
from tests.support.quality_rows import synthetic_likelihood, token, write_variant


def L(tokens, lps):
    return ([token(t) for t in tokens], [math.log(p) for p in lps])


def test_kl_full_distribution_equals_hand_value():
    p, q = [0.5, 0.3, 0.15, 0.05], [0.4, 0.4, 0.1, 0.1]
    got = position_kl(token(0), math.log(0.5), math.log(0.4), L(range(4), p), L(range(4), q))
    hand = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4) + 0.15 * math.log(0.15 / 0.1) + 0.05 * math.log(0.05 / 0.1)
    assert got == pytest.approx(hand, abs=1e-8)  # the empty rest bucket is floored at 1e-8
    assert got == pytest.approx(0.051429561109797996, abs=1e-8)


def test_kl_top2_puts_the_tail_in_one_rest_bucket():
    # both list tokens 0 and 1; the rest (0.2 on each side) is one bucket contributing 0
    got = position_kl(token(0), math.log(0.5), math.log(0.4), L([0, 1], [0.5, 0.3]), L([0, 1], [0.4, 0.4]))
    assert got == pytest.approx(0.5 * math.log(1.25) + 0.3 * math.log(0.75), abs=1e-12)


def test_kl_baseline_token_missing_from_variant_topk_goes_to_rest():
    # baseline p = (.5, .3, .15, .05), variant q = (.1, .5, .3, .1); top-2: {0,1} and {1,2}; actual token 3
    # kept buckets: token 1 (in both), token 3 (the actual token); rest: p .65, q .4
    got = position_kl(token(3), math.log(0.05), math.log(0.1), L([0, 1], [0.5, 0.3]), L([1, 2], [0.5, 0.3]))
    assert got == pytest.approx(0.3 * math.log(0.3 / 0.5) + 0.05 * math.log(0.05 / 0.1) + 0.65 * math.log(0.65 / 0.4),
                                abs=1e-12)


def test_kl_of_identical_distributions_is_zero():
    t, lp = L([4, 2, 9], [0.6, 0.3, 0.05])
    assert position_kl(token(2), math.log(0.3), math.log(0.3), (t, lp), (t, lp)) == 0.0


def test_wilson_matches_hand_values():
    lo, hi = intervals.wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    lo, hi = intervals.wilson(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(1.959964 ** 2 / (10 + 1.959964 ** 2), abs=1e-6)
    assert intervals.wilson(0, 0) == (None, None)


def test_paired_difference_matches_agresti_min_by_hand():
    # 20 items: 5 only A right, 1 only B right, 14 concordant
    a = np.array([1] * 5 + [0] + [1] * 7 + [0] * 7, bool)
    b = np.array([0] * 5 + [1] + [1] * 7 + [0] * 7, bool)
    diff, (lo, hi) = intervals.paired_proportion_difference(a, b)
    assert diff == pytest.approx(0.2)
    assert lo == pytest.approx(-0.041309582, abs=1e-8) and hi == pytest.approx(0.404945946, abs=1e-8)


def _lik(doc, lps, toks=None):
    toks = toks or list(range(1, len(lps) + 1))
    return [{"doc_id": doc, "position": i + 1, "token": token(t), "logprob": lp, "top_tokens": [token(t)],
             "top_logprobs": [lp]} for i, (t, lp) in enumerate(zip(toks, lps))]


def test_perplexity_of_known_logprobs(tmp_path):
    write_variant(tmp_path, "fp16", likelihood=_lik("a", [-1.0, -2.0]) + _lik("b", [-3.0]))
    sec = quality_section(tmp_path, None, "fp16")
    m = sec["variants"]["fp16"]["metrics"]
    assert m["nll"] == pytest.approx(2.0)  # (1 + 2 + 3) / 3 tokens
    assert m["ppl"] == pytest.approx(math.exp(2.0))
    assert sec["variants"]["fp16"]["counts"] == {"documents": 2, "tokens": 3}


def test_ppl_change_is_paired_per_token(tmp_path):
    write_variant(tmp_path, "fp16", likelihood=_lik("a", [-1.0, -2.0]) + _lik("b", [-3.0]))
    write_variant(tmp_path, "awq", likelihood=_lik("a", [-1.5, -2.5]) + _lik("b", [-3.5]))
    e = quality_section(tmp_path, None, "fp16")["variants"]["awq"]
    assert e["deltas"]["delta_nll"] == pytest.approx(0.5)
    assert e["deltas"]["ppl_change_pct"] == pytest.approx(100 * (math.exp(0.5) - 1))
    lo, hi = e["intervals"]["ppl_change_pct"]
    assert lo == pytest.approx(100 * (math.exp(0.5) - 1)) and hi == pytest.approx(lo)  # every document moved alike


def test_interval_resamples_documents_not_tokens(tmp_path):
    # 10 documents of 50 tokens: half got better by 1 nat per token, half worse: the mean change is 0 and
    # the interval must be wide (documents are the unit), though 500 tokens would make a token-level one tight
    base, var = [], []
    for d in range(10):
        base += _lik(f"d{d}", [-2.0] * 50)
        var += _lik(f"d{d}", [-2.0 + (1.0 if d % 2 else -1.0)] * 50)
    write_variant(tmp_path, "fp16", likelihood=base)
    write_variant(tmp_path, "rtn", likelihood=var)
    e = quality_section(tmp_path, None, "fp16")["variants"]["rtn"]
    lo, hi = e["intervals"]["delta_nll"]
    assert e["deltas"]["delta_nll"] == pytest.approx(0.0)
    assert lo < -0.3 and hi > 0.3


def test_baseline_against_itself_gives_zero_kl_and_full_agreement(tmp_path):
    (rows,), _ = synthetic_likelihood(docs=4, positions=30, vocab=50, k=5)
    greedy = [{"prompt_id": f"p{i}", "tokens": [token(i), token(i + 1)], "text": "x", "finish_reason": "length"}
              for i in range(6)]
    task = [{"item_id": str(i), "prompt": "q", "reference": "4", "output": "4" if i % 2 else "5"} for i in range(6)]
    for v in ("fp16", "copy"):
        write_variant(tmp_path, v, likelihood=rows, greedy=greedy, task=task)
    e = quality_section(tmp_path, {"quality": {"task": {"scorer": "exact"}}}, "fp16")["variants"]["copy"]
    d = e["deltas"]
    assert d["kl_mean"] == 0.0 and d["delta_nll"] == 0.0 and d["ppl_change_pct"] == 0.0
    assert d["first_token_agreement"] == 1.0 and d["exact_match_rate"] == 1.0 and d["mean_matched_prefix"] == 2.0
    assert d["accuracy_delta_points"] == 0.0 and e["metrics"]["accuracy"] == 0.5
    assert e["flags"] == []


def test_topk_kl_is_a_lower_bound_of_the_true_kl_and_grows_with_damage(tmp_path):
    levels, true_kl = synthetic_likelihood(docs=6, positions=40, vocab=64, k=8, damage=(0.0, 0.3, 3.0), seed=3)
    for name, rows in zip(("fp16", "int4", "broken"), levels):
        write_variant(tmp_path, name, likelihood=rows)
    v = quality_section(tmp_path, None, "fp16")["variants"]
    small, big = v["int4"]["deltas"]["kl_mean"], v["broken"]["deltas"]["kl_mean"]
    assert 0 < small <= true_kl[1] + 1e-9
    assert small < big <= true_kl[2] + 1e-9
    assert v["int4"]["flags"] == []
    assert "broken" in v["broken"]["flags"] and v["broken"]["broken_reasons"]
    assert v["broken"]["deltas"]["ppl_change_pct"] > v["int4"]["deltas"]["ppl_change_pct"] > 0


def test_misaligned_token_is_an_error_naming_variant_document_and_position(tmp_path):
    write_variant(tmp_path, "fp16", likelihood=_lik("a", [-1.0, -2.0], toks=[5, 6]))
    write_variant(tmp_path, "gptq", likelihood=_lik("a", [-1.0, -2.0], toks=[5, 7]))
    e = quality_section(tmp_path, None, "fp16")["variants"]["gptq"]
    assert e["status"] == "invalid"
    assert "gptq" in e["reason"] and "'a'" in e["reason"] and "position 2" in e["reason"]
    assert e["metrics"] == {} and e["deltas"] == {}


def test_not_measured_shows_the_reason_and_no_numbers(tmp_path):
    write_variant(tmp_path, "fp16", status="not_measured", reason="dummy weights (--load-format dummy)",
                  weights="dummy")
    e = quality_section(tmp_path, None, "fp16")["variants"]["fp16"]
    assert e["message"] == "quality not measured: dummy weights (--load-format dummy)"
    assert e["metrics"] == {} and e["weights"] == "dummy"


def test_unreadable_table_names_the_file_and_keeps_other_variants(tmp_path):
    write_variant(tmp_path, "fp16", likelihood=_lik("a", [-1.0]))
    d = write_variant(tmp_path, "awq", likelihood=_lik("a", [-1.0]))
    (d / "likelihood.parquet").write_bytes(b"not parquet")
    rows = read_quality(tmp_path)
    assert rows["awq"].status == "invalid" and "likelihood.parquet" in rows["awq"].reason
    assert rows["fp16"].measured


def test_gates_fail_and_pass_on_the_point_estimate(tmp_path):
    write_variant(tmp_path, "fp16", likelihood=_lik("a", [-1.0, -1.0]))
    write_variant(tmp_path, "awq", likelihood=_lik("a", [-1.1, -1.1]))  # +10.5% perplexity
    plan = {"quality": {"gates": {"max_ppl_increase_pct": 5, "max_accuracy_drop_points": 3, "bogus": 1}}}
    sec = quality_section(tmp_path, plan, "fp16")
    g = {x["gate"]: x for x in sec["variants"]["awq"]["gates"]}
    assert g["max_ppl_increase_pct"]["passed"] is False
    assert g["max_accuracy_drop_points"]["passed"] is None  # no task measured
    assert "gate_failed:max_ppl_increase_pct" in sec["variants"]["awq"]["flags"]
    assert any("bogus" in n for n in sec["notes"])
    plan["quality"]["gates"]["max_ppl_increase_pct"] = 11
    assert quality_section(tmp_path, plan, "fp16")["variants"]["awq"]["flags"] == []


def test_task_accuracy_and_paired_delta_in_points(tmp_path):
    ref = [{"item_id": str(i), "prompt": "q", "reference": "yes", "output": "yes"} for i in range(10)]
    var = [dict(r, output="no" if i < 3 else "yes") for i, r in enumerate(ref)]
    write_variant(tmp_path, "fp16", task=ref)
    write_variant(tmp_path, "awq", task=var)
    e = quality_section(tmp_path, {"quality": {"task": {"scorer": "exact"}}}, "fp16")["variants"]["awq"]
    assert e["metrics"]["accuracy"] == pytest.approx(0.7)
    assert e["intervals"]["accuracy"][0] == pytest.approx(intervals.wilson(7, 10)[0])
    assert e["deltas"]["accuracy_delta_points"] == pytest.approx(-30.0)
    lo, hi = e["intervals"]["accuracy_delta_points"]
    # Agresti-Min by hand: n10 = 0, n01 = 3, n = 10 -> d = (0.5 - 3.5) / 12, var = (4 - 12 d^2) / 144
    assert lo == pytest.approx(-54.444794351, abs=1e-6) and hi == pytest.approx(4.444794351, abs=1e-6)


def test_greedy_prefix_and_first_token(tmp_path):
    base = [{"prompt_id": "p", "tokens": ["a", "b", "c", "d"], "text": "", "finish_reason": "length"},
            {"prompt_id": "q", "tokens": ["x", "y"], "text": "", "finish_reason": "length"}]
    var = [dict(base[0], tokens=["a", "b", "z", "d"]), dict(base[1], tokens=["w", "y"])]
    write_variant(tmp_path, "fp16", greedy=base)
    write_variant(tmp_path, "awq", greedy=var)
    d = quality_section(tmp_path, None, "fp16")["variants"]["awq"]["deltas"]
    assert d["first_token_agreement"] == 0.5 and d["mean_matched_prefix"] == 1.0 and d["exact_match_rate"] == 0.0


@pytest.mark.parametrize("name,output,reference,options,expected", [
    ("exact", " Paris\n", "Paris", {}, True),
    ("exact", "Paris.", "Paris", {}, False),
    ("contains", "The answer is Paris.", "Paris", {}, True),
    ("contains", "the answer is paris", "Paris", {}, False),
    ("contains", "the answer is paris", "Paris", {"ignore_case": True}, True),
    ("regex", "total: 42 apples", r"\b42\b", {}, True),
    ("regex", "total: 420", r"\b42\b", {}, False),
    ("numeric", "It is 3.14159 roughly", "3.14", {"tolerance": 0.01}, True),
    ("numeric", "It is 3.2", "3.14", {"tolerance": 0.01}, False),
    ("numeric", "1,024 bytes", "1024", {}, True),
    ("numeric", "no number", "7", {}, False),
])
def test_scorers(name, output, reference, options, expected):
    assert scorer(name)(output, reference, options) is expected


def test_unknown_scorer_and_bad_numeric_reference_are_clear_errors():
    with pytest.raises(QualityError, match="unknown task scorer 'fuzzy'.*exact"):
        scorer("fuzzy")
    with pytest.raises(QualityError, match="not a number"):
        SCORERS["numeric"]("5", "five", {})


def test_a_partly_failed_variant_keeps_the_blocks_that_were_measured(tmp_path):
    write_variant(tmp_path, "fp16", likelihood=_lik("a", [-1.0, -2.0]))
    write_variant(tmp_path, "awq", status="failed", reason="greedy: server returned no tokens",
                  likelihood=_lik("a", [-1.5, -2.5]))
    e = quality_section(tmp_path, None, "fp16")["variants"]["awq"]
    assert e["status"] == "failed" and "message" not in e
    assert e["deltas"]["delta_nll"] == pytest.approx(0.5)
    assert any("greedy: server returned no tokens" in n for n in e["notes"])


def test_a_column_of_the_wrong_type_names_the_file(tmp_path):
    write_variant(tmp_path, "fp16", likelihood=_lik("a", [-1.0]))
    d = write_variant(tmp_path, "awq", likelihood=_lik("a", [-1.0]))
    atomic_write_table(d / "likelihood.parquet", pa.table({
        "doc_id": ["a"], "position": ["first"], "token": ["t"], "logprob": [-1.0], "top_tokens": [["t"]],
        "top_logprobs": [[-1.0]]}))
    e = quality_section(tmp_path, None, "fp16")["variants"]["awq"]
    assert e["status"] == "invalid" and "likelihood.parquet" in e["reason"] and "position" in e["reason"]
