"""The client benchmark's measurements, on a small scale (the full run is `ridgeline bench client`)."""

import json
import sys

import numpy as np
import pytest

from loadtest.client_bench import BenchConfig, client_run, report_lines, run_bench, timing_errors


def test_timing_errors_are_measured_minus_known():
    t = timing_errors([0.051, 0.052, 0.050], [[0.02, 0.021], [0.019]], 0.05, 0.02)
    assert t["ttft"]["p50_ms"] == pytest.approx(1.0) and t["ttft"]["n"] == 3
    assert t["gap"]["n"] == 3 and t["gap"]["p50_ms"] == pytest.approx(0.0, abs=1e-9)


def test_client_run_counts_events_and_timing(null_server):
    import gevent  # noqa: F401 - the test process is patched by conftest

    srv = null_server(ttft_ms=20, gap_ms=10)
    r = client_run(srv.url, streams=8, seconds=1.0, output_tokens=5, ramp_s=0.05, expect_ttft_s=0.02,
                   expect_gap_s=0.01)
    assert r["errors"] == 0 and r["events"] > 100
    # the null server waits at least the delays it was given: errors are small and mostly positive
    assert -1.0 < r["timing"]["ttft"]["p50_ms"] < 15
    assert abs(r["timing"]["gap"]["p50_ms"]) < 5
    assert r["cpu_s"] > 0


def test_bench_without_vllm_reports_ridgeline_alone():
    cfg = BenchConfig(streams=[16], parse_streams=8, parse_seconds=1.0, timing_seconds=1.0, ttft_ms=10, gap_ms=10,
                      timing_tokens=4, vllm_python=None, skip_scaling=True, parse_tokens=32)
    r = run_bench(cfg, log=lambda m: None)
    assert r["parse"]["ridgeline"]["events_per_core_s"] > 1000
    assert r["timing"][0]["streams"] == 16 and "vllm" not in r["timing"][0]
    lines = report_lines(r)
    assert any("ridgeline" in x for x in lines)
    assert np.isfinite(r["summary"]["p99_gap_error_ms@16"])


@pytest.mark.parametrize("events,burst", [(7, 3), (16, 16), (5, 1)])
def test_parse_rate_server_sends_every_event_whatever_its_burst(tmp_path, events, burst):
    """Writing several events a send changes how they are cut on the wire, never how many arrive."""
    from deploy import launcher
    from loadtest.client_bench import _null_servers
    from scenarios.openai_stream import Timeouts, make_client, stream_request

    procs = _null_servers(tmp_path, burst=burst)
    try:
        client = make_client(procs[0].url, Timeouts())
        for _ in range(2):  # the second rides the kept connection
            res = stream_request(client, "/v1/completions", {"prompt": "x", "max_tokens": events, "stream": True},
                                 Timeouts())
            assert res.ok and res.done and res.error_kind is None
            assert res.token_events == events and res.completion_tokens == events
            assert len(res.itl_s) == events - 1
    finally:
        for p in procs:
            launcher.stop(p)


def test_report_says_how_many_events_a_send():
    cfg = BenchConfig(streams=[8], parse_streams=4, parse_seconds=0.5, timing_seconds=0.5, ttft_ms=5, gap_ms=5,
                      timing_tokens=3, vllm_python=None, skip_scaling=True, parse_tokens=32, parse_burst=8)
    r = run_bench(cfg, log=lambda m: None)
    assert r["config"]["parse_burst"] == 8
    assert any("32 events a request, 8 a send" in x for x in report_lines(r))


@pytest.mark.slow
@pytest.mark.vllm
def test_bench_against_vllm_bench_serve():
    from tests.support.vllm_env import SKIP_REASON, vllm_python

    python = vllm_python()
    if python is None:
        pytest.skip(SKIP_REASON)
    cfg = BenchConfig(streams=[64], parse_seconds=2.0, timing_seconds=2.0, skip_scaling=False, scaling_seconds=2.0,
                      vllm_python=python)
    r = run_bench(cfg, log=lambda m: None)
    s = r["summary"]
    assert s["vllm_events_per_core_s"] > 0 and s["parse_ratio"] > 0
    assert "vllm_p99_gap_error_ms@64" in s and "scaling_2_workers" in s


def test_window_timing_leaves_out_events_after_the_window():
    from core.records import RequestRecord
    from loadtest.client_bench import window_timing

    def rec(send, ttft, gaps):
        return RequestRecord("v", 0, 1, None, "x", "measure", send, ttft_s=ttft, itl_s=gaps)

    recs = [rec(100.0, 0.05, [0.02, 0.02, 0.6]),  # the 0.6 s gap lands after the window: torn down
            rec(99.0, 0.05, [0.02]),  # sent before the window
            rec(100.5, 0.06, [0.03])]
    t = window_timing(recs, 100.0, 100.6, 0.05, 0.02)
    assert t["gap"]["n"] == 3 and t["ttft"]["n"] == 2  # the 0.6 s gap and the early request are out
    assert t["gap"]["p50_ms"] == pytest.approx(0.0, abs=1e-6) and t["gap"]["p99_ms"] < 10.0


