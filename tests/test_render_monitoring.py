"""The rendered monitoring files: valid for promtool, and every dashboard query names a real metric.

Metric names are checked against what really exposes them: the exporter (served here), a real
vLLM page (the captured one in tests/data) and the emulator (started here), when present.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from core.plan import parse_plan
from core.records import RequestRecord
from deploy import launcher
from deploy.render import grafana, render_monitoring
from deploy.render.prometheus import CLIENT_JOB, SERVERS_JOB, duration, publish_targets, target_entry
from loadtest.exporter import ClientExporter

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT / "tests" / "data" / "vllm_metrics" / "metrics.txt"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (.ci/setup-prometheus.sh)")
EMULATOR = (ROOT / "deploy" / "emulator" / "__main__.py").exists()

PLAN = """
name: mon
backend: {backend}
variants:
  - {{name: fp16{url_a}}}
  - {{name: awq, preset: awq{url_b}}}
scrape: {{interval_s: {interval}, exporter_port: {port}}}
"""


def plan(backend: str = "emulator", interval: float = 1.0, port: int = 9477, urls: bool = False):
    ua = ', url: "http://10.0.0.5:8000"' if urls else ""
    ub = ', url: "https://vllm.example.com/awq"' if urls else ""
    return parse_plan(PLAN.format(backend=backend, url_a=ua, url_b=ub, interval=interval, port=port), "p.yaml")


def sample_names(text: str) -> set[str]:
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def names_in(expr: str) -> set[str]:
    """Metric names an expression selects (the ones we name: vllm: and ridgeline_client_)."""
    return set(re.findall(r"\b(vllm:[a-zA-Z0-9_:]+|ridgeline_client_[a-zA-Z0-9_]+)", expr))


def concrete(expr: str) -> str:
    """An expression with Grafana's variables replaced, as Grafana sends it."""
    return expr.replace("$__rate_interval", "1m").replace("$variant", ".*")


@pytest.fixture(scope="module")
def exporter_names() -> set[str]:
    x = ClientExporter(port=0).start()
    try:
        x.begin_step("a", 0, 2, None)
        x.observe(RequestRecord("a", 0, 2, None, "r1", "measure", 1.0, ttft_s=0.1, itl_s=[0.01], e2e_s=0.3,
                                prompt_tokens=4, output_tokens=2))
        x.observe(RequestRecord("a", 0, 2, None, "r2", "measure", 1.0, status="error", error_kind="connect"))
        names = sample_names(urllib.request.urlopen(x.url, timeout=5).read().decode())
        x.begin_step("a", 1, None, 2.0)
        return names | sample_names(urllib.request.urlopen(x.url, timeout=5).read().decode())
    finally:
        x.stop()


@pytest.fixture(scope="module")
def emulator_names(tmp_path_factory) -> set[str]:
    if not EMULATOR:
        pytest.skip("the emulator (deploy/emulator/__main__.py) is not in this checkout")
    port = launcher.free_port()
    cmd = launcher.ServerCommand(
        "emu", [sys.executable, "-m", "deploy.emulator", "--port", str(port), "--gpu", "h100-sxm",
                "--model", "llama-3-8b", "--weights", "fp16", "--kv-cache-dtype", "auto",
                "--served-model-name", "m"], port=port, startup_timeout_s=60, cwd=str(ROOT))
    srv = launcher.start(cmd, tmp_path_factory.mktemp("emu") / "emu.log")
    try:
        return sample_names(urllib.request.urlopen(srv.url + "/metrics", timeout=10).read().decode())
    finally:
        launcher.stop(srv)


def test_render_writes_every_file(tmp_path):
    files = render_monitoring(plan(), tmp_path / "mon")
    rel = sorted(str(p.relative_to(tmp_path / "mon")) for p in files)
    assert rel == sorted(["prometheus/prometheus.yml", "grafana/provisioning/datasources/ridgeline.yml",
                          "grafana/provisioning/dashboards/ridgeline.yml", "grafana/dashboards/ridgeline.json",
                          "docker-compose.yml", "scrape.yaml"])
    assert all(p.is_file() and p.stat().st_size > 0 for p in files)
    assert (tmp_path / "mon" / "prometheus" / "targets").is_dir()
    # rendering again over the same directory is fine
    assert render_monitoring(plan(), tmp_path / "mon") == files


