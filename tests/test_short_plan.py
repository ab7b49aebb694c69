"""The demo's plan cut short by a user (two variants, 1 s windows) still ends with a report.

With a 1 s window no fp16 request finishes inside it: the run must still analyse, write both reports
and every chart, and the empty latency panels say why instead of failing.
"""

import subprocess

import pytest
import yaml

SHORT_SWEEP = {"mode": "concurrency", "concurrency": [1, 4], "warmup_s": 0.2, "duration_s": 1.0, "drain_s": 0}


@pytest.mark.slow
def test_short_demo_plan_ends_with_a_report(tmp_path):
    printed = subprocess.run(["ridgeline", "demo", "--print-plan"], capture_output=True, text=True, timeout=120,
                             check=True).stdout
    plan = yaml.safe_load(printed)
    plan["variants"] = [v for v in plan["variants"] if v["name"] in ("fp16", "awq")]
    plan["sweep"] = SHORT_SWEEP
    plan["output_dir"] = str(tmp_path / "results")
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    res = subprocess.run(["ridgeline", "run", str(tmp_path / "plan.yaml"), "--quiet"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    [run] = list((tmp_path / "results").iterdir())
    assert str(run / "report.html") in res.stdout
    md = (run / "report.md").read_text()
    assert "| fp16 |" in md and "| awq |" in md
    for chart in ("throughput", "speedup", "latency", "goodput"):
        assert (run / "charts" / f"{chart}.png").stat().st_size > 0, chart
