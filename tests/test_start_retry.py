"""A server start that fails once for a passing reason is retried before the variant is given up.

The fault server's --fail-first-start exits at its first start with a library-load error and
serves from the second: the retry must start it, keep the failed start's log under its own name,
name it in the manifest, and the analysed summary must say that a retry happened. With no retry
allowed, the same server costs the variant (on_failure: skip), and the log is still kept.
"""

from __future__ import annotations

import json

import pytest
import yaml

from analysis.summary import analyze
from deploy import launcher
from testdoubles import fault_server
from core.plan import parse_plan
from loadtest.runner import Sweep, new_run_dir

pytestmark = pytest.mark.timeout(120)


def _plan(out, retries: int):
    d = {
        "name": "retry", "backend": "external", "served_model_name": "fault",
        "variants": [{"name": "flaky", "url": "http://127.0.0.1:1"}],
        "scenario": {"prompt_tokens": 16, "output_tokens": 8},
        "sweep": {"concurrency": [2], "warmup_s": 0.2, "duration_s": 1.0, "drain_s": 5},
        "server": {"start_retries": retries, "start_retry_pause_s": 0.1},
        "scrape": {"interval_s": 0.5},
        "output_dir": str(out),
    }
    return parse_plan(yaml.safe_dump(d), "retry.yaml")


def _sweep(tmp_path, retries: int):
    marker = tmp_path / "started-once"
    cmd = fault_server.command(launcher.free_port(), events=8, variant="flaky",
                               extra=["--fail-first-start", str(marker)])
    plan = _plan(tmp_path / "out", retries)
    run = new_run_dir(plan)
    sweep = Sweep(plan, run, commands=[cmd])
    try:
        sweep.execute()
    finally:
        sweep.stop_all()
    return run, json.loads(run.manifest_path.read_text())


def test_a_start_that_fails_once_is_retried_and_its_log_kept(tmp_path):
    run, man = _sweep(tmp_path, retries=1)
    failed = man["servers"]["flaky"]["failed_starts"]
    assert [f["attempt"] for f in failed] == [1]
    assert failed[0]["log"] == "logs/flaky.failed-start-1.log"
    kept = (run.path / failed[0]["log"]).read_text()
    assert "oneMKL FATAL ERROR" in kept
    assert "oneMKL" not in (run.path / "logs" / "flaky.log").read_text()  # the second start's own log
    assert [s["status"] for s in man["steps"]] == ["complete"]
    summary = analyze(run.path).data
    assert summary["failed_starts"]["flaky"][0]["log"] == "logs/flaky.failed-start-1.log"
    assert any("started on try 2" in w for w in summary["warnings"])


def test_without_retries_the_variant_is_skipped_and_the_log_kept(tmp_path):
    run, man = _sweep(tmp_path, retries=0)
    entry = man["servers"]["flaky"]
    assert [f["log"] for f in entry["failed_starts"]] == ["logs/flaky.failed-start-1.log"]
    assert "oneMKL" in (run.path / "logs" / "flaky.failed-start-1.log").read_text()
    assert [s["status"] for s in man["steps"]] == ["failed"]
    assert any("skipped" in w for w in man["warnings"])
