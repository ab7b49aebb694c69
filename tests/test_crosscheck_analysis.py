"""ridgeline against vllm bench serve: the per-level table, its flags, levels that failed or cannot be read."""

import json
from pathlib import Path

import pytest

from analysis import analyze, render_reports
from analysis.crosscheck import COLUMNS, crosscheck_table
from tests.support.synthetic import RunModel, StepModel, build_run, plan_dict

# what vllm bench serve 0.24 saved for fp16 at concurrency 1 on an H100 (--save-result), as it wrote it
REAL = {"date": "20261122-191947", "endpoint_type": "vllm", "backend": "vllm", "label": None, "model_id": "m",
        "tokenizer_id": "llama3-8b-shape/fp16", "num_prompts": 12, "request_rate": "inf", "burstiness": 1.0,
        "max_concurrency": 1, "duration": 20.468563657999994, "completed": 12, "failed": 0,
        "total_input_tokens": 6144, "total_output_tokens": 3072, "request_throughput": 0.5862648791826623,
        "request_goodput": None, "output_throughput": 150.08380907076156,
        "total_token_throughput": 450.2514272122847, "max_output_tokens_per_s": 155.0, "max_concurrent_requests": 2,
        "rtfx": 0.0, "mean_ttft_ms": 30.613304249991796, "median_ttft_ms": 23.141721999962783,
        "std_ttft_ms": 23.4497571304894, "p99_ttft_ms": 99.42940960001299, "mean_tpot_ms": 6.566404447712403,
        "median_tpot_ms": 6.5540883392156735, "std_tpot_ms": 0.07391317421466297, "p99_tpot_ms": 6.754791507882378,
        "mean_itl_ms": 6.568553362863628, "median_itl_ms": 6.451416999993853, "std_itl_ms": 1.3490708445474144,
        "p99_itl_ms": 14.108089719994728}
SCRIPT = "<script>alert(1)</script>"
LEVELS = (1, 4, 16)


def _bench(tokens_per_s: float, ttft_s: float, itl_s: float, concurrency: int, **extra) -> dict:
    """A result in the shape `vllm bench serve --save-result` writes (the keys the comparison reads, and more)."""
    d = {"date": "20261122-191947", "backend": "vllm", "model_id": "m", "num_prompts": 4 * concurrency,
         "request_rate": "inf", "max_concurrency": concurrency, "duration": 20.0, "completed": 4 * concurrency,
         "failed": 0, "total_input_tokens": 6144, "total_output_tokens": 3072, "request_throughput": 0.58,
         "output_throughput": tokens_per_s, "total_token_throughput": 3 * tokens_per_s,
         "median_ttft_ms": ttft_s * 1e3, "p99_ttft_ms": 3 * ttft_s * 1e3, "median_itl_ms": itl_s * 1e3,
         "median_tpot_ms": itl_s * 1e3}
    d.update(extra)
    return d


@pytest.fixture
def base(tmp_path):
    steps = {v: [StepModel(c, 0.005 / sp, 0.02, output_tokens=40, warmup_s=0.5, duration_s=3.0) for c in LEVELS]
             for v, sp in (("fp16", 1.0), ("awq", 1.5))}
    run = build_run(tmp_path / "run", RunModel(steps=steps, plan=plan_dict(["fp16", "awq"], baseline="fp16")))
    s = analyze(run.path)
    return run, {(v, e["concurrency"]): e for v in ("fp16", "awq") for e in s.data["variants"][v]["steps"]}


def _with_crosscheck(run, levels_by_variant, files, argv=None):
    for rel, content in files.items():
        p = run.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content if isinstance(content, str) else json.dumps(content))
    m = run.read_manifest()
    m["crosscheck"] = {v: {"argv": argv or ["vllm", "bench", "serve", "--max-concurrency", "1"], "started": 1.0,
                           "ended": 2.0, "levels": levels} for v, levels in levels_by_variant.items()}
    run.write_manifest(m)


def _level(c, status="ok", error=None, file="auto"):
    return {"concurrency": c, "num_prompts": 4 * c, "status": status, "error": error,
            "file": f"crosscheck/awq/c{c}.json" if file == "auto" else file}


