"""A shorter soak (benchmarks/soak.py): thousands of requests with 2% injected faults, nothing lost, memory flat."""

from __future__ import annotations

import pytest

from benchmarks.soak import SoakConfig, soak


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_short_soak(tmp_path):
    cfg = SoakConfig(levels=[1, 64, 256], repeats=2, warmup_s=1.0, duration_s=4.0, drain_s=20.0,
                     error_rate=0.02, min_requests=3000, rss_growth_mb=32.0, out=str(tmp_path))
    r = soak(cfg, quiet=True)
    assert r["problems"] == []
    assert r["requests_sent"] == r["requests_recorded"] == r["server_received"] >= 3000
    assert r["errors"] == r["server_injected"] > 0
    assert 0.005 < r["error_fraction"] < 0.05
    assert set(r["error_kinds"]) <= {"http", "disconnect", "server_error_event", "protocol"}
    assert r["cancelled"] == 0
    tops = r["rss_after_top_steps_mb"]
    assert len(tops) == 2 and tops[1] - tops[0] < 32.0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_short_soak_through_the_emulator(tmp_path):
    cfg = SoakConfig(levels=[16, 256], repeats=2, warmup_s=1.0, duration_s=3.0, drain_s=20.0, error_rate=0.02,
                     min_requests=1500, rss_growth_mb=32.0, out=str(tmp_path), upstream="emulator")
    r = soak(cfg, quiet=True)
    assert r["problems"] == []
    assert r["requests_sent"] == r["requests_recorded"] == r["server_received"] >= 1500
    assert r["errors"] == r["server_injected"] > 0 and r["cancelled"] == 0
