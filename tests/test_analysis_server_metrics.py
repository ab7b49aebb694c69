"""Server-side figures from scraped rows: counter deltas across restarts, histogram quantiles, gauges."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis.server_metrics import (
    counter_deltas,
    histogram_quantile,
    scraped,
    step_series,
    step_server_metrics,
)

BASE = {"engine": "0", "model_name": "m"}


def lab(**extra) -> str:
    return json.dumps({**BASE, **extra}, sort_keys=True, separators=(",", ":"))


def frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["time", "metric", "labels", "value"])
    df["variant"], df["step"] = "v", 0
    return df


def up_rows(times):
    return [(t, "ridgeline:scrape_up", "{}", 1.0) for t in times]


def test_counter_rate_over_the_window():
    times = [0, 1, 2, 3, 4, 5]
    rows = up_rows(times) + [(t, "vllm:generation_tokens_total", lab(), 100.0 * t) for t in times]
    m = step_server_metrics(scraped(frame(rows)), 1.0, 4.0)
    assert m["server_generation_tokens_per_s"] == pytest.approx(100.0)
    assert m["scrapes_in_window"] == 4


def test_counter_reset_with_marker_counts_from_zero():
    # 0, 100, 200 then the server restarts: 50, 150 (a reset row marks t=3)
    vals = [0, 100, 200, 50, 150]
    rows = up_rows(range(5)) + [(t, "vllm:generation_tokens_total", lab(), v) for t, v in enumerate(vals)]
    rows.append((3, "ridgeline:counter_reset", "{}", 1.0))
    m = step_server_metrics(scraped(frame(rows)), 0.0, 4.0)
    assert m["server_generation_tokens_per_s"] == pytest.approx((200 + 50 + 100) / 4)
    assert m["counter_resets"] == 1


def test_counter_drop_without_marker_is_still_a_restart():
    vals = [0, 100, 200, 50, 150]
    rows = up_rows(range(5)) + [(t, "vllm:generation_tokens_total", lab(), v) for t, v in enumerate(vals)]
    m = step_server_metrics(scraped(frame(rows)), 0.0, 4.0)
    assert m["server_generation_tokens_per_s"] == pytest.approx(350 / 4)


def test_restart_that_overtook_the_old_count_needs_the_marker():
    # restarted at t=2 and already past the old value: only the reset row tells
    vals = [0, 100, 300, 400]
    rows = up_rows(range(4)) + [(t, "vllm:num_preemptions_total", lab(), v) for t, v in enumerate(vals)]
    rows.append((2, "ridgeline:counter_reset", "{}", 1.0))
    m = step_server_metrics(scraped(frame(rows)), 0.0, 3.0)
    assert m["preemptions"] == pytest.approx(100 + 300 + 100)


def test_counter_deltas_per_series():
    t = np.array([0, 1, 2, 0, 1, 2], float)
    keys = np.array([0, 0, 0, 1, 1, 1])
    v = np.array([5, 7, 9, 1, 0, 4], float)
    order, d = counter_deltas(t, keys, v, np.array([]), 0.0)
    assert d.tolist() == [0, 2, 2, 0, 0, 4]  # series 1 went down at t=1: it restarted and counted 0


def test_series_appearing_mid_window_counts_from_zero():
    rows = up_rows(range(4)) + [(t, "vllm:prompt_tokens_total", lab(), 10.0 * t) for t in (2, 3)]
    m = step_server_metrics(scraped(frame(rows)), 0.0, 3.0)
    assert m["server_prompt_tokens_per_s"] == pytest.approx((20 + 10) / 3)


def test_histogram_quantile_matches_prometheus_rules():
    upper = np.array([0.1, 0.2, 0.4, np.inf])
    # 10 in (0, 0.1], 10 in (0.1, 0.2], 0 in (0.2, 0.4], 0 above
    cum = np.array([10, 20, 20, 20], float)
    assert histogram_quantile(0.5, upper, cum)[0] == pytest.approx(0.1)
    assert histogram_quantile(0.25, upper, cum)[0] == pytest.approx(0.05)  # from 0 inside the first bucket
    assert histogram_quantile(0.75, upper, cum)[0] == pytest.approx(0.15)
    # a quantile that falls in the +Inf bucket is the highest finite bound
    assert histogram_quantile(0.99, upper, np.array([1, 2, 3, 10], float))[0] == pytest.approx(0.4)
    assert np.isnan(histogram_quantile(0.5, upper, np.zeros(4))[0])


def test_histogram_quantile_of_a_known_distribution():
    rng = np.random.default_rng(7)
    x = rng.exponential(0.02, size=200_000)
    bounds = np.concatenate((np.linspace(0.001, 0.2, 200), [np.inf]))
    cum = np.array([(x <= b).sum() for b in bounds], float)
    width = bounds[1] - bounds[0]
    for q in (0.5, 0.9, 0.99):
        est, lo, hi = histogram_quantile(q, bounds, cum)
        assert abs(est - np.quantile(x, q)) <= width
        assert lo <= np.quantile(x, q) <= hi + width


def _hist_rows(times, counts_at):
    """Bucket rows for vllm:time_to_first_token_seconds with cumulative counts per le at each time."""
    rows = []
    for t, counts in zip(times, counts_at):
        for le, c in counts.items():
            rows.append((t, "vllm:time_to_first_token_seconds_bucket", lab(le=le), c))
    return rows


def test_histogram_estimate_uses_bucket_deltas_in_the_window_across_a_restart():
    les = ["0.1", "0.2", "0.4", "+Inf"]
    before = {le: 1000.0 for le in les}  # a thousand fast requests before the window
    counts = [before,
              {"0.1": 1000, "0.2": 1010, "0.4": 1010, "+Inf": 1010},
              {"0.1": 0, "0.2": 0, "0.4": 10, "+Inf": 10}]  # restarted: counts from zero
    rows = up_rows([0, 1, 2]) + _hist_rows([0, 1, 2], counts) + [(2, "ridgeline:counter_reset", "{}", 1.0)]
    m = step_server_metrics(scraped(frame(rows)), 0.0, 2.0)
    # in the window: 10 in (0.1, 0.2] and 10 in (0.2, 0.4]; the median is the edge between them
    assert m["server_ttft_p50_s"] == pytest.approx(0.2)
    assert m["server_ttft_count"] == 20
    assert (m["server_ttft_p50_bucket_lo"], m["server_ttft_p50_bucket_hi"]) == (0.1, 0.2)


def test_histograms_of_several_engines_are_summed():
    les = ["0.1", "+Inf"]
    rows = up_rows([0, 1])
    for eng, n in (("0", 4), ("1", 6)):
        for t, c in ((0, 0), (1, n)):
            for le in les:
                rows.append((t, "vllm:inter_token_latency_seconds_bucket",
                             json.dumps({"engine": eng, "le": le}, sort_keys=True, separators=(",", ":")), c))
    m = step_server_metrics(scraped(frame(rows)), 0.0, 1.0)
    assert m["server_itl_count"] == 10
    assert m["server_itl_p50_s"] == pytest.approx(0.05)


def test_gauges_sum_running_over_engines_and_average_kv_usage():
    rows = up_rows([0, 1, 2])
    for t, (a, b) in enumerate([(1, 2), (3, 4), (5, 6)]):
        rows += [(t, "vllm:num_requests_running", json.dumps({"engine": "0"}), a),
                 (t, "vllm:num_requests_running", json.dumps({"engine": "1"}), b),
                 (t, "vllm:kv_cache_usage_perc", json.dumps({"engine": "0"}), 0.1 * a),
                 (t, "vllm:kv_cache_usage_perc", json.dumps({"engine": "1"}), 0.1 * b)]
    m = step_server_metrics(scraped(frame(rows)), 0.0, 2.0)
    assert m["server_running_mean"] == pytest.approx((3 + 7 + 11) / 3)
    assert m["server_running_max"] == 11
    assert m["kv_cache_usage_mean"] == pytest.approx(0.1 * (1.5 + 3.5 + 5.5) / 3)
    series = step_series(scraped(frame(rows)))
    assert series.running.tolist() == [3, 7, 11]


def test_failed_scrapes_are_counted_and_nothing_else_breaks():
    rows = up_rows([0, 1, 3]) + [(2, "ridgeline:scrape_gap", json.dumps({"reason": "timeout"}), 1.0)]
    rows += [(t, "vllm:generation_tokens_total", lab(), 10.0 * t) for t in (0, 1, 3)]
    m = step_server_metrics(scraped(frame(rows)), 0.0, 3.0)
    assert m["scrape_gaps"] == 1
    assert m["server_generation_tokens_per_s"] == pytest.approx(10.0)


def test_no_rows_no_numbers():
    m = step_server_metrics(scraped(None), 0.0, 1.0)
    assert m["scrapes_in_window"] == 0 and np.isnan(m["server_generation_tokens_per_s"])
    assert step_series(None).empty


def test_short_window_uses_the_scrapes_around_it():
    rows = up_rows([0, 1, 2]) + [(t, "vllm:generation_tokens_total", lab(), 50.0 * t) for t in (0, 1, 2)]
    m = step_server_metrics(scraped(frame(rows)), 0.4, 0.6)  # no scrape inside: use 0 and 1
    assert m["server_generation_tokens_per_s"] == pytest.approx(50.0)


def test_achieved_flops_and_bytes_are_the_counters_rates_across_a_restart():
    # 2e14 FLOP/s and 3e12 B/s; the server restarts at t = 3 (counting again from 0), with the marker
    times = [0, 1, 2, 3, 4, 5]
    rows = up_rows(times) + [(3, "ridgeline:counter_reset", "{}", 1.0)]
    for name, rate in (("vllm:estimated_flops_per_gpu_total", 2e14), ("vllm:estimated_read_bytes_per_gpu_total", 3e12)):
        rows += [(t, name, lab(), rate * (t if t < 3 else t - 3)) for t in times]
    m = step_server_metrics(scraped(frame(rows)), 1.0, 5.0)
    # 1 -> 2: one second's worth; 2 -> 3: restarted, at 0 (adds 0); 3 -> 4 and 4 -> 5: one each; over 4 s
    assert m["achieved_flops_per_s"] == pytest.approx(3 * 2e14 / 4)
    assert m["achieved_read_bytes_per_s"] == pytest.approx(3 * 3e12 / 4)
    assert m["counter_resets"] == 1


def test_achieved_rates_are_per_gpu_over_engines_and_nan_when_not_exposed():
    # two data-parallel engines, each on its own GPU, at 1e14 and 3e14 FLOP/s; engine 1 has two model names
    times = [0, 1, 2]
    rows = up_rows(times) + [(t, "vllm:estimated_flops_per_gpu_total", lab(engine="0"), 1e14 * t) for t in times]
    rows += [(t, "vllm:estimated_flops_per_gpu_total", lab(engine="1", model_name=n), 1.5e14 * t)
             for t in times for n in ("a", "b")]
    m = step_server_metrics(scraped(frame(rows)), 0.0, 2.0)
    assert m["achieved_flops_per_s"] == pytest.approx(2e14)  # the mean GPU, not the sum of both
    assert np.isnan(m["achieved_read_bytes_per_s"])