def test_agreeing_and_differing_levels(base):
    run, st = base
    r1, r4 = st[("awq", 1)], st[("awq", 4)]
    # at 1: the bench agrees within 2%; at 4: its throughput is 10% lower and its TTFT 20% higher
    files = {"crosscheck/awq/c1.json": _bench(r1["output_tokens_per_s"] / 1.02, r1["ttft_p50_s"] * 1.01,
                                              r1["itl_p50_s"] * 0.98, 1),
             "crosscheck/awq/c4.json": _bench(r4["output_tokens_per_s"] / 1.1, r4["ttft_p50_s"] * 1.2,
                                              r4["itl_p50_s"], 4)}
    _with_crosscheck(run, {"awq": [_level(1), _level(4)]}, files)
    s = analyze(run.path)
    rows = s.data["crosscheck"]
    assert [(r["variant"], r["concurrency"], r["status"]) for r in rows] == [("awq", 1, "ok"), ("awq", 4, "ok")]
    a, b = rows
    assert a["output_tokens_diff_pct"] == pytest.approx(2.0)
    assert a["ttft_diff_pct"] == pytest.approx(100 * (1 / 1.01 - 1))
    assert a["itl_diff_pct"] == pytest.approx(100 * (1 / 0.98 - 1))
    assert not (a["output_tokens_flagged"] or a["ttft_flagged"] or a["itl_flagged"])
    assert a["verdict"] == "agrees within 5%"
    assert a["bench_ttft_p50_s"] == pytest.approx(r1["ttft_p50_s"] * 1.01)  # milliseconds to seconds
    assert a["ridgeline_output_tokens_per_s"] == pytest.approx(r1["output_tokens_per_s"])
    assert a["step"] == r1["step"] and a["num_prompts"] == 4
    assert b["output_tokens_diff_pct"] == pytest.approx(10.0)
    assert b["ttft_diff_pct"] == pytest.approx(100 * (1 / 1.2 - 1))
    assert b["output_tokens_flagged"] and b["ttft_flagged"] and not b["itl_flagged"]
    assert b["verdict"] == "differs beyond 5%: output tokens/s, TTFT p50"
    assert b["bench_completed"] == 16 and b["bench_duration_s"] == 20.0
    assert not any("vllm bench serve" in w for w in s.data["warnings"])


def test_a_real_bench_result_file_is_read(base):
    run, st = base
    _with_crosscheck(run, {"awq": [_level(1)]}, {"crosscheck/awq/c1.json": REAL})
    row = analyze(run.path).data["crosscheck"][0]
    assert row["bench_output_tokens_per_s"] == pytest.approx(150.08380907076156)
    assert row["bench_itl_p50_s"] == pytest.approx(0.006451416999993853)
    assert row["bench_ttft_p50_s"] == pytest.approx(0.023141721999962783)
    assert row["bench_ttft_p99_s"] == pytest.approx(0.09942940960001299)
    assert row["bench_completed"] == 12 and row["bench_failed"] == 0
    assert row["status"] == "ok"


def test_failed_missing_and_malformed_levels_are_rows_not_exceptions(base):
    run, _ = base
    files = {"crosscheck/awq/c4.json": "{not json", "crosscheck/fp16/c1.json": "[1, 2]"}
    _with_crosscheck(run, {
        "awq": [_level(1, status="failed", error="vllm bench serve exited with status 1\ntraceback ..."),
                _level(4), _level(16), _level(16, file=None), _level(64, file="../../outside.json")],
        "fp16": [_level(1, file="crosscheck/fp16/c1.json")],
    }, files)
    s = analyze(run.path)
    rows = {(r["variant"], r["concurrency"], r["file"]): r for r in s.data["crosscheck"]}
    assert len(s.data["crosscheck"]) == 6
    failed = rows[("awq", 1, "crosscheck/awq/c1.json")]
    assert failed["status"] == "failed" and failed["note"] == "vllm bench serve failed: vllm bench serve exited with status 1"
    assert failed["bench_output_tokens_per_s"] is None and failed["ridgeline_output_tokens_per_s"] > 0
    bad = rows[("awq", 4, "crosscheck/awq/c4.json")]
    assert bad["status"] == "unreadable" and "crosscheck/awq/c4.json: not a vllm bench serve result" in bad["note"]
    assert rows[("awq", 16, "crosscheck/awq/c16.json")]["status"] == "missing"
    assert rows[("awq", 16, None)]["note"] == "no result file was recorded"
    outside = rows[("awq", 64, "../../outside.json")]
    assert outside["status"] == "unreadable" and "outside the results directory" in outside["note"]
    not_object = rows[("fp16", 1, "crosscheck/fp16/c1.json")]
    assert not_object["status"] == "unreadable" and "a JSON list, not an object" in not_object["note"]
    warnings = "\n".join(s.data["warnings"])
    for name in ("crosscheck/awq/c4.json", "crosscheck/fp16/c1.json", "crosscheck/awq/c16.json"):
        assert name in warnings
    assert "vllm bench serve failed" not in warnings  # a failed level: the run's own warning says it, not a second
    for r in s.data["crosscheck"]:
        assert not (r["output_tokens_flagged"] or r["ttft_flagged"] or r["itl_flagged"])


