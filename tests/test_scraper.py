"""The scraper: parsing vLLM's page, gaps for failed scrapes, reset rows for restarts, its own clock.

A fake /metrics server (fault injection only) serves whatever page or failure a test sets.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.records import METRIC_SCHEMA
from loadtest.scraper import (
    DURATION,
    GAP,
    RESET,
    UP,
    Scraper,
    count_resets,
    failure_reason,
    parse_page,
    restarted,
)

CAPTURE = Path(__file__).parent / "data" / "vllm_metrics" / "metrics.txt"


def page(tokens: float, start: float = 1000.0, created: float = 1001.0, running: int = 3) -> str:
    return f"""# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds {start}
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} {running}
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",model_name="m"}} {tokens}
# HELP vllm:generation_tokens_created Number of generation tokens processed.
# TYPE vllm:generation_tokens_created gauge
vllm:generation_tokens_created{{engine="0",model_name="m"}} {created}
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.1",model_name="m"}} {tokens / 10}
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="m"}} {tokens / 5}
vllm:time_to_first_token_seconds_count{{engine="0",model_name="m"}} {tokens / 5}
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="m"}} {tokens / 50}
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 12.0
"""


class FakeMetrics:
    """A /metrics endpoint whose answer the test sets: a page, an HTTP status, garbage, or a stall."""

    def __init__(self) -> None:
        self.body = page(100)
        self.status = 200
        self.delay = 0.0
        self.hits = 0
        owner = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.hits += 1
                if owner.delay:
                    time.sleep(owner.delay)
                data = owner.body.encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a) -> None:  # noqa: ANN002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/metrics"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    f = FakeMetrics()
    try:
        yield f
    finally:
        f.close()


def rows_of(scraper: Scraper):
    return scraper.buffer.table().to_pylist()


def test_parse_keeps_vllm_families_with_canonical_labels():
    p = parse_page(page(100))
    names = {r[0] for r in p.rows}
    assert "vllm:generation_tokens_total" in names
    assert "vllm:time_to_first_token_seconds_bucket" in names
    assert not any(n.startswith(("python_", "process_")) for n in names)
    lab = next(r[1] for r in p.rows if r[0] == "vllm:generation_tokens_total")
    assert lab == '{"engine":"0","model_name":"m"}'
    # counters and histogram parts are cumulative; gauges and _created are not
    cum = {k[0] for k in p.cumulative}
    assert cum == {"vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                   "vllm:time_to_first_token_seconds_count", "vllm:time_to_first_token_seconds_sum"}
    assert p.start_time == 1000.0
    assert list(p.created.values()) == [1001.0]
    # an empty label value is dropped, as Prometheus drops it
    q = parse_page('# TYPE vllm:x gauge\nvllm:x{a="",b="1"} 2\n')
    assert q.rows == [("vllm:x", '{"b":"1"}', 2.0)]


@pytest.mark.skipif(not CAPTURE.exists(), reason=f"no captured vLLM page at {CAPTURE}")
def test_parse_captured_real_vllm_page():
    text = CAPTURE.read_text(encoding="utf-8")
    p = parse_page(text)
    names = {r[0] for r in p.rows}
    for n in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
              "vllm:generation_tokens_total", "vllm:prompt_tokens_total", "vllm:num_preemptions_total",
              "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
              "vllm:e2e_request_latency_seconds_bucket", "vllm:request_success_total"):
        assert n in names, n
    # every sample of every vllm: family in the page is kept, and nothing else
    expected = sum(1 for line in text.splitlines() if line.startswith("vllm:"))
    assert len(p.rows) == expected
    assert p.start_time is not None
    for name, labels, _ in p.rows:
        assert json.loads(labels) == dict(sorted(json.loads(labels).items()))


def test_reset_detection_helpers():
    a = parse_page(page(100))
    b = parse_page(page(50))  # every cumulative series went down
    assert count_resets(a.cumulative, b.cumulative) == 5  # the counter, 2 buckets, count, sum
    assert count_resets(a.cumulative, parse_page(page(150)).cumulative) == 0
    # a restart that already counted past the old values is caught by the start time
    c = parse_page(page(500, start=2000.0))
    assert count_resets(a.cumulative, c.cumulative) == 0 and restarted(a, c)
    d = parse_page(page(500, created=3000.0))
    assert restarted(a, d)
    assert not restarted(a, parse_page(page(500)))


def test_scrape_rows_markers_and_schema(fake):
    s = Scraper(fake.url, "v1", timeout=2.0)
    s.new_step(3)
    assert s.scrape_once()
    t = s.buffer.table()
    assert t.schema.equals(METRIC_SCHEMA)
    rows = t.to_pylist()
    assert {r["variant"] for r in rows} == {"v1"} and {r["step"] for r in rows} == {3}
    by = {r["metric"]: r for r in rows}
    assert by[UP]["value"] == 1.0
    assert 0 < by[DURATION]["value"] < 2.0
    assert by["vllm:generation_tokens_total"]["value"] == 100.0
    assert GAP not in by and RESET not in by
    assert len({r["time"] for r in rows}) == 1  # one timestamp per scrape


def test_failed_scrapes_are_gaps_with_reasons(fake):
    s = Scraper(fake.url, "v", timeout=0.3)
    s.new_step(0)
    fake.status = 500
    assert not s.scrape_once()
    fake.status, fake.body = 200, "this is { not a metrics page\n"
    assert not s.scrape_once()
    fake.body, fake.delay = page(100), 1.0
    t0 = time.perf_counter()
    assert not s.scrape_once()
    assert time.perf_counter() - t0 < 0.9  # the timeout, not the server's stall, bounds a scrape
    fake.delay = 0.0
    assert s.scrape_once()
    dead = Scraper("http://127.0.0.1:9/metrics", "v", timeout=0.5)  # discard port: nothing listens
    assert not dead.scrape_once()

    gaps = [json.loads(r["labels"])["reason"] for r in rows_of(s) if r["metric"] == GAP]
    assert gaps == ["http_500", "parse", "timeout"]
    assert s.buffer.failures == 3 and s.buffer.scrapes == 4
    assert "timed out" in s.buffer.last_error or "timeout" in s.buffer.last_error.lower()
    assert [json.loads(r["labels"])["reason"] for r in rows_of(dead)] == ["refused"]
    # a gap row carries nothing else: no stale samples at a failed scrape's time
    gap_times = {r["time"] for r in rows_of(s) if r["metric"] == GAP}
    assert all(r["metric"] == GAP for r in rows_of(s) if r["time"] in gap_times)


def test_restart_leaves_a_reset_row_even_across_steps_and_gaps(fake):
    s = Scraper(fake.url, "v", timeout=1.0)
    s.new_step(0)
    fake.body = page(100)
    s.scrape_once()
    fake.body = page(200)
    s.scrape_once()
    s.new_step(1)  # the last good page is kept across steps
    fake.status = 503
    s.scrape_once()  # the server is down: a gap
    fake.status, fake.body = 200, page(10, start=5000.0, created=5001.0)
    s.scrape_once()  # back, restarted, counters from zero
    fake.body = page(30, start=5000.0, created=5001.0)
    s.scrape_once()
    rows = rows_of(s)
    resets = [r for r in rows if r["metric"] == RESET]
    assert len(resets) == 1 and resets[0]["value"] == 5.0 and resets[0]["step"] == 1
    assert s.buffer.resets == 1
    tok = [(r["time"], r["value"]) for r in rows if r["metric"] == "vllm:generation_tokens_total"]
    assert [v for _, v in tok] == [10.0, 30.0]
    assert resets[0]["time"] == tok[0][0]  # the reset is marked at the first scrape after it


def test_background_loop_keeps_its_interval_and_stops(fake):
    s = Scraper(fake.url, "v", timeout=0.5, interval=0.1)
    s.new_step(0)
    s.start()
    time.sleep(1.05)
    s.stop(final=True)
    hits = fake.hits
    times = sorted({r["time"] for r in rows_of(s) if r["metric"] == UP})
    assert 10 <= len(times) <= 13
    gaps = [b - a for a, b in zip(times, times[1:-1])]  # the last one is stop()'s own scrape
    assert max(gaps) < 0.2 and min(gaps) > 0.05
    time.sleep(0.3)
    assert fake.hits == hits  # stopped: no more scrapes


def test_overrunning_scrapes_skip_ticks_instead_of_bunching(fake):
    fake.delay = 0.25
    s = Scraper(fake.url, "v", timeout=1.0, interval=0.1)
    s.new_step(0)
    s.start()
    time.sleep(1.0)
    s.stop(final=False)
    times = sorted({r["time"] for r in rows_of(s) if r["metric"] == UP})
    assert 3 <= len(times) <= 5
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.25


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="interval"):
        Scraper("http://127.0.0.1:1/metrics", "v", interval=0)
    with pytest.raises(ValueError, match="timeout"):
        Scraper("http://127.0.0.1:1/metrics", "v", timeout=-1)


def test_failure_reason_names():
    import socket
    import urllib.error

    assert failure_reason(urllib.error.URLError(ConnectionRefusedError())) == "refused"
    assert failure_reason(urllib.error.URLError(socket.timeout("timed out"))) == "timeout"
    assert failure_reason(TimeoutError()) == "timeout"
    assert failure_reason(ValueError("bad")) == "parse"


def test_scrapes_back_off_when_the_page_is_slow_to_serve():
    """A /metrics page that takes 50 ms to serve, scraped 'every 10 ms' with a 10% share: at most every 0.5 s."""
    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            time.sleep(0.05)
            body = b"vllm:num_requests_running 1\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):  # noqa: ANN002
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/metrics"
        s = Scraper(url, "v", interval=0.01, max_server_share=0.1)
        s.new_step(0)
        for _ in range(3):
            assert s.scrape_once()
        assert s.current_interval() >= 0.5  # every scrape slept 50 ms: 0.05 / 0.1
        assert Scraper(url, "v", interval=0.01).current_interval() == 0.01  # no share: the plan's interval
    finally:
        srv.shutdown()