def test_vllm_python_defaults_to_the_vllm_cpu_venv(monkeypatch, tmp_path):
    """The interpreter beside which `vllm bench serve` runs is the one .ci/setup-vllm-cpu.sh installs."""
    from pathlib import Path

    from loadtest.client_bench import default_vllm_python

    monkeypatch.delenv("RIDGELINE_VLLM_PYTHON", raising=False)
    monkeypatch.delenv("RIDGELINE_VLLM_VENV", raising=False)
    assert default_vllm_python() == str(Path.home() / ".cache" / "ridgeline" / "vllm-cpu" / "bin" / "python")
    assert BenchConfig().vllm_python == default_vllm_python()
    monkeypatch.setenv("RIDGELINE_VLLM_VENV", str(tmp_path))
    assert default_vllm_python() == str(tmp_path / "bin" / "python")
    monkeypatch.setenv("RIDGELINE_VLLM_PYTHON", "/somewhere/python")
    assert BenchConfig().vllm_python == "/somewhere/python"


def test_steady_window_takes_cpu_and_events_between_two_request_ends():
    from loadtest.client_bench import steady_window

    # (time, CPU seconds, token events so far) at each of 11 request ends; start-up CPU before the first
    marks = [[10.0 + i, 9.0 + 0.5 * i, 100 * i] for i in range(11)]
    w = steady_window(marks)
    assert w["window"] == {"events": 800, "cpu_s": 4.0, "wall_s": 8.0}  # ends 1 to 9 of 0..10
    assert w["events_per_core_s"] == 200.0 and w["cpu_pct"] == 50.0
    with pytest.raises(RuntimeError, match="too few"):
        steady_window(marks[:2])


def test_tokenizer_for_vllm_bench_is_written_by_the_given_interpreter(tmp_path):
    """The prompt words come back whole through the tokenizer a separate interpreter wrote."""
    from tokenizers import Tokenizer

    from loadtest.client_bench import make_tokenizer
    from scenarios.prompts import WORDS

    d = make_tokenizer(sys.executable, tmp_path / "tok")
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    text = " ".join(WORDS[:20])
    enc = tok.encode(text)
    assert "[UNK]" not in enc.tokens and len(enc.ids) == 20
    assert tok.decode(enc.ids) == text
    assert json.loads((d / "config.json").read_text())["model_type"] == "llama"


def test_tokenizer_failure_names_the_interpreter(tmp_path):
    from loadtest.client_bench import make_tokenizer

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'No module named tokenizers' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match="could not write a tokenizer"):
        make_tokenizer(str(fake), tmp_path / "tok")


def test_timing_verdict_compares_sizes_and_says_where_it_came_from():
    from loadtest.client_bench import no_worse, timing_verdict

    def t(tp50, tp99, gp50, gp99):
        return {"timing": {"ttft": {"p50_ms": tp50, "p99_ms": tp99}, "gap": {"p50_ms": gp50, "p99_ms": gp99}}}

    bench = t(2.0, 9.0, 0.03, 1.5)
    assert all(no_worse(t(1.0, 9.04, -0.05, 1.5)["timing"], bench["timing"]).values())  # 0.04 ms over counts as equal
    assert no_worse(t(1.0, 9.0, -0.2, 1.5)["timing"], bench["timing"])["gap p50"] is False  # early is an error too
    row = {"streams": 512, "ridgeline": t(1.0, 20.0, 0.0, 7.0), "vllm": bench}
    assert timing_verdict(row) == {"ok": False, "from": "1 process", "figures": {
        "ttft p50": True, "ttft p99": False, "gap p50": True, "gap p99": False}}
    row["ridgeline_workers"] = {"workers": 2, **t(1.0, 3.0, 0.0, 1.0)}
    v = timing_verdict(row)
    assert v["ok"] and v["from"] == "2 workers"
    row["ridgeline_workers"] = {"workers": 2, **t(9.0, 30.0, 1.0, 9.0)}
    v = timing_verdict(row)
    assert not v["ok"] and v["from"] == "1 process; 2 workers no better" and v["figures"]["ttft p50"]


def test_rows_whose_null_server_ran_much_later_under_one_client_are_flagged():
    from loadtest.client_bench import _lateness_note

    def row(a, b):
        return {"ridgeline": {"server_lateness": {"p99_ms": a}}, "vllm": {"server_lateness": {"p99_ms": b}}}

    assert _lateness_note(row(1.2, 1.1)) == "" and _lateness_note(row(3.0, 1.0)) == ""  # within 2x + 1 ms
    assert "29.5 ms under ridgeline against 6.1 ms" in _lateness_note(row(29.5, 6.1))
    assert "do not compare" in _lateness_note(row(2.0, 30.0))
