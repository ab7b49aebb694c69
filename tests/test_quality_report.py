"""Both reports with and without quality: the table, the chart, the sentence where there is none."""

from __future__ import annotations

import json
import re

import pytest

from analysis import analyze, render_reports
from tests.support.synthetic import RunModel, StepModel, build_run, plan_dict
from tests.support.quality_rows import add_quality, write_variant


def _run(path, backend="emulator"):
    steps = {v: [StepModel(c, 0.004 * (1 + c / 16) / s, 0.02, output_tokens=30, warmup_s=0.3, duration_s=2.0)
                 for c in (1, 8)] for v, s in (("fp16", 1.0), ("awq", 1.5), ("gptq", 1.3))}
    return build_run(path, RunModel(steps=steps, plan=plan_dict(list(steps), baseline="fp16"), backend=backend)).path


def _render(path):
    summary = analyze(path).to_dict()
    out = render_reports(path)
    return summary, out, out["html"].read_text(), out["md"].read_text()


@pytest.fixture(scope="module")
def with_quality(tmp_path_factory):
    path = _run(tmp_path_factory.mktemp("q") / "run")
    add_quality(path, {"fp16": 0.0, "awq": 0.8}, {"gptq": "dummy weights (--load-format dummy)"})
    return _render(path)


def test_markdown_has_the_quality_table_with_the_summary_figures(with_quality):
    s, _, _, md = with_quality
    awq = s["quality"]["variants"]["awq"]
    lo, hi = awq["intervals"]["ppl_change_pct"]
    row = next(line for line in md.splitlines() if line.startswith("| awq | real |"))
    assert f"| {awq['deltas']['ppl_change_pct']:+.1f}% | {lo:+.1f}% to {hi:+.1f}% |" in row
    gptq = next(line for line in md.splitlines() if line.startswith("| gptq | dummy |"))
    assert "quality not measured: dummy weights (--load-format dummy)" in gptq
    assert "![speed against quality](charts/quality.png)" in md
    assert md.index("## Quality against fp16") < md.index("## Crossover")


def test_html_has_the_quality_table_chart_and_verdict(with_quality):
    s, out, html, _ = with_quality
    assert out["chart:quality"].stat().st_size > 10_000
    section = html.split('<section id="quality">', 1)[1].split("</section>", 1)[0]
    assert "<table>" in section and ">awq</td>" in section
    assert 'alt="speed against quality" src="data:image/png;base64,' in section
    line = s["quality"]["verdict"]["awq"]
    assert line.replace("&", "&amp;") in html.split('<p class="verdict">', 1)[1].split("</p>", 1)[0]


def test_without_quality_the_reports_say_so(tmp_path):
    s, out, html, md = _render(_run(tmp_path / "run"))
    assert s["quality"] is None and "chart:quality" not in out
    assert "Quality was not measured: the emulator has no model weights" in md
    section = html.split('<section id="quality">', 1)[1].split("</section>", 1)[0]
    assert "the emulator has no model weights" in section and "<table>" not in section


def test_real_backend_without_a_quality_block_points_to_it(tmp_path):
    _, _, _, md = _render(_run(tmp_path / "run", backend="vllm"))
    assert "the plan has no quality: block" in md


def test_nothing_measured_renders_a_table_without_a_chart(tmp_path):
    path = _run(tmp_path / "run")
    for v in ("fp16", "awq", "gptq"):
        write_variant(path, v, status="not_measured", reason="emulator: no model weights", weights="emulator")
    s, out, html, md = _render(path)
    assert "chart:quality" not in out
    assert md.count("quality not measured: emulator: no model weights") >= 3
    assert "quality: the quality baseline fp16 was not measured" in " ".join(s["warnings"])


def test_quality_strings_are_escaped(tmp_path):
    path = _run(tmp_path / "run")
    write_variant(path, "fp16", status="failed", reason="<script>alert(1)</script> | pipe")
    _, _, html, md = _render(path)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert "<script>" not in md and "&#124; pipe" in md