def test_no_ridgeline_step_at_that_concurrency_and_a_bench_run_at_another(base):
    run, _ = base
    files = {"crosscheck/awq/c64.json": _bench(1000.0, 0.1, 0.01, 64),
             "crosscheck/awq/c4.json": _bench(1000.0, 0.1, 0.01, 8, failed=3)}
    _with_crosscheck(run, {"awq": [_level(64), _level(4)]}, files)
    rows = analyze(run.path).data["crosscheck"]
    assert rows[0]["status"] == "no ridgeline step" and rows[0]["bench_output_tokens_per_s"] == 1000.0
    assert "ridgeline ran no step of awq at concurrency 64" in rows[0]["note"]
    assert rows[0]["output_tokens_diff_pct"] is None
    assert "the result says max_concurrency 8" in rows[1]["note"] and "3 bench request(s) failed" in rows[1]["note"]


def test_the_first_repeat_is_compared(base):
    run, st = base
    m = run.read_manifest()
    for x in m["steps"]:
        if x["variant"] == "awq" and x["concurrency"] == 4:
            x["repeat"] = 1  # the step at 4 becomes the second repeat: another step at 4 is the first
        if x["variant"] == "awq" and x["concurrency"] == 16:
            x["concurrency"], x["repeat"] = 4, 0
    run.write_manifest(m)
    _with_crosscheck(run, {"awq": [_level(4)]}, {"crosscheck/awq/c4.json": _bench(1000.0, 0.1, 0.01, 4)})
    row = analyze(run.path).data["crosscheck"][0]
    assert row["repeat"] == 0 and row["step"] == 2


def test_a_malformed_manifest_entry_is_a_warning():
    rows, warnings = crosscheck_table(Path("/nonexistent"), {"crosscheck": ["not", "a", "dict"]}, None)
    assert rows.empty and list(rows.columns) == COLUMNS and "left out" in warnings[0]
    rows, warnings = crosscheck_table(Path("/nonexistent"), {"crosscheck": {"awq": {"levels": "x"}}}, None)
    assert rows.empty and warnings == ["crosscheck of awq: no levels recorded"]
    # the runner's entry when vllm bench serve could not even be set up
    entry = {"started": 1.0, "ended": 2.0, "argv": None, "levels": [], "error": "crosscheck needs scenario.tokenizer"}
    rows, warnings = crosscheck_table(Path("/nonexistent"), {"crosscheck": {"awq": entry}}, None)
    assert warnings == ["crosscheck of awq: no levels recorded (crosscheck needs scenario.tokenizer)"]
    assert crosscheck_table(Path("/nonexistent"), {}, None)[0].empty


def test_reports_have_the_section_only_with_a_crosscheck_and_escape_it(base):
    run, st = base
    render_reports(run.path)
    assert "vllm bench serve" not in (run.path / "report.html").read_text()
    assert "vllm bench serve" not in (run.path / "report.md").read_text()
    r1 = st[("awq", 1)]
    files = {"crosscheck/awq/c1.json": _bench(r1["output_tokens_per_s"] / 1.1, r1["ttft_p50_s"], r1["itl_p50_s"], 1)}
    _with_crosscheck(run, {"awq": [_level(1), _level(4, status="failed", error=f"HTTP 500 {SCRIPT}")]}, files,
                     argv=["vllm", "bench", "serve", "--model", SCRIPT])
    render_reports(run.path)
    html = (run.path / "report.html").read_text()
    md = (run.path / "report.md").read_text()
    assert '<section id="crosscheck"><h2>ridgeline vs vllm bench serve</h2>' in html
    assert SCRIPT not in html and "&lt;script&gt;" in html
    assert 'class=" flag">+10.0%</td>' in html  # the flagged throughput difference is highlighted
    assert "differs beyond 5%: output tokens/s" in html and "bench failed" in html
    assert "## ridgeline vs vllm bench serve" in md
    assert SCRIPT not in md and "&lt;script&gt;" in md
    assert "| awq | 1 | 4 | differs beyond 5%: output tokens/s |" in md and "**+10.0%**" in md
    order = [html.index(x) for x in ('id="agreement"', 'id="crosscheck"', 'id="steps"')]
    assert order == sorted(order)
