"""server.cpus: the CPU engine's cores apart from the API server's and the client's (deploy/cpu_split.py).

Real processes throughout: a process group started by the launcher whose child is moved to the engine
CPUs, this process pinned and given back. The effect on the real CPU engine (no request served whole at
the end, the two clients within 5%) is checked by tests/test_crosscheck_vllm_clean.py.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import time

import pytest
from pydantic import ValidationError

from core.plan import CpuSplit, parse_plan
from deploy import cpu_split, launcher
from deploy.checks import check_cpu_split
from deploy.render.kubernetes import server_deployment
from deploy.servers import server_commands

CPUS = sorted(os.sched_getaffinity(0))
two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason=f"needs 2 CPUs to split, this process may use {CPUS}")

PLAN = """
name: split
backend: vllm
model: meta-llama/Llama-3.1-8B-Instruct
gpu: h100-sxm
server:
  program: [python3, -m, vllm.entrypoints.openai.api_server]
  {cpus}
variants:
  - {{name: bf16, preset: bf16}}
"""


def plan_with(cpus: str):
    return parse_plan(PLAN.format(cpus=cpus), "split.yaml")


def test_commands_start_the_api_server_on_the_frontend_and_bind_the_worker_to_the_engine():
    [cmd] = server_commands(plan_with("cpus: {engine: [0, 2], frontend: [3]}"), ports={"bf16": 8000}, api_key=None)
    assert cmd.argv[:4] == ["taskset", "-c", "3", "python3"]
    assert cmd.env["VLLM_CPU_OMP_THREADS_BIND"] == "0,2"
    assert cmd.cpus is not None and cmd.cpus.engine == [0, 2] and cmd.cpus.frontend == [3]


def test_without_a_split_nothing_is_pinned():
    [cmd] = server_commands(plan_with(""), ports={"bf16": 8000}, api_key=None)
    assert cmd.argv[0] == "python3" and "VLLM_CPU_OMP_THREADS_BIND" not in cmd.env
    assert cmd.cpus is None


def test_the_plans_own_binding_wins():
    plan = plan_with("cpus: {engine: [0], frontend: [1]}\n  env: {VLLM_CPU_OMP_THREADS_BIND: '0-1'}")
    [cmd] = server_commands(plan, ports={"bf16": 8000}, api_key=None)
    assert cmd.env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"


@pytest.mark.parametrize("cpus, words", [
    ("cpus: {engine: [0, 1], frontend: [1]}", "[1] are in both"),
    ("cpus: {engine: [-1], frontend: [1]}", "0 or more"),
    ("cpus: {engine: [], frontend: [1]}", "engine"),
])
def test_a_split_that_cannot_be_is_refused_with_the_cpus_named(cpus, words):
    with pytest.raises((ValidationError, ValueError)) as exc:
        plan_with(cpus)
    assert words in str(exc.value)


def test_cpus_the_host_does_not_give_are_an_error_naming_them():
    found = check_cpu_split([0, 7], [9], allowed={0, 1})
    text = " ".join(str(f) for f in found)
    assert "server.cpus.engine: CPU(s) [7]" in text and "server.cpus.frontend: CPU(s) [9]" in text
    if shutil.which("taskset"):
        assert check_cpu_split([0], [1], allowed={0, 1}) == []


def test_a_server_started_elsewhere_checks_only_the_clients_cpus():
    # backend external or emulator: ridgeline moves only itself to the frontend CPUs; an engine CPU it may
    # not use is the other host's business, a frontend one is an error it would otherwise skip silently
    found = check_cpu_split([7], [9], allowed={0, 1}, launches=False)
    assert [str(f) for f in found] == [str(f) for f in check_cpu_split([0], [9], allowed={0, 1}, launches=False)]
    assert len(found) == 1 and "server.cpus.frontend: CPU(s) [9]" in str(found[0])
    assert check_cpu_split([7], [1], allowed={0, 1}, launches=False) == []


def test_the_plan_check_names_a_bad_client_cpu_for_an_external_server():
    from deploy.checks import check_plan

    plan = parse_plan(textwrap.dedent(f"""
        name: ext
        backend: external
        model: meta-llama/Llama-3.1-8B-Instruct
        server:
          cpus: {{engine: [0], frontend: [{max(CPUS) + 64}]}}
        variants:
          - {{name: bf16, url: "http://127.0.0.1:9/v1"}}
        """), "ext.yaml")
    text = " ".join(str(f) for f in check_plan(plan))
    assert f"server.cpus.frontend: CPU(s) [{max(CPUS) + 64}]" in text


def test_a_pod_runs_without_the_hosts_split():
    plan = plan_with("cpus: {engine: [0], frontend: [1]}")
    [cmd] = server_commands(plan, ports={"bf16": 8000}, api_key=None)
    dep = server_deployment(plan, cmd, [])
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert "taskset" not in c["args"] and all(e["name"] != "VLLM_CPU_OMP_THREADS_BIND" for e in c["env"])


CHILD_SERVER = textwrap.dedent("""
    import http.server, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


@two_cpus
def test_once_healthy_the_groups_other_processes_move_to_the_engine_cpus(tmp_path):
    engine, frontend = CPUS[:1], CPUS[1:2]
    port = launcher.free_port("127.0.0.1")
    cmd = launcher.ServerCommand("bf16", cpu_split.frontend_prefix(frontend) + [sys.executable, "-c", CHILD_SERVER,
                                                                                 str(port)],
                                 port=port, startup_timeout_s=30,
                                 cpus=CpuSplit(engine=engine, frontend=frontend))
    srv = launcher.start(cmd, tmp_path / "srv.log")
    try:
        members = launcher.group_members(srv.pid)
        others = [p for p in members if p != srv.pid]
        assert others, "the server's child did not start"
        assert set(srv.pinned) == {str(p) for p in others}
        for p in others:
            for tid in os.listdir(f"/proc/{p}/task"):
                assert os.sched_getaffinity(int(tid)) == set(engine)
        assert os.sched_getaffinity(srv.pid) == set(frontend)  # the API server stays where taskset put it
    finally:
        launcher.stop(srv)
    deadline = time.time() + 10
    while launcher.group_members(srv.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not launcher.group_members(srv.pid)


@two_cpus
def test_the_client_runs_on_the_frontend_and_gets_its_cpus_back():
    before = os.sched_getaffinity(0)
    with cpu_split.client_on(CPUS[-1:]) as cpus:
        assert cpus == CPUS[-1:]
        assert os.sched_getaffinity(0) == set(CPUS[-1:])
    assert os.sched_getaffinity(0) == before
    with cpu_split.client_on(None) as cpus:
        assert cpus is None and os.sched_getaffinity(0) == before
