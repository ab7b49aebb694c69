"""Server commands for every backend (deploy/servers.py, deploy/vllm_command.py) and `ridgeline deploy`.

The vLLM command lines are checked flag by flag for a Llama-3.1-8B plan as a GPU host would run
it; the emulator's are started for real, and `deploy up/status/down` brings real emulator servers
up, leaves them running past the command, and stops them by process group.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from core.plan import Plan, parse_plan
from deploy import launcher
from deploy.servers import ServersError, gpu_assignment, server_commands
from deploy.state import state_path
from deploy.vllm_command import CommandError
from loadtest.cli_deploy import deploy_app

PLAN_8B = """
name: llama31-8b
backend: vllm
model: meta-llama/Llama-3.1-8B-Instruct
gpu: h100-sxm
api_key_env: RL_TEST_API_KEY
server:
  program: [python3, -m, vllm.entrypoints.openai.api_server]
  extra_args: [--max-model-len, "4096", --gpu-memory-utilization, "0.90"]
  env: {VLLM_LOGGING_LEVEL: INFO}
variants:
  - {name: fp16, preset: fp16}
  - {name: awq, preset: awq, model: hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4}
  - {name: gptq, preset: gptq, model: hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4}
  - {name: fp8kv, preset: fp8kv, extra_args: [--max-num-seqs, "256"], env: {VLLM_LOGGING_LEVEL: DEBUG}}
