"""The analysis of a real sweep against the built-in emulator: client and server agree, INT4 pays at
low concurrency, the roofline says memory-bound, and the reports are written (slow)."""

import sys

import psutil
import pytest

from analysis import analyze, render_reports
from core.hardware.variants import resolve
from core.plan import parse_plan
from deploy import launcher
from loadtest.runner import Sweep, new_run_dir

PLAN = """
name: analysis-emulator
backend: emulator
baseline: fp16
variants: [{name: fp16}, {name: awq}]
scenario: {prompt_tokens: 256, output_tokens: 128}
sweep: {mode: concurrency, concurrency: [1, 8], warmup_s: 1.0, duration_s: 3.0, drain_s: 10.0}
scrape: {interval_s: 0.5}
"""


@pytest.mark.slow
def test_emulator_sweep_analysed_end_to_end(tmp_path):
    plan = parse_plan(PLAN)
    cmds = []
    for v in plan.variants:
        r = resolve(v)
        port = launcher.free_port()
        cmds.append(launcher.ServerCommand(v.name, [sys.executable, "-m", "deploy.emulator", "--port", str(port),
                                                    "--weights", r.weights, "--kv-cache-dtype", r.kv_cache_dtype,
                                                    "--served-model-name", v.name], port=port, startup_timeout_s=60))
    run = new_run_dir(plan, str(tmp_path))
    try:
        Sweep(plan, run, commands=cmds).execute()
    finally:
        for entry in run.read_manifest().get("servers", {}).values():
            pid = entry.get("pid")
            assert pid is None or not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    s = analyze(run.path)
    st = s.analysis.steps
    assert (st.status == "complete").all()
    # the client's tokens and the server's generation counter describe the same window
    ratio = st.output_tokens_per_s / st.server_generation_tokens_per_s
    assert ratio.between(0.8, 1.25).all(), ratio.tolist()
    # the server's histogram median TTFT is within its bucket of the client's (the buckets are coarse)
    assert st.server_ttft_p50_s.notna().all() and st.server_itl_p50_s.notna().all()
    # the closed loop keeps about `concurrency` requests running
    assert ((st.server_running_mean >= 0.7 * st.level) & (st.server_running_mean <= st.level + 1e-9)).all(), \
        st.server_running_mean.tolist()
    # INT4 weights pay on a memory-bound decode step
    assert s.speedup["awq"]["1"] > 1.25
    roof = s.analysis.roofline.steps
    assert (roof[roof.level == 1].regime == "memory").all()
    assert roof.bound_share.between(0.2, 1.05).all(), roof.bound_share.tolist()
    written = render_reports(run.path)
    assert written["html"].exists() and written["md"].exists()
    assert "emulator — modelled, not measured on a GPU" in written["html"].read_text()
