"""Reports render whatever a valid plan produced: steps with no finished request, only errors, one
request or none, failed steps, variants without a step, with or without scrapes and telemetry.

Results directories are written with the project's own writers (RunDir, write_metrics,
write_telemetry, the manifest's shape) from modelled steps, then reshaped into the awkward cases a
real run produces (a measured window shorter than one request leaves only cancelled requests). Both
reports and every chart must come out, and a chart with nothing to draw says why in its panel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from analysis import analyze, render_reports
from analysis.charts import CHARTS
from analysis.pipeline import compute
from tests.support.synthetic import StepModel, closed_loop, manifest, metrics_for, plan_dict, telemetry_for
from core.records import REQUEST_SCHEMA
from core.results import RunDir, atomic_write_table
from loadtest.telemetry import write_telemetry

KINDS = ("ok", "one_token", "unfinished", "errors_only", "one_request", "no_request")


@dataclass
class StepCase:
    kind: str
    concurrency: int
    failed: bool
    scraped: bool
    telemetry: bool


step_cases = st.builds(StepCase, kind=st.sampled_from(KINDS), concurrency=st.sampled_from([1, 2, 4, 16]),
                       failed=st.booleans(), scraped=st.booleans(), telemetry=st.booleans())
# per variant a list of steps; an empty list is a variant the plan names but that never ran a step
run_cases = st.lists(st.lists(step_cases, max_size=3), min_size=1, max_size=3).filter(
    lambda v: any(v))


def _set(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _step(case: StepCase, variant: str, step: int, t0: float, rng: np.random.Generator):
    model = StepModel(case.concurrency, gap_s=0.01, ttft_s=0.05, output_tokens=1 if case.kind == "one_token" else 20,
                      warmup_s=0.0 if case.kind == "one_request" else 0.2, duration_s=0.5,
                      errors=10**6 if case.kind == "errors_only" else 0, power_w=300.0 if case.telemetry else None)
    table, info, extra = closed_loop(variant, step, model, t0, rng)
    if case.kind == "unfinished":  # the window ended before any request did: all cancelled mid-stream
        n = table.num_rows
        table = _set(table, "status", pa.array(["cancelled"] * n, pa.string()))
        table = _set(table, "error_kind", pa.array(["cancelled"] * n, pa.string()))
    elif case.kind == "errors_only":
        table = table.filter(pc.equal(table.column("status"), "error"))
    elif case.kind == "one_request":
        table = table.slice(0, 1)
    elif case.kind == "no_request":
        table = REQUEST_SCHEMA.empty_table()
    info.sent = info.recorded = table.num_rows
    if case.failed:
        info.status, info.error = "failed", "the server stopped answering"
    return model, table, info, extra


def _build(path, cases: list[list[StepCase]]) -> RunDir:
    names = ["fp16", "awq", "gptq"][: len(cases)]
    run = RunDir(path).create()
    rng = np.random.default_rng(0)
    infos, t = [], 1.8e9
    for variant, steps in zip(names, cases):
        for i, case in enumerate(steps):
            model, table, info, extra = _step(case, variant, i, t, rng)
            atomic_write_table(run.requests_path(variant, i), table)
            if case.scraped and table.num_rows:
                run.write_metrics(variant, i, metrics_for(variant, i, info, extra, case.concurrency))
            if case.telemetry:
                write_telemetry(run, variant, i, telemetry_for(variant, i, info, model))
            infos.append(info)
            t = (info.ended or t) + 1.0
    plan = plan_dict(names, baseline="fp16", gpu="h100-sxm", model="llama-3-8b")
    run.write_manifest(manifest(plan, infos))
    return run


@settings(max_examples=8, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate], suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(cases=run_cases)
# the short plan's outcome: no fp16 request finished inside its 1 s windows, awq's did
@example(cases=[[StepCase("unfinished", 1, False, True, False), StepCase("unfinished", 4, False, True, False)],
                [StepCase("ok", 1, False, True, False), StepCase("ok", 4, False, True, False)]])
# only errors, one request, no request, and a variant the plan names that never ran a step
@example(cases=[[StepCase("errors_only", 2, False, True, True), StepCase("one_request", 4, False, False, False)],
                [StepCase("no_request", 1, False, False, False), StepCase("ok", 16, True, True, True)], []])
def test_any_run_renders_both_reports_and_every_chart(tmp_path_factory, cases):
    run = _build(tmp_path_factory.mktemp("run") / "run", cases)
    analyze(run.path)
    written = render_reports(run.path)
    html = written["html"].read_text()
    md = written["md"].read_text()
    assert html.lower().startswith("<!doctype html>") and "Verdict" in html
    assert md.startswith("# ridgeline:") and "## Per step" in md
    a = compute(run.path)
    # the charts a run always has: drawn, with the reason in the panel where there is nothing to plot
    for name in ("throughput", "latency", "goodput"):
        assert f"chart:{name}" in written, name
    assert not any("chart" in w and "left out" in w for w in a.warnings), a.warnings
    for name, fn in CHARTS.items():  # every chart function, also those the report left out
        fn(a, run.path / "again" / f"{name}.png")
