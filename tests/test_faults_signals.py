"""Ctrl-C (SIGINT) and SIGTERM to a real `ridgeline run` process in the middle of a step.

The step in flight is persisted and marked incomplete, the servers ridgeline started are stopped
(checked by PID: nothing is left), the exit status is 128 + the signal, and the message says how to
resume; `ridgeline run --resume` then finishes the run. The servers are the fault server, which
takes vLLM's flags, started by the launcher where vLLM would be (backend: vllm).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

import deploy.servers  # noqa: F401 - the vllm backend's server commands: a hard import, never a silent skip

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[1]


def _plan(tmp: Path) -> Path:
    d = {
        "name": "sig", "backend": "vllm", "served_model_name": "m",
        "variants": [{"name": "fp16", "model": str(tmp / "ckpt")}, {"name": "bf16", "model": str(tmp / "ckpt")}],
        "server": {"program": [sys.executable, "-m", "testdoubles.fault_server", "--events", "8", "--gap-ms", "20"],
                   "startup_timeout_s": 60},
        "scenario": {"prompt_tokens": 8, "output_tokens": 8},
        "sweep": {"concurrency": [1, 4, 8], "warmup_s": 0.2, "duration_s": 1.0, "drain_s": 10},
        "scrape": {"interval_s": 0.5},
        "output_dir": str(tmp / "results"),
    }
    p = tmp / "plan.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _manifest(tmp: Path):
    for m in (tmp / "results").glob("*/manifest.json"):
        try:
            return m.parent, json.loads(m.read_text())
        except (OSError, ValueError):
            return None, None
    return None, None


def _server_pids(man: dict) -> list[int]:
    return [s["pid"] for s in man.get("servers", {}).values() if s.get("pid")]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# SIGINT also resumes the run through the command line and reports it: slower, so in the slow suite
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM],
                         ids=["SIGINT-then-resume", "SIGTERM"])
def test_signal_to_ridgeline_run(tmp_path, sig):
    plan = _plan(tmp_path)
    cli = [sys.executable, "-m", "loadtest.cli", "run", str(plan), "--quiet"]
    proc = subprocess.Popen(cli, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    pids: set[int] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until the second variant's second step is measuring
            run, man = _manifest(tmp_path)
            if man:
                pids.update(_server_pids(man))
                steps = {(s["variant"], s["step"]): s["status"] for s in man["steps"]}
                if steps.get(("bf16", 1)) == "incomplete" and steps.get(("bf16", 0)) == "complete":
                    break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        else:
            pytest.fail("the run never reached the step to interrupt")
        time.sleep(0.5)  # into the step
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    name = signal.Signals(sig).name
    assert f"interrupted by {name}" in err
    assert f"ridgeline run --resume {run}" in err
    assert "Traceback" not in err

    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "interrupted"
    st = {(s["variant"], s["step"]): s for s in man["steps"]}
    assert [st[("fp16", i)]["status"] for i in range(3)] == ["complete"] * 3
    assert st[("bf16", 0)]["status"] == "complete" and st[("bf16", 1)]["status"] == "incomplete"
    assert ("bf16", 2) not in st
    for (v, i), s in st.items():
        assert s["sent"] == s["recorded"] == pq.read_table(run / "requests" / v / f"step-{i:03d}.parquet").num_rows
    assert st[("bf16", 1)]["sent"] > 0
    # every server ridgeline started is gone, and nothing of this run is left running
    pids.update(_server_pids(man))
    assert len(pids) == 2 and all(_gone(p) for p in pids)
    left = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not left, [p.info["cmdline"] for p in left]

    if sig != signal.SIGINT:
        return
    # and the run finishes where it stopped (analysed and reported as any run)
    r = subprocess.run([sys.executable, "-m", "loadtest.cli", "run", "--resume", str(run), "--quiet"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "4 of 6 steps kept" in r.stderr
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "complete"
    assert sorted((s["variant"], s["step"], s["status"]) for s in man["steps"]) == \
        sorted((v, i, "complete") for v in ("fp16", "bf16") for i in range(3))
    assert len(man["resumes"]) == 1
    assert (run / "report.html").exists()
