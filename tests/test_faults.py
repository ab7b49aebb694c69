"""Every fault a server can throw at a stream, through the real sweep: nothing sent goes unrecorded.

Each test drives the fault server (testdoubles/fault_server.py) with the sweep (backend external) and
checks the bookkeeping three ways: the manifest's sent and recorded counts, the rows in the
step's Parquet file, and the number of requests the server itself saw.
"""

from __future__ import annotations

import json
import socket
import urllib.request

import pyarrow.parquet as pq
import pytest
import yaml

from core.plan import parse_plan
from deploy import launcher
from loadtest.runner import Sweep, new_run_dir
from testdoubles import fault_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fault(tmp_path_factory):
    """One fault server for the module (8 token events 5 ms apart); stopped by PID whatever happens."""
    log = tmp_path_factory.mktemp("fault") / "fault.log"
    port = launcher.free_port()
    srv = launcher.start(fault_server.command(port, events=8, ttft_ms=5, gap_ms=5), log)
    try:
        yield srv
    finally:
        launcher.stop(srv)
        assert not srv.alive()


def _admin(srv, method: str, path: str, body=None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(srv.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def _plan(url: str, out, fault_name=None, conc=(2,), n=6, timeouts=None, drain=10.0):
    d = {
        "name": "faults", "backend": "external",
        "variants": [{"name": "a", "url": url}],
        "scenario": {"prompt_tokens": 8, "output_tokens": 8,
                     "extra_body": {"fault": fault_name} if fault_name else {}},
        "sweep": {"concurrency": list(conc), "warmup_s": 0, "requests": n, "drain_s": drain},
        "scrape": {"interval_s": 0.5},
        "output_dir": str(out),
    }
    if timeouts:
        d["timeouts"] = timeouts
    return parse_plan(yaml.safe_dump(d), "faults.yaml")


def _sweep(plan, port: int):
    run = new_run_dir(plan)
    Sweep(plan, run, commands=[launcher.ServerCommand("a", [], port=port)]).execute()
    return run


def _check_books(run, server_saw=None):
    """sent == recorded == rows on disk, for every step; and the server saw exactly that many."""
    man = run.read_manifest()
    assert man["status"] == "complete"
    total = 0
    for s in man["steps"]:
        assert s["status"] == "complete", s
        rows = pq.read_table(run.requests_path(s["variant"], s["step"])).num_rows
        assert s["sent"] == s["recorded"] == rows > 0, s
        total += rows
    df = run.read_requests()
    assert len(df) == total
    assert df.request_id.is_unique
    if server_saw is not None:
        assert server_saw == total
    return df


def _served(srv) -> int:
    return _admin(srv, "GET", "/admin/stats")["requests"]


# fault, timeouts, error kind, token events kept, http status
CASES = [
    ("die_after=3", None, "disconnect", 3, 200),
    ("close_after_headers", None, "disconnect", 0, 200),
    ("hang", {"first_token_s": 0.4}, "timeout_first_token", 0, None),
    ("drip=1", {"first_token_s": 1.2}, "timeout_first_token", 0, 200),
    ("stall_after=2", {"total_s": 0.6}, "timeout_total", 2, 200),
    ("status=500", None, "http", 0, 500),
    ("status=429", None, "http", 0, 429),
    ("malformed=2", None, "protocol", 2, 200),
    ("bad_sse=3", None, "protocol", 3, 200),
    ("truncated=4", None, "protocol", 4, 200),
    ("error_event=1", None, "server_error_event", 1, 200),
    ("no_done", None, "disconnect", 8, 200),
]


@pytest.mark.parametrize("fault_name,timeouts,kind,events,http", CASES, ids=[c[0] for c in CASES])
def test_each_fault_is_recorded_once_with_its_kind(fault, tmp_path, fault_name, timeouts, kind, events, http):
    before = _served(fault)
    run = _sweep(_plan(fault.url, tmp_path, fault_name, timeouts=timeouts), fault.command.port)
    df = _check_books(run, server_saw=_served(fault) - before)
    assert (df.status == "error").all()
    assert (df.error_kind == kind).all(), df.error_kind.value_counts()
    assert df.error.str.len().gt(0).all()
    assert (df.token_events == events).all()
    if http is None:
        assert df.http_status.isna().all()
    else:
        assert (df.http_status == http).all()
    # timing of what arrived before the fault is kept
    assert df.e2e_s.notna().all() and (df.e2e_s > 0).all()
    if events:
        assert df.ttft_s.notna().all()
        assert (df.itl_s.map(len) == events - 1).all()
        assert (df.e2e_s >= df.ttft_s).all()
    else:
        assert df.ttft_s.isna().all()
    if kind == "timeout_first_token":
        limit = timeouts["first_token_s"]
        assert df.e2e_s.between(limit * 0.95, limit + 1.0).all()
        assert df.error.str.contains(f"no token within {limit:g} s").all()
    if kind == "timeout_total":
        assert df.e2e_s.between(timeouts["total_s"] * 0.95, timeouts["total_s"] + 1.0).all()


def test_usage_that_disagrees_with_token_events_keeps_both_counts(fault, tmp_path):
    """The usage event is the server's count, the token events are ours: keep both, flag, never drop."""
    run = _sweep(_plan(fault.url, tmp_path, "usage_mismatch=5"), fault.command.port)
    df = _check_books(run)
    assert (df.status == "ok").all()
    assert (df.error_kind == "protocol_warning").all()
    assert df.error.str.contains("usage reports 13 completion tokens but 8 token events").all()
    assert (df.output_tokens == 13).all() and (df.token_events == 8).all()
    assert (df.itl_s.map(len) == 7).all()


def test_usage_counts_that_are_not_numbers_are_ignored(fault, tmp_path):
    run = _sweep(_plan(fault.url, tmp_path, "bad_usage"), fault.command.port)
    df = _check_books(run)
    assert (df.status == "ok").all() and df.error_kind.isna().all()
    assert (df.output_tokens == 8).all()  # from the token events, not "many"
    assert (df.prompt_tokens == 8).all()  # what was asked for, not -3


def test_bursts_of_500_and_429_from_the_admin_queue(fault, tmp_path):
    _admin(fault, "POST", "/admin/fault", {"fault": "status=500", "count": 4})
    _admin(fault, "POST", "/admin/fault", {"fault": "status=429", "count": 3})
    try:
        run = _sweep(_plan(fault.url, tmp_path, conc=(1,), n=10), fault.command.port)
    finally:
        _admin(fault, "DELETE", "/admin/fault")
    df = _check_books(run).sort_values("send_time")
    assert df.http_status.tolist() == [500] * 4 + [429] * 3 + [200] * 3
    assert df.status.tolist() == ["error"] * 7 + ["ok"] * 3
    assert df.error.iloc[4].startswith("HTTP 429")


def test_random_error_fraction_matches_what_the_server_injected(tmp_path):
    port = launcher.free_port()
    srv = launcher.start(fault_server.command(port, events=6, error_rate=0.25, extra=["--seed", "7"]),
                         tmp_path / "f.log")
    try:
        run = _sweep(_plan(srv.url, tmp_path, conc=(4, 16), n=150), port)
        stats = _admin(srv, "GET", "/admin/stats")
    finally:
        launcher.stop(srv)
    df = _check_books(run, server_saw=stats["requests"])
    f = stats["faults"]
    injected = sum(v for k, v in f.items() if k != "ok")
    assert 0.1 < injected / len(df) < 0.4
    assert (df.status == "error").sum() == injected
    assert (df.http_status == 500).sum() == f.get("status=500", 0)
    assert (df.http_status == 429).sum() == f.get("status=429", 0)
    assert (df.error_kind == "disconnect").sum() == f.get("die_after=2", 0)
    assert (df.error_kind == "server_error_event").sum() == f.get("error_event=1", 0)
    assert (df.error_kind == "protocol").sum() == f.get("truncated=2", 0) + f.get("malformed=1", 0)
    assert (df[df.status == "ok"].token_events == 6).all()


def test_nothing_listening_is_a_connect_error(tmp_path):
    port = launcher.free_port()  # free: nothing answers there
    run = _sweep(_plan(f"http://127.0.0.1:{port}", tmp_path, n=5), port)
    df = _check_books(run)
    assert (df.error_kind == "connect").all() and df.http_status.isna().all()


def test_connect_timeout(tmp_path):
    """A listener whose backlog is full drops new SYNs: the connect times out at timeouts.connect_s."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(c)
        run = _sweep(_plan(f"http://127.0.0.1:{port}", tmp_path, conc=(1,), n=2,
                           timeouts={"connect_s": 0.3}), port)
    finally:
        for c in fillers:
            c.close()
        lst.close()
    df = _check_books(run)
    assert (df.error_kind == "connect").all()
    assert df.error.str.contains("timed out").all()
    assert df.e2e_s.between(0.25, 2.0).all()


def test_in_front_of_the_emulator_only_the_faults_are_made_here(tmp_path):
    """--upstream: requests that draw no fault are the emulator's own streams; the books still close."""
    import sys

    port_e, port_f = launcher.free_port(), launcher.free_port()
    emu_cmd = launcher.ServerCommand("emu", [sys.executable, "-m", "deploy.emulator", "--port", str(port_e),
                                             "--served-model-name", "a", "--log-level", "warning"],
                                     port=port_e, startup_timeout_s=60)
    started = []
    try:
        emu = launcher.start(emu_cmd, tmp_path / "emu.log")
        started.append(emu)
        srv = launcher.start(fault_server.command(port_f, error_rate=0.15,
                                                  extra=["--seed", "3", "--upstream", emu.url,
                                                         "--served-model-name", "a"]), tmp_path / "fault.log")
        started.append(srv)
        run = _sweep(_plan(srv.url, tmp_path, conc=(4,), n=60), port_f)
        df = _check_books(run, server_saw=_served(srv))
        injected = sum(v for k, v in _admin(srv, "GET", "/admin/stats")["faults"].items() if k != "ok")
        assert injected == int((df.status == "error").sum()) > 0
        ok = df[df.status == "ok"]
        assert len(ok) > 30 and (ok.token_events == 8).all() and (ok.output_tokens == 8).all()
        # the emulator's own answers: its prompt count (not the fault server's constant 1) and its metrics
        assert (ok.prompt_tokens > 1).all()
        with urllib.request.urlopen(srv.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "vllm:num_requests_running" in text and "fault_requests_total" in text
        with urllib.request.urlopen(srv.url + "/v1/models", timeout=5) as r:
            assert [m["id"] for m in json.loads(r.read())["data"]] == ["a"]
    finally:
        for s in reversed(started):
            launcher.stop(s)
            assert not s.alive()
