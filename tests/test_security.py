"""Secrets stay secret, hostile text stays text, processes start from argv, files stay in the results dir."""

from __future__ import annotations

import json
import os
import re
import secrets as _random
import signal
import sys
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import psutil
import pytest
import yaml

from core.plan import PlanError, parse_plan
from core.results import ResultsError, RunDir, safe_child
from core.secrets import SecretError, read_api_key, redact
from deploy import launcher
from loadtest.runner import Sweep, new_run_dir
from testdoubles import fault_server
from tests.support.source_tree import project_files

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>']


def _plan(d: dict):
    return parse_plan(yaml.safe_dump(d), "sec.yaml")


def _admin(url: str, body: dict) -> None:
    req = urllib.request.Request(url + "/admin/fault", json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def _children_argv() -> list[str]:
    out = []
    for c in psutil.Process().children(recursive=True):
        try:
            out.append("\0".join(c.cmdline()))
        except psutil.Error:
            pass
    return out


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- API keys ------------------------------------------------------------------------------------

def test_api_key_never_reaches_results_logs_reports_or_argv(tmp_path, monkeypatch):
    key = "sk-ridgeline-" + _random.token_hex(16)
    monkeypatch.setenv("RIDGELINE_TEST_API_KEY", key)
    port = launcher.free_port()
    # the server gets the key through its environment (never argv) and demands it on every request
    cmds = [fault_server.command(launcher.free_port(), events=6, gap_ms=2, variant=v,
                                 extra=["--require-key-env", "FAULT_API_KEY"]) for v in ("a", "b")]
    for c in cmds:
        c.env = {"FAULT_API_KEY": key}
    plan = _plan({"name": "sec", "backend": "external", "api_key_env": "RIDGELINE_TEST_API_KEY",
                  "variants": [{"name": v, "url": f"http://127.0.0.1:{port}"} for v in ("a", "b")],
                  "scenario": {"prompt_tokens": 8, "output_tokens": 6},
                  "sweep": {"concurrency": [1, 2], "warmup_s": 0, "duration_s": 1.0, "drain_s": 5},
                  "scrape": {"interval_s": 0.5}, "output_dir": str(tmp_path)})
    argv_seen: list[str] = []
    state = {"queued": False, "killed": False}

    def hook(p) -> None:  # noqa: ANN001
        argv_seen.extend(_children_argv())
        srv = sweep._servers.get("a")
        if srv is None or p.variant != "a":
            return
        if not state["queued"]:  # a careless server: echoes the Authorization header, in its answer and log
            _admin(srv.url, {"fault": "echo_auth", "count": 3})
            state["queued"] = True
        if p.step == 2 and p.sent >= 4 and not state["killed"]:  # its log tail goes into the manifest
            os.kill(srv.pid, signal.SIGKILL)
            state["killed"] = True

    run = new_run_dir(plan)
    sweep = Sweep(plan, run, commands=cmds, on_progress=hook)
    sweep.execute()
    assert state["killed"]

    df = run.read_requests()
    echoed = df[df.http_status == 401]
    assert len(echoed) == 3 and echoed.error.str.contains(r"rejected credentials: \*\*\*", regex=True).all()
    assert (df[df.step == 0].status == "ok").sum() >= 20  # the key was sent and accepted
    man = run.read_manifest()
    assert man["servers"]["a"]["env"] == {"FAULT_API_KEY": "***"}
    dead = next(s for s in man["steps"] if s["variant"] == "a" and s["step"] == 1)
    assert "exited with status -9" in dead["error"]
    assert "rejected credentials: Bearer ***" in dead["error"]  # the log tail, masked

    from analysis import analyze, render_reports

    analyze(run.path)
    render_reports(run.path)
    files = _all_bytes(run.path)
    assert any(p.endswith("report.html") for p in files) and any(p.endswith(".log") for p in files)
    leaks = [p for p, b in files.items() if key.encode() in b]
    assert leaks == []
    assert argv_seen and not any(key in a for a in argv_seen)


def test_api_key_from_a_file(tmp_path):
    key = "sk-file-" + _random.token_hex(8)
    kf = tmp_path / "key"
    kf.write_text(key + "\n")
    assert read_api_key(None, str(kf)) == key
    kf.write_text("\n")
    with pytest.raises(SecretError, match="is empty"):
        read_api_key(None, str(kf))
    with pytest.raises(SecretError, match="not set"):
        read_api_key("RIDGELINE_SURELY_UNSET_VARIABLE", None)
    # a plan cannot carry the key itself
    with pytest.raises(PlanError, match="unknown key 'api_key'"):
        _plan({"variants": [{"name": "a"}], "api_key": key})


def test_redact_masks_the_token_and_the_header_value():
    from core.secrets import secrets_in_headers

    s = secrets_in_headers({"Authorization": "Bearer abcdef123", "Accept": "x"})
    assert redact("got Bearer abcdef123 and abcdef123!", s) == "got *** and ***!"
    assert redact("short key xy", ["xy"]) == "short key xy"  # too short to hunt for


# --- hostile text in the report -------------------------------------------------------------------

class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, list]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        self.tags.append((tag, attrs))

    def handle_data(self, data):  # noqa: ANN001
        self.text.append(data)


