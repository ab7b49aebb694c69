"""Reading step series back from a real Prometheus (Debian's `prometheus`), started here on loopback.

Prometheus scrapes a fault-injecting /metrics page (it climbs, goes down, comes back restarted)
and the client exporter; the reader must return the exposition's own series with gap and reset
rows where the scraper would have put them.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Union

import pytest
import yaml

from core.plan import ScrapeSpec
from core.records import METRIC_SCHEMA, RequestRecord
from deploy import launcher
from deploy.render.prometheus import target_entry
from loadtest.exporter import ClientExporter
from loadtest.prom_reader import (
    PromError,
    PromReader,
    instance_of,
    prefix_regex,
    quote,
    selector,
    server_matchers,
    step_series,
)
from loadtest.scraper import GAP, RESET, UP, SeriesBuffer
from tests.test_scraper import FakeMetrics, page

PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (.ci/setup-prometheus.sh installs the Debian package)")


@pytest.fixture
def prometheus(tmp_path):
    """Start Prometheus on a free loopback port with a given config; stopped by PID whatever happens."""
    started: list[launcher.Server] = []

    def start(config: Union[dict, Path], name: str = "prom") -> launcher.Server:
        """Start one on `config` (a dict written to a file, or the path of a rendered one)."""
        d = tmp_path / name
        d.mkdir(parents=True, exist_ok=True)
        if isinstance(config, Path):
            cfg = config
        else:
            cfg = d / "prometheus.yml"
            cfg.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        port = launcher.free_port()
        cmd = launcher.ServerCommand(
            "prometheus", [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={d / 'data'}",
                           "--storage.tsdb.retention.time=1h", f"--web.listen-address=127.0.0.1:{port}"],
            port=port, health_path="/-/ready", startup_timeout_s=30)
        srv = launcher.start(cmd, d / "prometheus.log")
        started.append(srv)
        return srv

    try:
        yield start
    finally:
        for srv in started:
            launcher.stop(srv)
            assert not srv.alive()


def wait_up(reader: PromReader, expr: str, n: int, timeout: float = 20.0) -> None:
    """Prometheus hands new targets to its scrapers every 5 s: wait until n of them answer."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sum(1 for r in reader.query(expr) if r["value"][1] == "1") >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"{expr}: fewer than {n} targets up after {timeout} s")


# ---------------------------------------------------------------------------- no server needed

def test_selectors_quote_and_check_label_names():
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    assert selector({"job": "x", "instance": "h:1"}, "vllm:.*") == '{__name__=~"vllm:.*",instance="h:1",job="x"}'
    with pytest.raises(ValueError, match="label name"):
        selector({"bad-name": "x"})
    rx = prefix_regex(("vllm:", "ridgeline_emulator:"))
    import re

    assert re.fullmatch(rx, "vllm:generation_tokens_total")
    assert re.fullmatch(rx, "ridgeline_emulator:gpu_power_watts")
    assert not re.fullmatch(rx, "python_gc_objects_collected_total")


def test_instances_and_matchers():
    assert instance_of("http://127.0.0.1:8000") == "127.0.0.1:8000"
    assert instance_of("https://vllm.example.com/v1") == "vllm.example.com:443"
    assert instance_of("http://[::1]:9000/") == "[::1]:9000"
    with pytest.raises(ValueError):
        instance_of("not a url")
    assert server_matchers("http://h:1", "awq") == {"instance": "h:1"}
    assert server_matchers("http://h:1", "awq", {"job": "vllm", "variant": "{variant}", "pod": "{instance}"}) == \
        {"job": "vllm", "variant": "awq", "pod": "h:1"}


