"""The client benchmark's set-up: an even ramp for both clients, CPU placement, the host's load."""

from __future__ import annotations

import math
import time

import pytest

from loadtest.bench_setup import HostLoad, LoadWatch, even_ramp, placement
from scenarios.users import StepControl


@pytest.mark.parametrize("streams", [64, 100, 256, 512, 7])
def test_even_ramp_puts_every_stream_on_its_own_phase_of_the_gap(streams):
    gap = 0.05
    r = even_ramp(streams, gap, 0.4)
    phases = sorted(round(((k * r.spacing_s) % gap) / gap * streams) % streams for k in range(streams))
    assert phases == list(range(streams))  # one stream per 1/streams of the gap, none shared
    assert 0.3 <= r.ramp_s <= 0.5  # about the target: an odd number of gaps near 8
    assert math.isclose(r.rate, streams / r.ramp_s)


def test_even_ramp_of_the_old_settings_was_commensurate():
    """Why: 64 streams spaced 0.4 s / 64 = 6.25 ms tick on only 8 phases of a 50 ms gap."""
    phases = {round(k * (0.4 / 64) / 0.05 * 64) % 64 for k in range(64)}  # in 64ths of the gap
    assert len(phases) == 8
    with pytest.raises(ValueError):
        even_ramp(0, 0.05, 0.4)


def test_split_placement_gives_the_server_a_cpu_of_its_own():
    p = placement("split", [0, 1])
    assert p.server_cpus == (0,) and p.client_cpus == (1,)
    assert p.server_prefix() == ["taskset", "-c", "0"] and p.client_prefix() == ["taskset", "-c", "1"]
    assert placement("split", [3]).name == "none"  # one CPU: nothing to split
    assert placement("none", [0, 1]).client_prefix() == []
    with pytest.raises(ValueError, match="placement"):
        placement("sideways")


def test_host_load_names_a_busy_host():
    busy = HostLoad(2, (6.0, 5.0, 4.0), (7.0, 5.0, 4.0), 10.0, 12.0, 0.6, False)
    assert "NOT a quiet host" in busy.line() and "60% of the 2 cores" in busy.line()
    quiet = HostLoad(2, (0.1, 0.1, 0.1), (0.9, 0.3, 0.1), 10.0, 0.2, 0.01, True)
    assert "quiet host" in quiet.line() and "NOT" not in quiet.line()


def test_load_watch_does_not_count_this_process_as_foreign():
    w = LoadWatch()
    end = time.process_time() + 0.3
    while time.process_time() < end:  # burn our own CPU: it is ours, not the host's other load
        pass
    h = w.done()
    assert h.wall_s >= 0.3 and h.foreign_cpu_s is not None and h.foreign_share is not None
    assert h.foreign_cpu_s < h.wall_s * h.cpus  # bounded by the host; ours is taken off


def test_step_control_hands_out_ramp_slots_interleaved_over_workers():
    a, b = StepControl(), StepControl()
    a.set_ramp(100.0, 1.0, 4, first=0, stride=2)
    b.set_ramp(100.0, 1.0, 4, first=1, stride=2)
    got = sorted([a.ramp_delay(100.0), a.ramp_delay(100.0), b.ramp_delay(100.0), b.ramp_delay(100.0)])
    assert got == pytest.approx([0.0, 0.25, 0.5, 0.75])
    a.set_ramp(100.0, 0.0, 4)
    assert a.ramp_delay(100.0) == 0.0  # no ramp: start at once
    a.set_ramp(100.0, 1.0, 4)
    assert a.ramp_delay(101.0) == 0.0  # a slot already past: no wait
    a.begin("v", 1, 4, None)
    assert a.ramp_start is None  # a new step forgets the old ramp


def test_local_driver_spreads_user_starts_over_the_ramp(null_server):
    """Locust spawns floor(rate) users a second, so a ramp under a second per user used to start all at once."""
    import gevent

    from loadtest.driver import LocalDriver
    from core.plan import ScenarioSpec
    from scenarios.openai_stream import Timeouts
    from scenarios.workload import build_workload

    srv = null_server(events=4, ttft_ms=2000)  # each user's first request outlasts the test: one send each
    drv = LocalDriver(srv.url, build_workload(ScenarioSpec(prompt_tokens=4, output_tokens=4), "null"), Timeouts())
    try:
        t0 = time.time()
        drv.start_step("v", 0, 8, None, t0, t0 + 5, None, 0.4)
        gevent.sleep(0.8)
        recs = drv.finish_step()
    finally:
        drv.close()
    first = sorted(r.send_time for r in recs)
    assert len(first) == 8
    # eight slots 50 ms apart: the last user cannot have started before 7 * 50 ms
    assert first[-1] - first[0] >= 0.35 - 0.01