"""
KEY = "rl-secret-key-0123"
PORTS = {"fp16": 8001, "awq": 8002, "gptq": 8003, "fp8kv": 8004}
PREFIX = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
TAIL = ["--max-model-len", "4096", "--gpu-memory-utilization", "0.90"]


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("RL_TEST_API_KEY", KEY)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return KEY


def p8b(**changes) -> Plan:
    plan = parse_plan(PLAN_8B, "8b.yaml")
    for k, v in changes.items():
        setattr(plan.server, k, v)
    return plan


def test_llama31_8b_gpu_command_lines(key):
    cmds = {c.variant: c for c in server_commands(p8b(), PORTS)}
    assert list(cmds) == ["fp16", "awq", "gptq", "fp8kv"]
    base = "meta-llama/Llama-3.1-8B-Instruct"
    assert cmds["fp16"].argv == PREFIX + ["--model", base, "--served-model-name", "fp16", "--host", "127.0.0.1",
                                          "--port", "8001", "--dtype", "float16"] + TAIL
    assert cmds["awq"].argv == PREFIX + ["--model", "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
                                         "--served-model-name", "awq", "--host", "127.0.0.1", "--port", "8002",
                                         "--dtype", "float16", "--quantization", "awq_marlin"] + TAIL
    assert cmds["gptq"].argv == PREFIX + ["--model", "hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4",
                                          "--served-model-name", "gptq", "--host", "127.0.0.1", "--port", "8003",
                                          "--dtype", "float16", "--quantization", "gptq_marlin"] + TAIL
    # FP8 KV cache with bfloat16: float16 would fail on Hopper; the variant's own args come last
    assert cmds["fp8kv"].argv == PREFIX + ["--model", base, "--served-model-name", "fp8kv", "--host", "127.0.0.1",
                                           "--port", "8004", "--dtype", "bfloat16", "--kv-cache-dtype", "fp8"] + TAIL + [
                                              "--max-num-seqs", "256"]
    for c in cmds.values():
        assert c.url == f"http://127.0.0.1:{PORTS[c.variant]}" and c.startup_timeout_s == 900.0
        assert c.env["HF_HUB_OFFLINE"] == "1" and c.env["VLLM_NO_USAGE_STATS"] == "1"
        assert c.env["VLLM_API_KEY"] == key and not any(key in a for a in c.argv)
        assert "CUDA_VISIBLE_DEVICES" not in c.env  # sequential: each alone in turn on the inherited GPU
    assert cmds["fp16"].env["VLLM_LOGGING_LEVEL"] == "INFO" and cmds["fp8kv"].env["VLLM_LOGGING_LEVEL"] == "DEBUG"


def test_ports_are_free_ones_unless_given(key):
    cmds = server_commands(p8b())
    ports = [c.port for c in cmds]
    assert len(set(ports)) == 4 and all(p > 1024 for p in ports)


def test_served_model_name_load_format_and_kv_scales(key):
    plan = p8b(load_format="dummy")
    plan.served_model_name = "llama"
    c = server_commands(plan, PORTS)[3]
    i = c.argv.index("--load-format")
    assert c.argv[i + 1] == "dummy" and c.argv[c.argv.index("--served-model-name") + 1] == "llama"
    from core.hardware.variants import resolve
    from deploy.vllm_command import vllm_argv

    argv = vllm_argv(plan, resolve(plan.variants[3]), "127.0.0.1", 1, calculate_kv_scales=True)
    assert argv[argv.index("fp8") + 1] == "--calculate-kv-scales"
    assert "--calculate-kv-scales" not in vllm_argv(plan, resolve(plan.variants[0]), "h", 1, calculate_kv_scales=True)


def test_vllm_serve_and_container_programs(key):
    c = server_commands(p8b(program=["vllm", "serve"]), PORTS)[1]
    assert c.argv[:4] == ["vllm", "serve", "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", "--served-model-name"]
    assert "--model" not in c.argv
    docker = ["docker", "run", "--rm", "--gpus", "all", "-p", "{port}:{port}", "vllm/vllm-openai:v0.11.0",
              "--model", "{model}"]
    c = server_commands(p8b(program=docker, host="0.0.0.0"), PORTS)[0]
    assert c.argv[:10] == ["docker", "run", "--rm", "--gpus", "all", "-p", "8001:8001", "vllm/vllm-openai:v0.11.0",
                           "--model", "meta-llama/Llama-3.1-8B-Instruct"]
    assert c.argv.count("--model") == 1 and c.argv[c.argv.index("--host") + 1] == "0.0.0.0"
    with pytest.raises(CommandError, match="placeholders"):
        server_commands(p8b(program=["run", "{nope}"]), PORTS)


def test_gpus_side_by_side_when_parallel(key, monkeypatch):
    plan = p8b(placement="parallel")
    assert gpu_assignment(plan) == {"fp16": "0", "awq": "1", "gptq": "2", "fp8kv": "3"}
    plan.variants[0].extra_args = ["--tensor-parallel-size", "2"]
    plan.variants[2].gpus = [4]
    assert gpu_assignment(plan) == {"fp16": "0,1", "awq": "2", "gptq": "4", "fp8kv": "3"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7,1")  # the plan's GPU n is the n-th visible one
    got = {c.variant: c.env["CUDA_VISIBLE_DEVICES"] for c in server_commands(plan, PORTS)}
    assert got == {"fp16": "4,5", "awq": "6", "gptq": "1", "fp8kv": "7"}
    plan.variants[1].extra_args = ["-tp", "two"]
    with pytest.raises(ServersError, match="variant awq: -tp 'two'"):
        gpu_assignment(plan)


def test_api_key_from_a_file_and_never_on_the_command_line(tmp_path, key):
    f = tmp_path / "key.txt"
    f.write_text("file-key-9876\n")
    plan = p8b()
    plan.api_key_env, plan.api_key_file = None, str(f)
    assert {c.env["VLLM_API_KEY"] for c in server_commands(plan, PORTS)} == {"file-key-9876"}
    plan.variants[0].extra_args = ["--api-key=abc123"]
    with pytest.raises(CommandError, match="variant fp16.*--api-key"):
        server_commands(plan, PORTS)


def test_emulator_commands(key):
    plan = parse_plan(PLAN_8B.replace("backend: vllm", "backend: emulator")
                      .replace("model: meta-llama/Llama-3.1-8B-Instruct", "model: llama-3-8b")
                      .replace("  env: {VLLM_LOGGING_LEVEL: INFO}\n", ""), "8b.yaml")
    plan.server.extra_args = ["--enforce-eager", "--max-model-len", "4096"]
    plan.emulator = {"seed": 3, "enable_prefix_caching": False, "calibration": {"mem_bw_eff": 0.9}}
    cmds = server_commands(plan, PORTS)
    awq = cmds[1]
    assert awq.argv[:19] == [sys.executable, "-m", "deploy.emulator", "--host", "127.0.0.1", "--port", "8002",
                             "--gpu", "h100-sxm", "--model", "llama-3-8b", "--weights", "awq", "--kv-cache-dtype",
                             "auto", "--served-model-name", "awq", "--dtype", "float16"]
    rest = awq.argv[19:]
    assert rest[:7] == ["--seed", "3", "--no-enable-prefix-caching", "--calibration", '{"mem_bw_eff": 0.9}',
                        "--max-model-len", "4096"]
    assert "--enforce-eager" not in rest and "VLLM_API_KEY" not in awq.env
    kv = cmds[3]
    assert kv.argv[kv.argv.index("--weights") + 1] == "bf16" and kv.argv[kv.argv.index("--kv-cache-dtype") + 1] == "fp8"
    assert kv.argv[-2:] == ["--max-num-seqs", "256"]
    plan.emulator = {"no_such_setting": 1}
    with pytest.raises(ServersError, match="emulator.no_such_setting"):
        server_commands(plan, PORTS)


def test_emulator_command_starts_and_serves(tmp_path):
    plan = Plan.model_validate({"backend": "emulator", "variants": [{"name": "awq", "preset": "awq"}],
                                "server": {"extra_args": ["--max-num-seqs", "8"]}})
    cmd = server_commands(plan)[0]
    srv = launcher.start(cmd, tmp_path / "emu.log")
    try:
        import urllib.request

        with urllib.request.urlopen(cmd.url + "/v1/models", timeout=10) as r:
            assert json.loads(r.read())["data"][0]["id"] == "awq"
        assert "quantization=awq_marlin" in (tmp_path / "emu.log").read_text()
    finally:
        launcher.stop(srv)
    assert not srv.alive()


def test_external_urls():
    plan = Plan.model_validate({"backend": "external", "variants": [
        {"name": "a", "url": "https://vllm.example.com/v1/"}, {"name": "b", "url": "http://10.0.0.5:8000"}]})
    a, b = server_commands(plan)
    assert a.argv == [] and a.url == "https://vllm.example.com" and a.port == 443
    assert b.argv == [] and b.url == "http://10.0.0.5:8000" and (b.host, b.port) == ("10.0.0.5", 8000)
    plan.variants[1].url = "ftp://x"
    with pytest.raises(ServersError, match="variant b: url 'ftp://x'"):
        server_commands(plan)


# --- ridgeline deploy -----------------------------------------------------------------------------

def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "plan.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_deploy_dry_run_prints_gpu_command_lines_with_the_key_masked(tmp_path, key):
    path = _write(tmp_path, PLAN_8B)
    res = CliRunner().invoke(deploy_app, ["up", str(path), "--dry-run"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert out.count("# ") == 4 and "VLLM_API_KEY=***" in out and key not in out
    assert "--quantization awq_marlin" in out and "--kv-cache-dtype fp8" in out
    assert "hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4" in out
    assert not state_path(tmp_path / "results").exists()


def test_deploy_refuses_a_plan_the_checks_refuse(tmp_path, key):
    from tests.support.tiny_model import make_tiny_model

    awq = make_tiny_model(tmp_path / "awq", "awq")
    path = _write(tmp_path, f"""
        backend: vllm
        model: {awq}
        variants: [{{name: gptq, preset: gptq}}]
        output_dir: {tmp_path / "out"}
        """)
    res = CliRunner().invoke(deploy_app, ["up", str(path)])
    assert res.exit_code == 1
    assert "variant gptq" in res.output and "'awq'" in res.output and "nothing was started" in res.output
    assert not state_path(tmp_path / "out").exists()


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def test_deploy_up_status_down_with_the_emulator(tmp_path):
    out_dir = tmp_path / "out"
    path = _write(tmp_path, f"""
        backend: emulator
        variants: [{{name: fp16, preset: fp16}}, {{name: awq, preset: awq}}]
        output_dir: {out_dir}
        """)
    runner = CliRunner()
    pids: list[int] = []
    try:
        res = runner.invoke(deploy_app, ["up", str(path)])
        assert res.exit_code == 0, res.output
        state = json.loads(state_path(out_dir).read_text())
        pids = [s["pid"] for s in state["servers"]]
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
        assert [s["served"]["verdict"] for s in state["servers"]] == ["as-asked", "as-asked"]
        assert state["servers"][1]["served"]["observed"]["weight_gib"] < 0.5 * \
            state["servers"][0]["served"]["observed"]["weight_gib"]
        # servers of `deploy up` outlive the command: they are not in this process's registry
        assert not [s for s in launcher.running() if s.pid in pids]
        res = runner.invoke(deploy_app, ["up", str(path)])
        assert res.exit_code == 2 and "deploy down" in res.output
        res = runner.invoke(deploy_app, ["status", str(path), "--json"])
        assert res.exit_code == 0, res.output
        rows = json.loads(res.output)
        assert [(r["variant"], r["alive"], r["healthy"], r["models"]) for r in rows] == [
            ("fp16", True, True, ["fp16"]), ("awq", True, True, ["awq"])]
        res = runner.invoke(deploy_app, ["down", "--out", str(out_dir)])
        assert res.exit_code == 0, res.output
        assert res.output.count("stopped") == 2
        assert _gone(pids) and not any(launcher.group_members(p) for p in pids)
        res = runner.invoke(deploy_app, ["status", "--state", str(state_path(out_dir))])
        assert res.exit_code == 0 and "nothing deployed" in res.output
    finally:
        for p in pids:
            launcher.stop_pid(p, grace_s=(2.0, 2.0, 1.0))


def test_deploy_status_reports_a_dead_server(tmp_path):
    st = state_path(tmp_path)
    st.parent.mkdir(parents=True)
    proc = psutil.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    st.write_text(json.dumps({"servers": [{"variant": "x", "url": f"http://127.0.0.1:{launcher.free_port()}",
                                           "pid": proc.pid, "create_time": time.time() - 5}]}))
    res = CliRunner().invoke(deploy_app, ["status", "--state", str(st), "--json"])
    assert res.exit_code == 1
    assert json.loads(res.output)[0]["alive"] is False and json.loads(res.output)[0]["healthy"] is False


def test_stop_pid_leaves_a_recycled_pid_alone():
    proc = psutil.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        assert launcher.stop_pid(proc.pid, create_time=proc.create_time() - 100) is False
        assert proc.is_running()
        assert launcher.stop_pid(proc.pid, create_time=proc.create_time()) is True
        assert not launcher.group_members(proc.pid)
    finally:
        if proc.is_running():
            proc.kill()
        proc.wait()


def test_registry_stops_what_was_left_running(tmp_path):
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    a = launcher.start(launcher.ServerCommand("a", argv), tmp_path / "a.log", wait=False)
    b = launcher.start(launcher.ServerCommand("b", argv), tmp_path / "b.log", wait=False)
    kept = launcher.start(launcher.ServerCommand("k", argv), tmp_path / "k.log", wait=False, keep=True)
    try:
        mine = {s.pid for s in launcher.running()}
        assert {a.pid, b.pid} <= mine and kept.pid not in mine
        status = launcher.stop_all([a, b], grace_s=(2.0, 2.0, 1.0))
        assert set(status) == {"a", "b"} and not a.alive() and not b.alive()
        assert not {a.pid, b.pid} & {s.pid for s in launcher.running()}
    finally:
        launcher.stop(kept, grace_s=(1.0, 1.0, 1.0))
    assert not kept.alive()


def test_interpreter_exit_stops_unstopped_servers(tmp_path):
    """A process that starts a server and exits without stopping it leaves nothing behind."""
    import subprocess

    pidfile = tmp_path / "pid"
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from deploy import launcher
        s = launcher.start(launcher.ServerCommand("x", [sys.executable, "-c", "import time; time.sleep(60)"]),
                           Path({str(tmp_path / 'x.log')!r}), wait=False)
        Path({str(pidfile)!r}).write_text(str(s.pid))
        sys.exit(3)
        """)
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], timeout=60)
    assert res.returncode == 3
    pid = int(pidfile.read_text())
    assert _gone([pid]) and not launcher.group_members(pid)