@pytest.mark.parametrize("payload", HOSTILE, ids=["script", "img-onerror"])
def test_report_shows_hostile_strings_as_text(tmp_path, payload):
    """A plan, a dataset, a server's answers and its errors all carry the payload; the report runs none of it."""
    port = launcher.free_port()
    cmd = fault_server.command(port, events=6, gap_ms=2, variant="a", extra=["--error-message", payload])
    data = tmp_path / f"{payload.replace('/', '_')}.jsonl"
    data.write_text("\n".join(json.dumps({"conversations": [{"from": "human", "value": payload + " tell me"},
                                                            {"from": "gpt", "value": payload}]}) for _ in range(5)))
    plan = _plan({"name": "xss", "backend": "external", "served_model_name": payload,
                  "variants": [{"name": v, "url": f"http://127.0.0.1:{port}"} for v in ("a", "b")],
                  "scenario": {"dataset": str(data), "output_tokens": 6, "extra_body": {"note": payload}},
                  "sweep": {"concurrency": [1, 2], "warmup_s": 0, "requests": 12, "drain_s": 5},
                  "scrape": {"interval_s": 0.5}, "output_dir": str(tmp_path / "out")})
    queued = []

    def hook(p) -> None:  # noqa: ANN001
        srv = sweep._servers.get("a")
        if srv is not None and not queued:
            _admin(srv.url, {"fault": "status=500", "count": 2})
            _admin(srv.url, {"fault": "error_event=1", "count": 2})
            queued.append(1)

    run = new_run_dir(plan)
    sweep = Sweep(plan, run, commands=[cmd, fault_server.command(launcher.free_port(), events=6, variant="b")],
                  on_progress=hook)
    sweep.execute()
    sweep.manifest["warnings"].append(f"a warning quoting {payload}")
    run.write_manifest(sweep.manifest)
    df = run.read_requests()
    core = payload.split('"')[0] if payload.startswith("<") else payload[2:]
    assert df.error.str.contains(re.escape(core)).sum() >= 4  # the payload really is in the results

    from analysis import analyze, render_reports

    analyze(run.path)
    render_reports(run.path)
    html = (run.path / "report.html").read_text()
    p = _Tags()
    p.feed(html)
    assert not [t for t, _ in p.tags if t == "script"]
    assert not [(t, a) for t, a in p.tags for k, _ in a if k.lower().startswith("on")]
    assert not [(t, a) for t, a in p.tags if t == "img" and any(v == "x" for _, v in a)]
    shown = "".join(p.text)
    assert payload in shown  # it is there, as text
    assert payload not in html  # and only in escaped form


