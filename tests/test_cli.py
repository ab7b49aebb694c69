"""The `ridgeline` command as installed: its groups, `deploy render`, `compare`, `run --dry-run` and `--workers`.

Everything goes through the top-level app (loadtest.cli:app), in this process for speed, and a few
cases through the real console script, whose exit status is what CI sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loadtest import cli
from loadtest.cli import app
from tests.test_analysis_compare import _build
from tests.test_servers import KEY, PLAN_8B

BAD_PLAN = """\
name: typo
backend: vllm
variants: [{name: fp16, model: meta-llama/Llama-3.1-8B-Instruct}]
scrape: {intervl_s: 2}
"""


def _script() -> str:
    """The console script pip installed beside this interpreter (else the one on PATH)."""
    here = Path(sys.executable).parent / "ridgeline"
    found = str(here) if here.exists() else shutil.which("ridgeline")
    if found is None:
        pytest.skip("the ridgeline console script is not installed (pip install -e .)")
    return found


def ridgeline(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([_script(), *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def invoke(*args: str):  # noqa: ANN201
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def plan_8b(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RL_TEST_API_KEY", KEY)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    path = tmp_path / "8b.yaml"
    path.write_text(PLAN_8B)
    return path


@pytest.fixture
def bad_plan(tmp_path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_PLAN)
    return path


# --- the command groups -------------------------------------------------------------------------

def test_help_lists_every_command():
    r = invoke("--help")
    assert r.exit_code == 0
    for name in ("demo", "run", "analyze", "report", "compare", "deploy", "scenarios", "bench"):
        assert name in r.output
    r = invoke("deploy", "--help")
    assert all(sub in r.output for sub in ("up", "status", "down", "render"))
    assert "client" in invoke("bench", "--help").output


def test_the_installed_script_has_the_groups():
    r = ridgeline("--help")
    assert r.returncode == 0, r.stderr
    assert all(name in r.stdout for name in ("deploy", "scenarios", "bench", "compare"))
    r = ridgeline("scenarios", "list")
    assert r.returncode == 0, r.stderr
    assert "chat-short" in r.stdout and "shared-prefix" in r.stdout


def test_scenarios_list_prints_the_builtins():
    r = invoke("scenarios", "list")
    assert r.exit_code == 0
    for name in ("chat-short", "rag-long-prompt", "summarise", "shared-prefix", "sharegpt FILE"):
        assert name in r.output


# --- deploy render ------------------------------------------------------------------------------

def test_render_monitoring_is_the_default(plan_8b, tmp_path):
    out = tmp_path / "mon"
    r = invoke("deploy", "render", str(plan_8b), "--out", str(out))
    assert r.exit_code == 0, r.output
    for rel in ("prometheus/prometheus.yml", "grafana/dashboards/ridgeline.json",
                "grafana/provisioning/datasources/ridgeline.yml", "docker-compose.yml", "scrape.yaml"):
        assert (out / rel).is_file()
        assert str(out / rel) in r.output
    assert "docker compose up -d" in r.output
    again = tmp_path / "compose"
    assert invoke("deploy", "render", str(plan_8b), "--out", str(again), "--target", "compose").exit_code == 0
    assert sorted(p.relative_to(again) for p in again.rglob("*")) == sorted(p.relative_to(out) for p in out.rglob("*"))


def test_render_kubernetes_writes_the_manifests(plan_8b, tmp_path):
    out = tmp_path / "k8s"
    r = invoke("deploy", "render", str(plan_8b), "--target", "kubernetes", "--out", str(out))
    assert r.exit_code == 0, r.output
    written = sorted(p for p in out.rglob("*.yaml"))
    assert out / "kustomization.yaml" in written and out / "load/run/kustomization.yaml" in written
    for v in ("fp16", "awq", "gptq", "fp8kv"):
        assert (out / "variants" / v / "deployment.yaml").is_file()
    assert all(str(p) in r.output for p in written)
    assert f"wrote {len(written)} files" in r.output and "kubectl apply -k" in r.output
    assert not any(KEY in p.read_text() for p in written)
    assert "catalogue" not in r.output  # every variant names a real checkpoint


def test_render_kubernetes_warns_of_catalogue_model_names(tmp_path):
    plan = tmp_path / "demo.yaml"
    plan.write_text(invoke("demo", "--print-plan").output)
    r = subprocess.run([sys.executable, "-m", "loadtest.cli", "deploy", "render", str(plan), "--target", "kubernetes",
                        "--out", str(tmp_path / "k8s")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if "name from ridgeline's catalogue" in ln]
    assert len(warned) == 4 and "variant fp16: model 'llama-3-8b'" in warned[0]


@pytest.mark.parametrize("target", ["monitoring", "kubernetes"])
def test_render_a_bad_plan_exits_2_naming_the_key(bad_plan, tmp_path, target):
    out = tmp_path / "out"
    r = invoke("deploy", "render", str(bad_plan), "--target", target, "--out", str(out))
    assert r.exit_code == 2
    assert str(bad_plan) in r.output and "scrape.intervl_s (line 4)" in r.output and "interval_s" in r.output
    assert not out.exists()


def test_render_a_bad_plan_through_the_script(bad_plan, tmp_path):
    r = ridgeline("deploy", "render", str(bad_plan), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "scrape.intervl_s" in r.stderr and "Traceback" not in r.stderr


# --- compare ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-compare")
    return {"a": _build(root / "a", 1.5, seed=1), "same": _build(root / "same", 1.5, seed=2),
            "slower": _build(root / "slower", 1.2, seed=3)}


def test_compare_exits_1_on_a_regression_and_0_otherwise(runs):
    r = invoke("compare", str(runs["a"]), str(runs["slower"]))
    assert r.exit_code == 1 and "REGRESSION" in r.output
    r = invoke("compare", str(runs["a"]), str(runs["same"]), "--metric", "output_tokens_per_s")
    assert r.exit_code == 0 and "no regression" in r.output
    # a 20% drop is within a 50% threshold
    assert invoke("compare", str(runs["a"]), str(runs["slower"]), "--threshold", "0.5").exit_code == 0


def test_compare_bad_input_exits_2(runs, tmp_path):
    r = invoke("compare", str(runs["a"]), str(runs["same"]), "--metric", "no_such_metric")
    assert r.exit_code == 2 and "no_such_metric" in r.output
    assert invoke("compare", str(runs["a"]), str(tmp_path / "nothing")).exit_code == 2
    assert invoke("compare", str(runs["a"]), str(runs["same"]), "--threshold", "-1").exit_code == 2


def test_compare_gates_ci_through_the_script(runs):
    r = ridgeline("compare", str(runs["a"]), str(runs["slower"]), "-m", "output_tokens_per_s")
    assert r.returncode == 1, r.stderr
    assert "REGRESSION" in r.stdout
    assert ridgeline("compare", str(runs["a"]), str(runs["same"])).returncode == 0


# --- run ----------------------------------------------------------------------------------------

def test_run_dry_run_prints_the_gpu_command_lines(plan_8b):
    r = invoke("run", str(plan_8b), "--dry-run")
    assert r.exit_code == 0, r.output
    assert r.output.count("# ") == 4
    assert "python3 -m vllm.entrypoints.openai.api_server --model meta-llama/Llama-3.1-8B-Instruct" in r.output
    assert "--quantization awq_marlin" in r.output and "--quantization gptq_marlin" in r.output
    assert "--kv-cache-dtype fp8" in r.output and "--max-model-len 4096" in r.output
    assert "VLLM_API_KEY=***" in r.output and KEY not in r.output


def test_run_dry_run_without_the_key_exits_2(plan_8b, monkeypatch):
    monkeypatch.delenv("RL_TEST_API_KEY")
    r = invoke("run", str(plan_8b), "--dry-run")
    assert r.exit_code == 2 and "RL_TEST_API_KEY" in r.output


@pytest.mark.parametrize("command", ["run", "demo"])
def test_workers_overrides_the_plan(plan_8b, monkeypatch, command):
    seen = []
    monkeypatch.setattr(cli, "_execute", lambda plan, *a, **kw: seen.append(plan) or Path("."))
    monkeypatch.setattr(cli, "_finish", lambda path: None)
    args = [command] + ([str(plan_8b)] if command == "run" else []) + ["--workers", "3", "--quiet"]
    assert invoke(*args).exit_code == 0
    assert seen[0].workers == 3
    seen.clear()
    assert invoke(*args[:-3]).exit_code == 0
    assert seen[0].workers == 0  # the plan's own


def test_workers_is_refused_where_it_means_nothing(plan_8b, tmp_path):
    assert invoke("run", str(plan_8b), "--workers", "-1").exit_code == 2
    r = invoke("run", "--resume", str(tmp_path), "--workers", "2")
    assert r.exit_code == 2 and "--workers" in r.output