def test_unreachable_prometheus_is_an_error_and_the_run_falls_back():
    with pytest.raises(ValueError):
        PromReader("ftp://x")
    r = PromReader("http://127.0.0.1:9", timeout=1.0)
    with pytest.raises(PromError, match="cannot be read"):
        r.query("up")
    direct = SeriesBuffer()
    direct.add(1.0, "a", 0, [(UP, "{}", 1.0)])
    spec = ScrapeSpec(prometheus_url="http://127.0.0.1:9", interval_s=0.1, timeout_s=0.5)
    table, warn = step_series(spec, "http://127.0.0.1:8000", "a", 0, 0.0, 1.0, direct.table())
    assert table.num_rows == 1 and "kept the direct scrape" in warn and "127.0.0.1:9" in warn
    table, warn = step_series(ScrapeSpec(), "http://127.0.0.1:8000", "a", 0, 0.0, 1.0, direct.table())
    assert table.num_rows == 1 and warn is None


# ---------------------------------------------------------------------------- a real Prometheus

INTERVAL = 0.5  # seconds; a shorter scrape timeout fails spuriously on a busy two-core machine


@needs_prometheus
def test_read_step_returns_the_scraped_series_with_gaps_and_resets(prometheus):
    fake = FakeMetrics()
    exporter = ClientExporter(port=0).start()
    stop = threading.Event()
    state = {"t0": time.time(), "start": 1000.0, "rate": 200.0}

    def climb() -> None:  # tokens grow at `rate` per second since the (re)start
        while not stop.is_set():
            tokens = round((time.time() - state["t0"]) * state["rate"])
            fake.body = page(tokens, start=state["start"], created=state["start"] + 1)
            time.sleep(0.02)

    feeder = threading.Thread(target=climb, daemon=True)
    feeder.start()
    try:
        cfg = {"global": {"scrape_interval": "500ms", "scrape_timeout": "500ms"},
               "scrape_configs": [
                   {"job_name": "servers", "static_configs": [target_entry(fake.url, {"variant": "awq"})]},
                   {"job_name": "client", "static_configs": [target_entry(exporter.url)]}]}
        srv = prometheus(cfg)
        reader = PromReader(srv.url, timeout=5.0)
        wait_up(reader, 'up{job=~"servers|client"}', 2)
        exporter.begin_step("awq", 0, 4, None, sent=lambda: 3, in_flight=lambda: 1)
        for _ in range(3):
            exporter.observe(RequestRecord("awq", 0, 4, None, "r", "measure", 1.0, ttft_s=0.1, itl_s=[0.01],
                                           e2e_s=0.2, output_tokens=7))
        start = time.time()
        time.sleep(3.0)                     # climbing at 200 tokens/s
        fake.status = 503
        down_from = time.time()
        time.sleep(1.5)                     # down: Prometheus's up is 0
        state.update(t0=time.time(), start=2000.0)
        fake.status = 200
        up_again = time.time()
        time.sleep(3.0)                     # back, restarted, counting from 0
        end = time.time()
        matchers = server_matchers(fake.url, "awq")
        assert reader.wait_scraped(matchers, end, 3.0)
        table = reader.read_step("awq", 4, start, end, INTERVAL, matchers)
    finally:
        stop.set()
        feeder.join(2)
        fake.close()

    assert table.schema.equals(METRIC_SCHEMA)
    rows = table.to_pylist()
    assert {r["variant"] for r in rows} == {"awq"} and {r["step"] for r in rows} == {4}
    assert all(start - 1e-3 <= r["time"] <= end + 1e-3 for r in rows)
    # the exposition's own names and labels: nothing Prometheus added
    names = {r["metric"] for r in rows}
    assert {"vllm:generation_tokens_total", "vllm:num_requests_running",
            "vllm:time_to_first_token_seconds_bucket", UP, GAP, RESET} <= names
    assert not any(n.startswith(("python_", "process_")) for n in names)
    tok = [(r["time"], r["value"]) for r in rows if r["metric"] == "vllm:generation_tokens_total"]
    assert {r["labels"] for r in rows if r["metric"] == "vllm:generation_tokens_total"} == \
        {'{"engine":"0","model_name":"m"}'}
    # gaps while it was down, a reset when it came back, and the climb rate on either side
    gaps = [r for r in rows if r["metric"] == GAP]
    assert gaps and all(down_from <= r["time"] <= up_again + 2 * INTERVAL for r in gaps)
    assert {json.loads(r["labels"])["reason"] for r in gaps} == {"down"}
    resets = [r for r in rows if r["metric"] == RESET]
    assert len(resets) == 1 and resets[0]["time"] >= up_again
    assert not any(t in {r["time"] for r in gaps} for t, _ in tok)  # no stale samples at a gap
    before = [(t, v) for t, v in tok if t < down_from]
    after = [(t, v) for t, v in tok if t > resets[0]["time"]]
    # a busy two-core machine misses scrapes: 3 s of 0.5 s scrapes must still leave a second's span
    for name, part in (("before the outage", before), ("after the restart", after)):
        (t0, v0), (t1, v1) = part[0], part[-1]
        assert t1 - t0 >= 1.0, f"{name}: samples at {[t for t, _ in part]}"
        assert (v1 - v0) / (t1 - t0) == pytest.approx(200, rel=0.25)

    # the client's series, read the same way
    try:
        client = reader.read_step("awq", 0, start, time.time(), INTERVAL, {"job": "client"},
                                  prefixes=("ridgeline_client_",))
    finally:
        exporter.stop()
    c = [r for r in client.to_pylist() if r["metric"] == "ridgeline_client_output_tokens_total"]
    assert c and c[-1]["value"] == 21.0
    # an empty label value is no label to Prometheus (and the scraper drops it too)
    assert json.loads(c[-1]["labels"]) == {"variant": "awq", "step": "0", "concurrency": "4"}