def test_deploy_dry_run_of_one_variant(tmp_path, key):
    path = _write(tmp_path, PLAN_8B)
    res = CliRunner().invoke(deploy_app, ["up", str(path), "--dry-run", "--variant", "awq", "-v", "gptq"])
    assert res.exit_code == 0, res.output
    assert "# awq" in res.output and "# gptq" in res.output and "# fp16" not in res.output
    res = CliRunner().invoke(deploy_app, ["up", str(path), "--dry-run", "--variant", "nope"])
    assert res.exit_code == 2 and "--variant nope" in res.output and "fp16, awq, gptq, fp8kv" in res.output


def test_launch_error_quotes_the_root_cause_far_above_the_tail(tmp_path):
    """vLLM prints the cause, then a long traceback of the engine's death: the error names the cause."""
    script = tmp_path / "fails.py"
    script.write_text(textwrap.dedent('''
        import sys
        print("(APIServer pid=1) WARNING x [system_utils.py:255] fd limit errors like `OSError: [Errno 24] ...`")
        print("(Worker pid=2) ERROR x [multiproc_executor.py:1063] NotImplementedError: FP8 KV cache on CPU "
              "requires x86 with AVX-512 or AMX.")
        print("pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig")
        print("  Value error, Quantization method specified in the model config (awq) does not match")
        for i in range(200):
            print(f"  File 'frame{i}.py', line {i}, in f")
        sys.exit(1)
        '''))
    cmd = launcher.ServerCommand("broken", [sys.executable, str(script)], port=launcher.free_port(),
                                 startup_timeout_s=30)
    with pytest.raises(launcher.LaunchError) as ei:
        launcher.start(cmd, tmp_path / "broken.log")
    said = str(ei.value).split("last lines of")[0]
    assert "exited with status 1" in said and "OSError" not in said
    assert "NotImplementedError: FP8 KV cache on CPU requires x86 with AVX-512 or AMX." in said
    assert "Value error, Quantization method specified in the model config (awq)" in said