def test_scrape_config_targets_and_jobs(tmp_path):
    cfg = yaml.safe_load(render_monitoring(plan(urls=True, interval=0.5), tmp_path)[0].read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {SERVERS_JOB, CLIENT_JOB}
    srv = jobs[SERVERS_JOB]
    assert srv["scrape_interval"] == "500ms" and srv["scrape_timeout"] == "500ms"
    groups = {g["labels"]["variant"]: g for g in srv["static_configs"]}
    assert groups["fp16"] == {"targets": ["10.0.0.5:8000"], "labels": {"variant": "fp16"}}
    assert groups["awq"]["targets"] == ["vllm.example.com:443"]
    assert groups["awq"]["labels"]["__scheme__"] == "https"
    assert groups["awq"]["labels"]["__metrics_path__"] == "/awq/metrics"
    assert jobs[CLIENT_JOB]["static_configs"] == [{"targets": ["127.0.0.1:9477"]}]
    # servers that ridgeline starts get their port at run time: found through the targets files
    assert srv["file_sd_configs"][0]["files"] == ["targets/servers*.json"]
    cfg = yaml.safe_load(render_monitoring(plan(), tmp_path / "b", exporter_port=9500)[0].read_text())
    srv = next(j for j in cfg["scrape_configs"] if j["job_name"] == SERVERS_JOB)
    assert "static_configs" not in srv
    cli = next(j for j in cfg["scrape_configs"] if j["job_name"] == CLIENT_JOB)
    assert cli["static_configs"] == [{"targets": ["127.0.0.1:9500"]}]


def test_durations_and_bad_input(tmp_path):
    assert duration(1.0) == "1s" and duration(15) == "15s" and duration(0.25) == "250ms" and duration(2.5) == "2500ms"
    with pytest.raises(ValueError):
        duration(0)
    with pytest.raises(ValueError, match="exporter_port"):
        render_monitoring(plan(), tmp_path, exporter_port=0)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        render_monitoring(plan(), tmp_path / "f")
    with pytest.raises(ValueError, match="http"):
        target_entry("ftp://x:1")


def test_published_targets_are_readable_and_replaced(tmp_path):
    d = tmp_path / "targets"
    publish_targets(str(d), {"awq": "http://127.0.0.1:8123"}, "http://127.0.0.1:9477/metrics")
    servers = json.loads((d / "servers.json").read_text())
    assert servers == [{"targets": ["127.0.0.1:8123"], "labels": {"variant": "awq"}}]
    assert json.loads((d / "client.json").read_text()) == [{"targets": ["127.0.0.1:9477"], "labels": {}}]
    assert (d / "servers.json").stat().st_mode & 0o044 == 0o044  # Prometheus in a container reads it
    publish_targets(str(d), {"fp16": "http://127.0.0.1:8124"})
    assert json.loads((d / "servers.json").read_text())[0]["labels"] == {"variant": "fp16"}
    assert json.loads((d / "client.json").read_text()) == []
    publish_targets(None, {"x": "http://h:1"})  # no directory configured: nothing to do


@needs_promtool
def test_promtool_accepts_the_config_and_the_targets_files(tmp_path):
    out = tmp_path / "mon"
    files = render_monitoring(plan(urls=True), out)
    publish_targets(str(out / "prometheus" / "targets"), {"awq": "http://127.0.0.1:8123"},
                    "http://127.0.0.1:9477/metrics")
    res = subprocess.run([PROMTOOL, "check", "config", str(files[0])], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_dashboard_structure_and_provisioning(tmp_path):
    files = {p.name if p.suffix == ".json" else str(p.relative_to(tmp_path)): p for p in render_monitoring(plan(), tmp_path)}
    dash = json.loads(files["ridgeline.json"].read_text())
    assert dash["uid"] == grafana.DASHBOARD_UID
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    var = dash["templating"]["list"][0]
    assert var["name"] == "variant" and var["multi"] and var["includeAll"]
    ds = yaml.safe_load(files["grafana/provisioning/datasources/ridgeline.yml"].read_text())["datasources"][0]
    assert ds["uid"] == grafana.DATASOURCE_UID and ds["type"] == "prometheus"
    assert ds["jsonData"]["timeInterval"] == "1s"  # $__rate_interval follows the scrape interval
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == grafana.DATASOURCE_UID
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert 'variant=~"$variant"' in t["expr"], (p["title"], t["expr"])
    titles = {p["title"] for p in dash["panels"]}
    for needed in ("Generation throughput", "Requests running and waiting", "KV-cache usage", "Preemptions",
                   "Time to first token (server)", "Inter-token latency (server)", "Time to first token (client)",
                   "Errors by kind"):
        assert needed in titles
    quantiles = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "histogram_quantile" in t["expr"]]
    assert quantiles and all("by (variant, le)" in q for q in quantiles)
    # panels do not overlap on the grid
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, p["title"]
                cells.add((x, y))
    # compose mounts what the provider and the datasource expect
    comp = yaml.safe_load(files["docker-compose.yml"].read_text())
    graf = comp["services"]["grafana"]
    prov = yaml.safe_load(files["grafana/provisioning/dashboards/ridgeline.yml"].read_text())["providers"][0]
    assert f"./grafana/dashboards:{prov['options']['path']}:ro" in graf["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in graf["volumes"]
    prom = comp["services"]["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--web.listen-address=127.0.0.1:9090" in prom["command"]
    assert ds["url"] == "http://127.0.0.1:9090"
    assert prom["network_mode"] == graf["network_mode"] == "host"
    scrape = yaml.safe_load(files["scrape.yaml"].read_text())["scrape"]
    assert scrape["exporter_port"] == 9477 and scrape["prometheus_url"] == "http://127.0.0.1:9090"
    assert Path(scrape["targets_dir"]) == (tmp_path / "prometheus" / "targets").resolve()


@needs_promtool
def test_every_dashboard_expression_parses(tmp_path):
    exprs = grafana.expressions(grafana.dashboard())
    assert len(exprs) >= 20
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"ridgeline:check_{i}", "expr": concrete(e)}
                                                         for i, e in enumerate(exprs)]}]}
    f = tmp_path / "rules.yml"
    f.write_text(yaml.safe_dump(rules), encoding="utf-8")
    res = subprocess.run([PROMTOOL, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(exprs)} rules found" in res.stdout
    # and the check would catch a broken one
    f.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "x:y", "expr": "sum(rate(a[1m])"}]}]}))
    assert subprocess.run([PROMTOOL, "check", "rules", str(f)], capture_output=True, timeout=60).returncode != 0


def test_client_panels_name_metrics_the_exporter_serves(exporter_names):
    used = {n for e in grafana.expressions(grafana.dashboard()) for n in names_in(e) if n.startswith("ridgeline_client_")}
    assert used, "the dashboard has client panels"
    missing = used - exporter_names
    assert not missing, f"dashboard names client metrics the exporter does not serve: {sorted(missing)}"


def server_names_used() -> set[str]:
    return {n for e in grafana.expressions(grafana.dashboard()) for n in names_in(e) if n.startswith("vllm:")}


@pytest.mark.skipif(not CAPTURE.exists(), reason=f"no captured vLLM page at {CAPTURE}")
def test_server_panels_name_metrics_real_vllm_serves():
    real = sample_names(CAPTURE.read_text(encoding="utf-8"))
    missing = server_names_used() - real
    assert not missing, f"not on the real vLLM page: {sorted(missing)}"


def test_server_panels_name_metrics_the_emulator_serves(emulator_names):
    missing = server_names_used() - emulator_names
    assert not missing, f"not on the emulator's page: {sorted(missing)}"
