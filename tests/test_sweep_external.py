"""The sweep against a live server with known timing (the null server): records, phases, windows."""

import numpy as np

from core.plan import parse_plan
from deploy.launcher import ServerCommand
from loadtest.runner import Sweep, new_run_dir

PLAN = """
name: ext
backend: external
variants:
  - {{name: a, url: "{url}"}}
  - {{name: b, url: "{url}"}}
scenario: {{prompt_tokens: 16, output_tokens: 20}}
sweep: {{concurrency: [1, 16], warmup_s: 0.3, duration_s: 1.0, drain_s: 5}}
output_dir: "{out}"
"""


def test_sweep_records_every_request_with_its_timing(null_server, tmp_path):
    srv = null_server(ttft_ms=30, gap_ms=4)
    plan = parse_plan(PLAN.format(url=srv.url, out=tmp_path), "t.yaml")
    run = new_run_dir(plan)
    cmds = [ServerCommand(v.name, [], port=srv.command.port) for v in plan.variants]
    Sweep(plan, run, commands=cmds).execute()

    man = run.read_manifest()
    assert man["status"] == "complete"
    assert len(man["steps"]) == 4
    for s in man["steps"]:
        assert s["status"] == "complete"
        assert s["sent"] == s["recorded"] > 0
        assert s["window_end"] - s["window_start"] == 1.0

    df = run.read_requests()
    assert len(df) == sum(s["recorded"] for s in man["steps"])
    assert (df.status == "ok").all()
    assert set(df.phase) <= {"warmup", "measure", "drain"}
    assert (df.output_tokens == 20).all() and (df.token_events == 20).all()
    # the null server waits 30 ms before the first event and 4 ms between events
    assert df.ttft_s.min() >= 0.029
    assert 0.030 <= df.ttft_s.median() < 0.060
    gaps = np.concatenate(df.itl_s.values)
    assert len(gaps) == 19 * len(df)
    assert 0.0035 <= np.median(gaps) < 0.008
    # every request is timed end to end, and sends fall in order of phase
    assert (df.e2e_s >= df.ttft_s).all()
    for (v, step), g in df.groupby(["variant", "step"]):
        st = next(s for s in man["steps"] if s["variant"] == v and s["step"] == step)
        meas = g[g.phase == "measure"]
        assert ((meas.send_time >= st["window_start"]) & (meas.send_time < st["window_end"])).all()
        assert (g[g.phase == "warmup"].send_time < st["window_start"]).all()
    # the scrape ran (the null server's /metrics has no vllm: families; the up marker is kept)
    m = run.read_metrics()
    assert (m.metric == "ridgeline:scrape_up").sum() >= 4


def test_drain_zero_cancels_in_flight_and_records_them(null_server, tmp_path):
    srv = null_server(ttft_ms=10, gap_ms=50)  # 20 tokens take ~1 s: all in flight at window end
    plan = parse_plan(PLAN.format(url=srv.url, out=tmp_path).replace("drain_s: 5", "drain_s: 0"), "t.yaml")
    plan.variants = plan.variants[:1]
    run = new_run_dir(plan)
    Sweep(plan, run, commands=[ServerCommand("a", [], port=srv.command.port)]).execute()
    df = run.read_requests()
    man = run.read_manifest()
    assert all(s["sent"] == s["recorded"] for s in man["steps"])
    cancelled = df[df.status == "cancelled"]
    assert len(cancelled) >= 16  # every user of the c=16 step was mid-stream
    assert (cancelled.error_kind == "cancelled").all()
    # timing of what arrived before the cut is kept
    assert cancelled.ttft_s.notna().all()
    assert (cancelled.token_events > 0).all()
