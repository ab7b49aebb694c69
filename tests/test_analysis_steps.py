"""Per-step aggregation: tokens counted by arrival time inside the window, latencies, errors, goodput."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.data import SLO
from analysis.goodput import allowed_slow_gaps
from analysis.steps import SLICES, aggregate_step, quantiles
from core.records import RequestRecord, records_to_table

W0, W1 = 100.0, 110.0


def rec(send, ttft, gaps, phase="measure", status="ok", e2e=None, out=None, prompt=10, events=None, **kw):
    return RequestRecord(variant="v", step=0, concurrency=4, rate=None, request_id=f"r{send}", phase=phase,
                         send_time=send, ttft_s=ttft, itl_s=list(gaps), e2e_s=e2e, prompt_tokens=prompt,
                         output_tokens=out, token_events=events if events is not None else
                         (0 if ttft is None else 1 + len(gaps)), status=status, **kw)


def hand_records():
    return [
        # warm-up request streaming into the window: first token 96, then 98..106; 100 (the edge) to 106 count: 4
        rec(95.0, 1.0, [2.0] * 5, phase="warmup", e2e=11.5, out=6, prompt=5),
        # measured: first token 101.5, then 102.5 .. 111.5; 101.5 .. 109.5 count: 9
        rec(101.0, 0.5, [1.0] * 10, e2e=11.0, out=11, prompt=10),
        # measured, cancelled at the end: 107, 108, 109, 110 (the edge), 111; 4 count
        rec(105.0, 2.0, [1.0] * 4, status="cancelled", out=None, prompt=20),
        # measured, failed before any token
        rec(103.0, None, [], status="error", error_kind="http", error="HTTP 500: boom", prompt=30, http_status=500),
        # finished before the window: 0 count
        rec(90.0, 1.0, [1.0, 1.0], phase="warmup", e2e=3.0, out=3, prompt=7),
    ]


def test_tokens_in_window_equal_a_hand_count():
    row, reqs, kinds = aggregate_step(records_to_table(hand_records()), W0, W1, SLO(ttft_s=1.0, itl_s=1.5))
    assert row["output_tokens_per_s"] == pytest.approx(17 / 10)
    assert list(reqs.tokens_in_window) == [4, 9, 4, 0, 0]
    assert reqs.slice_tokens.sum() == pytest.approx(17)
    assert reqs.slice_tokens.size == SLICES
    assert reqs.slice_tokens[0] == 1  # the event exactly at the window's start
    assert reqs.slice_tokens[-1] >= 1  # the cancelled request's event exactly at the end
    # completed inside the window: only the warm-up request (ends 106.5)
    assert row["requests_per_s"] == pytest.approx(0.1)
    # prompt tokens of the requests sent inside the window: 10 + 20 + 30
    assert row["prompt_tokens_per_s"] == pytest.approx(6.0)
    assert row["total_tokens_per_s"] == pytest.approx(7.7)
    assert (row["requests"], row["ok"], row["errors"], row["cancelled"], row["requests_total"]) == (3, 1, 1, 1, 5)
    assert json.loads(row["error_kinds"]) == {"http": 1}
    assert kinds.iloc[0]["example"] == "HTTP 500: boom"
    # in flight on average: (6.5 + 9 + 5) / 10
    assert row["client_in_flight_mean"] == pytest.approx(2.05)
    # gaps that ended inside the window: four of 2 s (warm-up), eight and three of 1 s
    assert row["window_itl_mean_s"] == pytest.approx((4 * 2 + 8 + 3) / 15)


def test_latencies_are_over_measured_requests():
    row, reqs, _ = aggregate_step(records_to_table(hand_records()), W0, W1, SLO())
    assert row["ttft_p50_s"] == pytest.approx(np.percentile([0.5, 2.0], 50))
    assert row["ttft_p99_s"] == pytest.approx(np.percentile([0.5, 2.0], 99))
    assert row["ttft_max_s"] == pytest.approx(2.0)
    assert row["itl_p50_s"] == pytest.approx(1.0) and row["itl_max_s"] == pytest.approx(1.0)  # the 2 s gaps are warm-up
    assert row["tpot_p50_s"] == pytest.approx((11.0 - 0.5) / 10)
    assert row["e2e_p50_s"] == pytest.approx(11.0)


def test_goodput_counts_requests_meeting_every_slo():
    row, reqs, _ = aggregate_step(records_to_table(hand_records()), W0, W1, SLO(ttft_s=1.0, itl_s=1.5))
    # good: the measured one (ttft 0.5, gaps 1 s) and the early one; not the warm-up one (all gaps 2 s),
    # not the cancelled one (ttft 2 s), never the failed one
    assert list(reqs.good_tokens_in_window) == [0, 9, 0, 0, 0]
    assert row["goodput_tokens_per_s"] == pytest.approx(0.9)
    assert row["goodput_requests_per_s"] == 0.0  # the only request completed in the window was slow
    assert row["slo_attainment"] == pytest.approx(0.5)  # judged: the measured ok one and the cancelled one
    assert reqs.slice_good_tokens.sum() == pytest.approx(9)


def test_request_p99_gap_is_nearest_rank():
    assert list(allowed_slow_gaps(np.array([0, 1, 99, 100, 101, 200, 256]))) == [0, 0, 0, 1, 1, 2, 2]
    base = [0.01] * 100
    one_slow = rec(101.0, 0.1, base[:-1] + [0.5], e2e=1.6, out=101)
    two_slow = rec(101.5, 0.1, base[:-2] + [0.5, 0.5], e2e=2.1, out=101)
    row, reqs, _ = aggregate_step(records_to_table([one_slow, two_slow]), W0, W1, SLO(ttft_s=None, itl_s=0.1))
    assert (reqs.good_tokens_in_window > 0).tolist() == [True, False]


def test_tpot_and_e2e_slos():
    fast = rec(101.0, 0.1, [0.01] * 9, e2e=0.2, out=10)
    slow = rec(102.0, 0.1, [0.01] * 9, e2e=5.0, out=10)  # ends late: TPOT (5 - 0.1) / 9
    _, reqs, _ = aggregate_step(records_to_table([fast, slow]), W0, W1, SLO(ttft_s=None, itl_s=None, tpot_s=0.1))
    assert (reqs.good_tokens_in_window > 0).tolist() == [True, False]
    _, reqs, _ = aggregate_step(records_to_table([fast, slow]), W0, W1, SLO(ttft_s=None, itl_s=None, e2e_s=1.0))
    assert (reqs.good_tokens_in_window > 0).tolist() == [True, False]


def test_several_tokens_per_event_are_weighted_by_usage():
    # 5 events, but the usage says 10 tokens: each event carries 2
    r = rec(101.0, 0.5, [1.0] * 4, e2e=4.5, out=10, events=5)
    row, reqs, _ = aggregate_step(records_to_table([r]), W0, W1, SLO())
    assert row["output_tokens_per_s"] == pytest.approx(10 / 10)
    assert row["tokens_per_event"] == pytest.approx(2.0)


def test_window_from_records_when_the_manifest_has_none():
    recs = [rec(100.0, 0.5, [0.5] * 3, e2e=2.0, out=4), rec(101.0, 0.5, [0.5] * 3, e2e=2.0, out=4)]
    row, _, _ = aggregate_step(records_to_table(recs), None, None, SLO())
    assert row["window_start"] == 100.0 and row["window_s"] == pytest.approx(3.0)
    assert row["output_tokens_per_s"] == pytest.approx(8 / 3)


def test_empty_step_gives_nans_not_errors():
    row, reqs, kinds = aggregate_step(records_to_table([]), W0, W1, SLO())
    assert row["requests"] == 0 and row["output_tokens_per_s"] == 0.0
    assert math.isnan(row["ttft_p50_s"]) and math.isnan(row["slo_attainment"])
    assert kinds.empty


def test_bad_gap_values_do_not_poison_the_sums():
    r = rec(101.0, 0.5, [1.0, float("nan"), -3.0, 1.0], e2e=3.0, out=5)
    row, reqs, _ = aggregate_step(records_to_table([r]), W0, W1, SLO())
    assert np.isfinite(row["output_tokens_per_s"])
    assert row["output_tokens_per_s"] == pytest.approx(5 / 10)


def test_quantiles_match_numpy():
    rng = np.random.default_rng(3)
    for n in (1, 2, 5, 1000):
        v = rng.random(n).astype(np.float32)
        assert np.allclose(quantiles(v, (50, 90, 99, 100)), np.percentile(v.astype(float), [50, 90, 99, 100]))


gap_lists = st.lists(st.floats(0.0, 2.0, allow_nan=False, width=32), max_size=12)
requests = st.lists(st.tuples(st.floats(90.0, 112.0), st.one_of(st.none(), st.floats(0.0, 3.0)), gap_lists,
                              st.sampled_from(["ok", "cancelled", "error"])), max_size=12)


@settings(max_examples=150, deadline=None)
@given(requests)
def test_window_count_equals_brute_force(reqs):
    recs = [rec(s, t, g, status=stt, phase="measure" if W0 <= s <= W1 else "warmup", e2e=None if stt != "ok" else
                (t or 0) + sum(g), out=None) for s, t, g, stt in reqs]
    row, out, _ = aggregate_step(records_to_table(recs), W0, W1, SLO(ttft_s=None, itl_s=None))
    expected = []
    for s, t, g, _ in reqs:
        if t is None:
            expected.append(0)
            continue
        times = s + t + np.concatenate(([0.0], np.cumsum(np.asarray(g, np.float32).astype(np.float64))))
        expected.append(int(((times >= W0) & (times <= W1)).sum()))
    assert out.tokens_in_window.tolist() == expected
    assert out.slice_tokens.sum() == pytest.approx(sum(expected))


# --- open-loop lateness -------------------------------------------------------------------------

def test_lateness_is_over_the_arrivals_due_inside_the_window():
    # (due, sent): due before the window (left out), due inside and sent on time, 30 ms, 200 ms late, and one
    # due at 109.9 sent after the window closed (it counts: the schedule put it inside)
    due_sent = [(99.0, 99.5), (100.0, 100.0), (102.0, 102.03), (104.0, 104.2), (109.9, 110.4)]
    recs = [rec(sent, 0.1, [0.1], phase="measure" if W0 <= sent < W1 else "drain", e2e=0.3, out=2,
                scheduled_time=due) for due, sent in due_sent]
    row, _, _ = aggregate_step(records_to_table(recs), W0, W1, SLO())
    late = np.array([0.0, 0.03, 0.2, 0.5])
    assert row["lateness_p50_s"] == pytest.approx(np.percentile(late, 50))
    assert row["lateness_p99_s"] == pytest.approx(np.percentile(late, 99))
    assert row["lateness_max_s"] == pytest.approx(0.5)


def test_closed_loop_rows_have_no_lateness():
    row, _, _ = aggregate_step(records_to_table(hand_records()), W0, W1, SLO())
    assert all(math.isnan(row[k]) for k in ("lateness_p50_s", "lateness_p99_s", "lateness_max_s"))


def test_lateness_without_a_window_uses_the_measured_requests():
    recs = [rec(10.0 + i, 0.1, [], e2e=0.2, out=1, scheduled_time=10.0 + i - 0.01 * i) for i in range(5)]
    recs.append(rec(5.0, 0.1, [], phase="warmup", e2e=0.2, out=1, scheduled_time=1.0))  # 4 s late, warm-up
    row, _, _ = aggregate_step(records_to_table(recs), None, None, SLO())
    assert row["lateness_max_s"] == pytest.approx(0.04)
    assert row["lateness_p50_s"] == pytest.approx(0.02)
