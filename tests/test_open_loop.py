"""Open-loop steps keep their schedule whatever the server does (no coordinated omission)."""

import numpy as np
import pytest

from core.plan import parse_plan
from deploy.launcher import ServerCommand
from loadtest.runner import Sweep, new_run_dir
from scenarios.arrivals import ArrivalSchedule, gaps

PLAN = """
name: ol
backend: external
variants:
  - {{name: a, url: "{url}"}}
scenario: {{prompt_tokens: 8, output_tokens: 20}}
sweep: {{mode: rate, rates: [{rate}], arrival: {arrival}, warmup_s: 0.2, {window}, drain_s: 10}}
output_dir: "{out}"
"""


def _run(srv, tmp_path, **kw):
    args = dict(url=srv.url, out=tmp_path, rate=40, arrival="constant", window="duration_s: 2.0")
    args.update(kw)
    plan = parse_plan(PLAN.format(**args), "ol.yaml")
    run = new_run_dir(plan)
    Sweep(plan, run, commands=[ServerCommand("a", [], port=srv.command.port)]).execute()
    return run.read_manifest(), run.read_requests()


def _max_overlap(starts, ends):
    ev = sorted([(s, 1) for s in starts] + [(e, -1) for e in ends])
    cur = best = 0
    for _, d in ev:
        cur += d
        best = max(best, cur)
    return best


def test_schedule_is_kept_under_a_slow_server(null_server, tmp_path):
    # each request takes ~1.45 s (0.5 s to the first token, then 19 gaps of 50 ms): at 40 req/s about
    # 58 are in flight; a closed loop would slow down, the open loop must not
    srv = null_server(ttft_ms=500, gap_ms=50)
    man, df = _run(srv, tmp_path)
    step = man["steps"][0]
    assert step["status"] == "complete" and step["sent"] == step["recorded"]
    assert df.scheduled_time.notna().all()
    sched = np.sort(df.scheduled_time.to_numpy())
    # constant arrivals: exactly 1/rate apart, whatever the server did
    assert np.allclose(np.diff(sched), 1 / 40, atol=1e-6)
    # every arrival due before the window closed went out (the schedule starts when the step's load does)
    due = int((step["window_end"] - sched[0]) * 40) + 1
    assert abs(len(df) - due) <= 1 and len(df) >= 70, (len(df), due)
    lateness = (df.send_time - df.scheduled_time).to_numpy()
    assert lateness.min() >= -1e-6
    assert np.percentile(lateness, 50) < 0.01 and np.percentile(lateness, 99) < 0.1, np.percentile(lateness, [50, 99])
    assert (df.status == "ok").all()
    # in flight grows to rate x latency instead of the schedule bending
    ends = df.send_time + df.e2e_s
    assert _max_overlap(df.send_time.tolist(), ends.tolist()) >= 45
    assert df.ttft_s.min() >= 0.5


def test_poisson_rate_is_met_and_count_window_stops_sending(null_server, tmp_path):
    srv = null_server(ttft_ms=5, gap_ms=1)
    man, df = _run(srv, tmp_path, rate=100, arrival="poisson", window="requests: 60, duration_s: null")
    step = man["steps"][0]
    assert step["sent"] == step["recorded"]
    meas = df[df.phase == "measure"]
    assert len(meas) == 60  # the window by count closes after exactly 60 measured sends
    sched = np.sort(df.scheduled_time.to_numpy())
    rate = (len(sched) - 1) / (sched[-1] - sched[0])
    assert 60 < rate < 160  # ~100/s for ~80 arrivals
    lateness = (df.send_time - df.scheduled_time).to_numpy()
    assert np.percentile(lateness, 50) < 0.01 and np.percentile(lateness, 99) < 0.1


def test_cap_delays_but_never_skips(null_server, tmp_path):
    srv = null_server(ttft_ms=300, gap_ms=0)
    plan_kw = dict(rate=50, window="duration_s: 1.0")
    args = dict(url=srv.url, out=tmp_path, arrival="constant", **plan_kw)
    text = PLAN.format(**args).replace("drain_s: 10", "drain_s: 10, max_concurrency: 5")
    plan = parse_plan(text, "ol.yaml")
    run = new_run_dir(plan)
    Sweep(plan, run, commands=[ServerCommand("a", [], port=srv.command.port)]).execute()
    df = run.read_requests()
    lateness = (df.send_time - df.scheduled_time).to_numpy()
    # 5 slots of 0.3 s serve ~17 req/s against 50 scheduled: arrivals queue and go out late
    assert lateness.max() > 0.3
    sched = np.sort(df.scheduled_time.to_numpy())
    assert np.allclose(np.diff(sched), 1 / 50, atol=1e-6)  # none skipped


@pytest.mark.parametrize("process,k", [("poisson", 1.0), ("gamma", 0.25), ("gamma", 4.0), ("constant", 1.0)])
def test_arrival_processes_have_the_right_moments(process, k):
    g = gaps(200_000, 20.0, process, k, np.random.default_rng(3))
    assert g.mean() == pytest.approx(1 / 20, rel=0.02)
    cv = g.std() / g.mean()
    want = {"poisson": 1.0, "constant": 0.0}.get(process, 1 / np.sqrt(k))
    assert cv == pytest.approx(want, abs=0.03)
    assert (g >= 0).all()


def test_schedule_continues_across_blocks_and_honours_phase():
    s = ArrivalSchedule(10.0, "constant", phase=0.05, block=7).first(30)
    assert s[0] == pytest.approx(0.05)
    assert np.allclose(np.diff(s), 0.1)
    p = ArrivalSchedule(50.0, "poisson", rng=np.random.default_rng(0), block=16).first(5000)
    assert np.all(np.diff(p) >= 0)
    assert (len(p) - 1) / p[-1] == pytest.approx(50, rel=0.05)


def test_bad_process_is_refused():
    with pytest.raises(ValueError, match="unknown arrival process"):
        ArrivalSchedule(1.0, "weibull")
    with pytest.raises(ValueError, match="above 0"):
        gaps(3, 0.0, "poisson", 1.0, np.random.default_rng(0))