# --- processes and paths --------------------------------------------------------------------------

def test_servers_start_from_argv_never_a_shell(tmp_path):
    marker = tmp_path / "pwned"
    tricks = [f"$(touch {marker})", f"; touch {marker}", f"`touch {marker}`", "a b", "'quoted'", "*"]
    out = tmp_path / "argv.json"
    prog = tmp_path / "argv.py"
    prog.write_text(
        "import json, sys, http.server, socketserver\n"
        f"json.dump(sys.argv[1:], open({str(out)!r}, 'w'))\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        "socketserver.TCPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n")
    port = launcher.free_port()
    srv = launcher.start(launcher.ServerCommand("t", [sys.executable, str(prog), str(port)] + tricks, port=port,
                                                startup_timeout_s=20), tmp_path / "t.log")
    try:
        assert json.loads(out.read_text()) == [str(port)] + tricks
    finally:
        launcher.stop(srv)
    assert not marker.exists()
    offenders = [str(p) for p in project_files("*.py") if "tests" not in p.relative_to(ROOT).parts
                 and re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(", p.read_text())]
    assert offenders == []


def _listening(pid: int) -> list[str]:
    proc = psutil.Process(pid)
    procs = [proc] + proc.children(recursive=True)
    addrs = []
    for p in procs:
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                addrs.append(c.laddr.ip)
    return addrs


@pytest.mark.parametrize("module,args", [
    ("deploy.emulator", ["--gpu", "h100-sxm", "--model", "llama-3-8b", "--weights", "fp16", "--kv-cache-dtype",
                         "auto", "--served-model-name", "m"]),
    ("testdoubles.fault_server", []),
    ("testdoubles.null_server", []),
], ids=["emulator", "fault_server", "null_server"])
def test_servers_bind_loopback_by_default(tmp_path, module, args):
    port = launcher.free_port()
    srv = launcher.start(launcher.ServerCommand("s", [sys.executable, "-m", module, "--port", str(port)] + args,
                                                port=port, startup_timeout_s=60, cwd=str(ROOT)), tmp_path / "s.log")
    try:
        addrs = _listening(srv.pid)
        assert addrs and set(addrs) == {"127.0.0.1"}, addrs
    finally:
        launcher.stop(srv)


def test_client_exporter_binds_loopback_by_default():
    from loadtest.exporter import exporter_for

    plan = _plan({"variants": [{"name": "a"}], "scrape": {"exporter_port": 0}})
    exp = exporter_for(plan.scrape.exporter_host, plan.scrape.exporter_port)
    try:
        addrs = [c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == int(exp.url.rsplit(":", 1)[1].split("/")[0])]
        assert addrs == ["127.0.0.1"]
    finally:
        exp.stop()


def test_names_cannot_leave_the_results_directory(tmp_path):
    for bad in ("../x", "/etc/x", "a/b", "..", ".hidden", "x" * 65, "a\nb"):
        with pytest.raises(PlanError):
            _plan({"name": bad, "variants": [{"name": "a"}]})
        with pytest.raises(PlanError):
            _plan({"variants": [{"name": bad}]})
    root = tmp_path / "results"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)  # a symlink out of the results directory
    for parts in (("..", "x"), ("/etc", "passwd"), ("a", "..", "..", "x"), ("link", "x")):
        with pytest.raises(ResultsError, match="would leave the results directory"):
            safe_child(root, *parts)
    run = RunDir(root / "r")
    with pytest.raises(ResultsError):
        run.requests_path("../../../x", 0)
    with pytest.raises(ResultsError):
        run.log_path("../../x")
    plan = _plan({"name": "ok.name-1", "variants": [{"name": "a"}], "output_dir": str(root)})
    made = new_run_dir(plan)
    assert made.path.resolve().parent == root.resolve()