@needs_prometheus
def test_step_series_uses_prometheus_and_falls_back_when_it_has_nothing(prometheus):
    fake = FakeMetrics()
    try:
        fake.body = page(50)
        cfg = {"global": {"scrape_interval": "500ms", "scrape_timeout": "500ms"},
               "scrape_configs": [{"job_name": "servers",
                                   "static_configs": [target_entry(fake.url, {"variant": "fp16"})]}]}
        srv = prometheus(cfg)
        reader = PromReader(srv.url)
        wait_up(reader, "up", 1)
        start = time.time()
        time.sleep(1.0)
        end = time.time()
        base = fake.url.rsplit("/metrics", 1)[0]
        direct = SeriesBuffer()
        direct.add(start, "fp16", 0, [(UP, "{}", 1.0)])
        spec = ScrapeSpec(prometheus_url=srv.url, interval_s=INTERVAL, timeout_s=2.0)
        table, warn = step_series(spec, base, "fp16", 0, start, end, direct.table())
        assert warn is None
        assert table.num_rows > direct.table().num_rows
        assert "vllm:generation_tokens_total" in table.column("metric").to_pylist()
        # matched by the variant label instead of the instance
        spec.prometheus_labels = {"job": "servers", "variant": "{variant}"}
        table2, warn = step_series(spec, base, "fp16", 0, start, end, direct.table())
        assert warn is None and table2.num_rows == table.num_rows
        # a variant Prometheus does not know: the direct scrape is kept, and the manifest is told why
        table3, warn = step_series(spec, base, "gptq", 0, start, end, direct.table())
        assert table3.num_rows == 1 and 'variant="gptq"' in warn
    finally:
        fake.close()


@needs_prometheus
def test_query_errors_name_prometheus_and_the_reason(prometheus):
    srv = prometheus({"global": {"scrape_interval": "1s"}, "scrape_configs": []})
    r = PromReader(srv.url)
    with pytest.raises(PromError, match="bad_data"):
        r.query("sum(")
    with pytest.raises(ValueError, match="before it starts"):
        r.query_range("up", 10.0, 5.0, 1.0)
    now = time.time()
    # long ranges are split under Prometheus's 11,000 points per series
    assert r.query_range("vector(1)", now - 30000, now, 1.0)[0]["values"].__len__() == 30001
