"""The client exporter: what it serves, with which labels, and that a sweep feeds it live."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.plan import parse_plan
from core.records import RequestRecord
from deploy.launcher import ServerCommand
from loadtest.exporter import METRIC_NAMES, ClientExporter
from loadtest.runner import Sweep, new_run_dir


def samples(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(smp: dict, name: str, **labels: str) -> float:
    return smp[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def exporter():
    x = ClientExporter(port=0)
    x.start()
    try:
        yield x
    finally:
        x.stop()


def rec(**kw) -> RequestRecord:
    base = dict(variant="awq", step=2, concurrency=8, rate=None, request_id="r", phase="measure", send_time=1.0)
    base.update(kw)
    return RequestRecord(**base)


def test_serves_on_loopback_and_frees_the_port():
    x = ClientExporter(port=0).start()
    port = x.port
    assert x.url == f"http://127.0.0.1:{port}/metrics"
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    x.stop()
    x.stop()  # twice is fine
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_requests_counted_by_step_labels_and_error_kind(exporter):
    sent, in_flight = [5], [2]
    exporter.begin_step("awq", 2, 8, None, sent=lambda: sent[0], in_flight=lambda: in_flight[0])
    exporter.observe(rec(ttft_s=0.05, itl_s=[0.01, 0.02, 0.03], e2e_s=0.2, prompt_tokens=100, output_tokens=4))
    exporter.observe(rec(ttft_s=0.5, itl_s=[0.01], e2e_s=0.6, prompt_tokens=100, output_tokens=2))
    exporter.observe(rec(status="error", error_kind="http_status", http_status=500, e2e_s=0.01))
    exporter.observe(rec(status="cancelled", error_kind="cancelled", ttft_s=0.1, itl_s=[0.2], e2e_s=1.0,
                         token_events=2))
    s = samples(exporter.url)
    lab = dict(variant="awq", step="2", concurrency="8", rate="")
    assert value(s, "ridgeline_client_requests_succeeded_total", **lab) == 2
    assert value(s, "ridgeline_client_requests_failed_total", **lab, error_kind="http_status") == 1
    assert value(s, "ridgeline_client_requests_failed_total", **lab, error_kind="cancelled") == 1
    assert value(s, "ridgeline_client_output_tokens_total", **lab) == 4 + 2 + 2
    assert value(s, "ridgeline_client_prompt_tokens_total", **lab) == 200
    assert value(s, "ridgeline_client_time_to_first_token_seconds_count", **lab) == 3
    assert value(s, "ridgeline_client_time_to_first_token_seconds_bucket", **lab, le="0.06") == 1
    assert value(s, "ridgeline_client_inter_token_latency_seconds_count", **lab) == 5
    assert value(s, "ridgeline_client_inter_token_latency_seconds_sum", **lab) == pytest.approx(0.27)
    assert value(s, "ridgeline_client_e2e_request_latency_seconds_count", **lab) == 4
    # read from the driver at scrape time
    assert value(s, "ridgeline_client_requests_sent_total", **lab) == 5
    assert value(s, "ridgeline_client_requests_in_flight", **lab) == 2
    assert value(s, "ridgeline_client_step_info", **lab) == 1
    assert value(s, "ridgeline_client_step") == 2
    assert value(s, "ridgeline_client_target_concurrency", variant="awq") == 8
    sent[0], in_flight[0] = 9, 0
    assert value(samples(exporter.url), "ridgeline_client_requests_sent_total", **lab) == 9


def test_finished_step_keeps_its_sent_count_and_drops_live_gauges(exporter):
    exporter.begin_step("a", 0, None, 2.5, sent=lambda: 11, in_flight=lambda: 3)
    exporter.end_step()
    exporter.begin_step("a", 1, None, 5.0, sent=lambda: 4, in_flight=lambda: 1)
    s = samples(exporter.url)
    old = dict(variant="a", step="0", concurrency="", rate="2.5")
    new = dict(variant="a", step="1", concurrency="", rate="5")
    assert value(s, "ridgeline_client_requests_sent_total", **old) == 11
    assert value(s, "ridgeline_client_requests_sent_total", **new) == 4
    assert ("ridgeline_client_requests_in_flight", tuple(sorted(old.items()))) not in s
    assert ("ridgeline_client_step_info", tuple(sorted(old.items()))) not in s
    assert value(s, "ridgeline_client_target_rate", variant="a") == 5
    exporter.end_step()
    s = samples(exporter.url)
    assert value(s, "ridgeline_client_step") == -1
    assert not any(k[0] == "ridgeline_client_step_info" for k in s)


def test_every_documented_name_is_served(exporter):
    exporter.begin_step("a", 0, 1, None)
    exporter.observe(rec(variant="a", step=0, concurrency=1, ttft_s=0.1, itl_s=[0.01], e2e_s=0.2, output_tokens=2,
                         prompt_tokens=3))
    exporter.observe(rec(variant="a", step=0, concurrency=1, status="error", error_kind="connect"))
    names = {k[0] for k in samples(exporter.url)}  # a closed-loop step shows its target concurrency,
    exporter.begin_step("b", 0, None, 1.0)  # an open-loop one its target rate
    names |= {k[0] for k in samples(exporter.url)}
    for n in METRIC_NAMES:
        assert n in names or n + "_bucket" in names, n


def test_a_driver_that_fails_does_not_break_a_scrape(exporter):
    def boom() -> int:
        raise RuntimeError("driver gone")

    exporter.begin_step("a", 0, 1, None, sent=boom, in_flight=boom)
    s = samples(exporter.url)
    assert value(s, "ridgeline_client_requests_in_flight", variant="a", step="0", concurrency="1", rate="") == 0


def test_bad_port_is_refused():
    with pytest.raises(ValueError, match="port"):
        ClientExporter(port=70000)


PLAN = """
name: exp
backend: external
variants: [{{name: a, url: "{url}"}}]
scenario: {{prompt_tokens: 16, output_tokens: 10}}
sweep: {{concurrency: [2, 4], warmup_s: 0.2, duration_s: 0.8, drain_s: 5}}
scrape: {{interval_s: 0.2, exporter_port: 0}}
output_dir: "{out}"
"""


def test_sweep_feeds_the_exporter_while_it_runs(null_server, tmp_path):
    srv = null_server(ttft_ms=5, gap_ms=2)
    plan = parse_plan(PLAN.format(url=srv.url, out=tmp_path), "t.yaml")
    run = new_run_dir(plan)
    sweep = Sweep(plan, run, commands=[ServerCommand("a", [], port=srv.command.port)])
    seen: dict[int, dict] = {}
    live: list[float] = []

    def on_progress(p) -> None:  # noqa: ANN001
        if sweep.exporter is None:
            return
        if p.phase == "measure" and not live:
            s = samples(sweep.exporter.url)
            live.append(s[("ridgeline_client_requests_in_flight",
                           tuple(sorted(dict(variant="a", step="0", concurrency="2", rate="").items())))])
        for f in p.finished:
            if f["step"] not in seen:
                seen[f["step"]] = samples(sweep.exporter.url)

    sweep.on_progress = on_progress
    sweep.execute()
    man = run.read_manifest()
    assert man["exporter"].startswith("http://127.0.0.1:")
    assert live and 0 <= live[0] <= 2
    df = run.read_requests()
    for step, conc in ((0, 2), (1, 4)):
        lab = dict(variant="a", step=str(step), concurrency=str(conc), rate="")
        mine = df[df.step == step]
        s = seen[step]
        assert value(s, "ridgeline_client_requests_succeeded_total", **lab) == (mine.status == "ok").sum()
        assert value(s, "ridgeline_client_requests_sent_total", **lab) == len(mine)
        assert value(s, "ridgeline_client_output_tokens_total", **lab) == mine.output_tokens.sum()
        assert value(s, "ridgeline_client_time_to_first_token_seconds_count", **lab) == mine.ttft_s.notna().sum()
    # the run is over: the exporter is stopped and its port free
    port = int(man["exporter"].split(":")[2].split("/")[0])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


class _MasterLike:
    """A driver shaped like a Locust master: records arrive through its own on_record slot."""

    def __init__(self) -> None:
        self.on_record = None

    def sent(self) -> int:
        return 1

    def in_flight(self) -> int:
        return 0


def test_attach_feeds_from_the_control_or_the_driver_and_chains(exporter):
    from scenarios.users import StepControl

    class Local:
        def __init__(self) -> None:
            self.control = StepControl()

        def sent(self) -> int:
            return 0

        def in_flight(self) -> int:
            return 0

    seen = []
    local = Local()
    local.control.on_record = seen.append
    exporter.attach(local, "a", 0, 1, None)
    exporter.attach(local, "a", 1, 2, None)  # a second step does not feed twice
    local.control.on_record(rec(variant="a", step=1, concurrency=2, output_tokens=3))
    assert len(seen) == 1
    master = _MasterLike()
    exporter.attach(master, "b", 0, 4, None)
    master.on_record(rec(variant="b", step=0, concurrency=4, output_tokens=5))
    s = samples(exporter.url)
    assert value(s, "ridgeline_client_output_tokens_total", variant="a", step="1", concurrency="2", rate="") == 3
    assert value(s, "ridgeline_client_output_tokens_total", variant="b", step="0", concurrency="4", rate="") == 5


def test_stop_waits_for_one_more_scrape_when_it_is_being_scraped():
    import threading
    import time

    x = ClientExporter(port=0).start()
    x.begin_step("a", 0, 1, None)
    got: list[dict] = []
    stop = threading.Event()

    def scrape_every_200ms() -> None:
        while not stop.is_set():
            try:
                got.append(samples(x.url))
            except Exception:  # noqa: BLE001 - the exporter is gone
                return
            time.sleep(0.2)

    t = threading.Thread(target=scrape_every_200ms, daemon=True)
    t.start()
    time.sleep(0.5)
    x.observe(rec(variant="a", step=0, concurrency=1, output_tokens=9))  # the run's very last record
    t0 = time.time()
    x.stop()
    took = time.time() - t0
    stop.set()
    t.join(2)
    assert took < 1.5  # two of its scrape intervals at most, plus the server's own shutdown
    lab = dict(variant="a", step="0", concurrency="1", rate="")
    assert value(got[-1], "ridgeline_client_output_tokens_total", **lab) == 9
    # never scraped: no wait at all
    y = ClientExporter(port=0).start()
    t0 = time.time()
    y.stop(linger_max_s=30)
    assert time.time() - t0 < 1.0
