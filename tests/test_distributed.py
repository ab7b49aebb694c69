"""A Locust master here and worker processes beside it: complete records, no orphans."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from core.plan import parse_plan
from deploy.launcher import ServerCommand
from loadtest.distributed import DistributedDriver, DistributedError
from loadtest.runner import Sweep, new_run_dir
from scenarios.openai_stream import Timeouts

PLAN = """
name: dist
backend: external
workers: 2
variants:
  - {{name: a, url: "{url}"}}
scenario: {{prompt_tokens: 8, output_tokens: 10}}
sweep: {sweep}
output_dir: "{out}"
"""


def _gone(pids, within=10.0):
    deadline = time.time() + within
    while time.time() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.1)
    return False


def _sweep(srv, tmp_path, sweep):
    plan = parse_plan(PLAN.format(url=srv.url, out=tmp_path, sweep=sweep), "d.yaml")
    run = new_run_dir(plan)
    Sweep(plan, run, commands=[ServerCommand("a", [], port=srv.command.port)]).execute()
    return run.read_manifest(), run.read_requests()


def test_two_workers_closed_and_open_loop_records_are_complete(null_server, tmp_path):
    srv = null_server(ttft_ms=20, gap_ms=5)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    man, df = _sweep(srv, tmp_path, "{concurrency: [1, 8], warmup_s: 0.3, duration_s: 1.0, drain_s: 5}")
    assert man["status"] == "complete"
    for s in man["steps"]:
        assert s["status"] == "complete" and s["sent"] == s["recorded"] > 0, s
        assert s["client_cpu_max"] is not None
    assert (df.status == "ok").all() and (df.token_events == 10).all()
    assert df[df.step == 1].worker.nunique() == 2  # 8 users over both workers
    assert df.request_id.is_unique
    # every worker process is gone once the sweep returns
    after = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert _gone(after - {srv.pid})


def test_two_workers_open_loop_share_the_rate(null_server, tmp_path):
    srv = null_server(ttft_ms=10, gap_ms=2)
    man, df = _sweep(srv, tmp_path, "{mode: rate, rates: [60], arrival: constant, warmup_s: 0.2, duration_s: 1.5, "
                                    "drain_s: 5}")
    s = man["steps"][0]
    assert s["sent"] == s["recorded"] and 95 <= s["recorded"] <= 110  # 1.7 s at 60/s
    assert df.worker.nunique() == 2
    sched = df.scheduled_time.sort_values().diff().dropna()
    # the two workers' constant schedules interleave into one at the full rate
    assert abs(sched.median() - 1 / 60) < 0.003
    # workers told of the step late catch up on the master's schedule: late, never skipped
    assert (df.send_time - df.scheduled_time).median() < 0.02


def test_count_window_holds_exactly_n_measured(null_server, tmp_path):
    srv = null_server(ttft_ms=5, gap_ms=1)
    man, df = _sweep(srv, tmp_path, "{concurrency: [4], warmup_s: 0.2, requests: 50, duration_s: null, drain_s: 5}")
    s = man["steps"][0]
    assert s["sent"] == s["recorded"]
    assert (df.phase == "measure").sum() == 50


def test_workers_stopped_when_the_step_fails(null_server, tmp_path):
    srv = null_server()
    plan = parse_plan(PLAN.format(url=srv.url, out=tmp_path, sweep="{concurrency: [2]}"), "d.yaml")
    d = DistributedDriver(plan, srv.url, Timeouts(), workers=2, model="m")
    pids = d.pids
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    try:
        with pytest.raises(RuntimeError):
            try:
                d.start_step("a", 0, 2, None, time.time(), None, None, 0)
                raise RuntimeError("the sweep failed mid-step")
            finally:
                d.close()
    finally:
        for p in pids:
            if psutil.pid_exists(p):
                os.kill(p, signal.SIGKILL)
    assert _gone(pids)


def test_workers_exit_when_their_master_is_killed(null_server, tmp_path):
    srv = null_server()
    script = f"""
from gevent import monkey; monkey.patch_all()
import sys, time
sys.path.insert(0, {os.getcwd()!r})
from core.plan import parse_plan
from loadtest.distributed import DistributedDriver
from scenarios.openai_stream import Timeouts
plan = parse_plan('variants: [{{name: a, url: "{srv.url}"}}]\\nbackend: external\\n')
d = DistributedDriver(plan, "{srv.url}", Timeouts(), workers=2, model="m")
print(" ".join(map(str, d.pids)), flush=True)
time.sleep(60)
"""
    master = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(x) for x in master.stdout.readline().split()]
        assert len(pids) == 2
        master.kill()  # no chance to clean up: the workers must notice on their own
        master.wait(timeout=10)
        assert _gone(pids, within=10)
    finally:
        if master.poll() is None:
            master.kill()


def test_setup_error_is_reported_and_workers_stop(null_server, tmp_path):
    srv = null_server()
    plan = parse_plan(PLAN.format(url=srv.url, out=tmp_path, sweep="{concurrency: [2]}"), "d.yaml")
    plan.scenario.tokenizer = str(tmp_path)  # not a tokenizer: every worker fails to set up
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(DistributedError, match="no tokenizer.json"):
        DistributedDriver(plan, srv.url, Timeouts(), workers=2, model="m")
    after = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert _gone(after)
