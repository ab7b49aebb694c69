"""A sweep watched by a real Prometheus, set up from the rendered monitoring files.

Prometheus runs on the rendered prometheus.yml and finds the emulator and the client exporter
through the targets files the run publishes. The runner reads each step's server series back
from Prometheus, while ridgeline's own scraper polls the same server beside it. The tokens per
second over each measured window must agree between the two, to within one scrape interval's
worth. The exporter's counts must match the results directory. Every dashboard query must
return data.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from core.plan import parse_plan
import deploy.emulator  # noqa: F401 - the plan below runs it: a hard import, never a silent skip
from deploy import launcher
from deploy.render import grafana, render_monitoring
from loadtest.prom_reader import PromReader
from loadtest.runner import Sweep, new_run_dir
from loadtest.scraper import GAP, UP, Scraper
from tests.test_prom_reader import needs_prometheus, prometheus, wait_up  # noqa: F401  (fixture)
from tests.test_render_monitoring import concrete

ROOT = Path(__file__).resolve().parents[1]
INTERVAL = 0.5
GEN = "vllm:generation_tokens_total"

pytestmark = [pytest.mark.slow, needs_prometheus]

PLAN = """
name: promsweep
backend: emulator
variants: [{{name: fp16}}]
scenario: {{prompt_tokens: 128, output_tokens: 64}}
sweep: {{concurrency: [2, 8], warmup_s: 7, duration_s: 8, drain_s: 30}}
scrape:
  interval_s: {interval}
  exporter_port: {exporter_port}
  targets_dir: "{targets}"
  prometheus_url: "{prom}"
output_dir: "{out}"
"""


def value_at(series: list[tuple[float, float]], t: float) -> float:
    """The newest sample at or before t: what a Prometheus instant query would return."""
    before = [v for ts, v in series if ts <= t]
    assert before, f"no sample at or before {t}"
    return before[-1]


def test_prometheus_series_agree_with_ridgelines_own_scrape(tmp_path, prometheus):  # noqa: F811
    mon = tmp_path / "mon"
    exporter_port, emu_port = launcher.free_port(), launcher.free_port()
    text = PLAN.format(interval=INTERVAL, exporter_port=exporter_port, targets=mon / "prometheus" / "targets",
                       prom="http://127.0.0.1:9090", out=tmp_path / "results")
    plan = parse_plan(text, "plan.yaml")
    files = render_monitoring(plan, mon, exporter_port=exporter_port)
    prom = prometheus(files[0])
    plan.scrape.prometheus_url = prom.url  # the fixture picked the port
    reader = PromReader(prom.url)

    cmd = launcher.ServerCommand(
        "fp16", [sys.executable, "-m", "deploy.emulator", "--port", str(emu_port), "--gpu", "h100-sxm",
                 "--model", "llama-3-8b", "--weights", "fp16", "--kv-cache-dtype", "auto",
                 "--served-model-name", "fp16"], port=emu_port, startup_timeout_s=60, cwd=str(ROOT))
    own = Scraper(cmd.url + "/metrics", "fp16", timeout=2.0, interval=INTERVAL)
    run = new_run_dir(plan)
    sweep = Sweep(plan, run, commands=[cmd])
    started = {"own": False}

    def on_progress(p) -> None:  # noqa: ANN001
        if not started["own"] and p.phase in ("warm-up", "measure"):
            started["own"] = True
            own.new_step(0)
            own.start()

    sweep.on_progress = on_progress
    try:
        sweep.execute()
    finally:
        own.stop(final=False)

    man = run.read_manifest()
    assert man["status"] == "complete", man["warnings"]
    assert not [w for w in man["warnings"] if "Prometheus" in w], man["warnings"]
    steps = {s["step"]: s for s in man["steps"]}
    stored = run.read_metrics()
    mine = own.buffer.table().to_pandas()
    ended = max(s["ended"] for s in steps.values())  # after that the server is stopped: gaps are right
    assert ((mine.metric == GAP) & (mine.time < ended)).sum() == 0
    own_gen = sorted(zip(mine[mine.metric == GEN].time, mine[mine.metric == GEN].value))
    for step, s in steps.items():
        assert s["status"] == "complete"
        w0, w1 = s["window_start"], s["window_end"]
        rows = stored[stored.step == step]
        # the stored series came from Prometheus: evaluation times on the interval grid from the step's start
        ups = sorted(rows[rows.metric == UP].time)
        assert sum(1 for t in ups if w0 <= t <= w1) >= (w1 - w0) / INTERVAL - 2
        offsets = [(t - ups[0]) / INTERVAL for t in ups]
        assert all(abs(o - round(o)) < 1e-3 for o in offsets)
        assert not rows.labels.str.contains('"instance"').any() and not rows.labels.str.contains('"variant"').any()
        gen = rows[rows.metric == GEN]
        assert gen.labels.nunique() == 1
        prom_gen = sorted(zip(gen.time, gen.value))
        span = w1 - w0
        prom_rate = (value_at(prom_gen, w1) - value_at(prom_gen, w0)) / span
        own_rate = (value_at(own_gen, w1) - value_at(own_gen, w0)) / span
        assert own_rate > 100, (step, own_rate)
        # within one scrape interval's worth of tokens over the window
        assert abs(prom_rate - own_rate) <= own_rate * INTERVAL / span + 1.0, (step, prom_rate, own_rate)
        print(f"step {step}: c={s['concurrency']} Prometheus {prom_rate:.1f} tok/s, own scrape {own_rate:.1f} tok/s")

    # the exporter, as Prometheus scraped it, matches the results directory
    df = run.read_requests()
    # the exporter's last scrape, which carries the step's last records, comes after the step ends:
    # ask over a window that holds it (the run is over; the exporter waited for that scrape)
    end = time.time()
    for step, s in steps.items():
        sel = f'{{job="ridgeline-client",variant="fp16",step="{step}",concurrency="{s["concurrency"]}"}}'
        got = reader.query(f"max_over_time(ridgeline_client_output_tokens_total{sel}[5m])", at=end)
        assert got, sel
        assert float(got[0]["value"][1]) == df[df.step == step].output_tokens.sum()
        sent = reader.query(f"max_over_time(ridgeline_client_requests_sent_total{sel}[5m])", at=end)
        assert float(sent[0]["value"][1]) == (df.step == step).sum()

    # every dashboard query returns data for this run (errors by kind only when there were errors)
    last = steps[max(steps)]
    at = (last["window_start"] + last["window_end"]) / 2
    empty = []
    for expr in grafana.expressions(grafana.dashboard()):
        if "requests_failed_total" in expr:
            continue
        if not reader.query(concrete(expr), at=at):
            empty.append(expr)
    assert not empty, empty
