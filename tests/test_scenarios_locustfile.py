"""scenarios/locustfile.py runs under plain Locust and its timings land in Locust's statistics."""

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _locust(tmp_path, url, *extra):
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "scenarios" / "locustfile.py"), "--headless",
           "-u", "4", "-r", "4", "-t", "6s", "--host", url, "--csv", str(tmp_path / "lc"), "--only-summary", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    with open(tmp_path / "lc_stats.csv") as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}, p.stderr


def test_locustfile_headless_reports_e2e_and_ttft(null_server, tmp_path):
    srv = null_server(ttft_ms=20, gap_ms=2)
    rows, _ = _locust(tmp_path, srv.url, "--rl-scenario", "chat-short", "--rl-model", "null")
    e2e, ttft = rows[("POST", "chat-short e2e")], rows[("TTFT", "chat-short")]
    assert int(e2e["Request Count"]) > 3 and int(e2e["Failure Count"]) == 0
    assert int(ttft["Request Count"]) == int(e2e["Request Count"])
    assert float(ttft["Median Response Time"]) >= 20  # the null server's first-token delay, in ms
    assert float(e2e["Average Response Time"]) > float(ttft["Average Response Time"])


def test_locustfile_takes_a_plan_scenario(null_server, tmp_path):
    srv = null_server()
    plan = tmp_path / "p.yaml"
    plan.write_text("variants: [{name: a}]\nscenario: {api: completions, prompt_tokens: 8, output_tokens: 4}\n")
    rows, _ = _locust(tmp_path, srv.url, "--rl-plan", str(plan))
    assert int(rows[("POST", "plan e2e")]["Request Count"]) > 3
