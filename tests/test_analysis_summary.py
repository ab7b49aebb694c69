"""summary.json's stable shape, the verdict's call-outs, the files analyze writes, and bad input."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from analysis import analyze, render_reports
from analysis.data import AnalysisError
from core.results import RunDir, atomic_write_table
from tests.support.synthetic import (
    RunModel,
    StepModel,
    as_rate_step,
    build_run,
    closed_loop,
    manifest,
    plan_dict,
)

LEVELS = (1, 4, 16, 64)


def _steps(speed: float, **kw):
    return [StepModel(c, 0.005 * (1 + c / 32) / speed, 0.02, output_tokens=(32, 64), jitter=0.1, warmup_s=0.5,
                      duration_s=4.0, **kw) for c in LEVELS]


def _run(tmp_path, servers=None, plan=None, **kw):
    variants = {"fp16": _steps(1.0), "awq": _steps(1.5), "gptq": _steps(1.0)}
    model = RunModel(steps=variants, plan=plan or plan_dict(list(variants), baseline="fp16"),
                     servers=servers or {}, **kw)
    return build_run(tmp_path / "run", model)


def _strict_json(path):
    def bad(name):
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=bad)


def test_summary_has_the_documented_shape(tmp_path):
    run = _run(tmp_path)
    s = analyze(run.path)
    data = _strict_json(run.summary_path)
    assert data == json.loads(json.dumps(s.to_dict()))
    for key in ("baseline", "backend", "variants", "speedup", "crossover", "verdict"):
        assert key in data
    assert data["baseline"] == "fp16" and data["backend"] == "emulator"
    assert set(data["variants"]) == {"fp16", "awq", "gptq"}
    step = data["variants"]["awq"]["steps"][0]
    for key in ("concurrency", "rate", "output_tokens_per_s", "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s",
                "e2e_p50_s", "requests", "errors"):
        assert key in step
    assert step["concurrency"] == 1 and step["rate"] is None
    assert isinstance(step["requests"], int) and step["requests"] > 0
    assert set(data["speedup"]) == {"awq", "gptq"}  # the baseline is not compared with itself
    assert set(data["speedup"]["awq"]) == {"1", "4", "16", "64"}
    assert set(data["crossover"]["awq"]) == {"1.5", "1.2", "1.0"}
    assert data["speedup"]["awq"]["1"] == pytest.approx(1.5, rel=0.05)
    assert isinstance(data["verdict"], str) and "awq gives" in data["verdict"]
    assert data["verdict"].startswith("Emulator run (modelled, not measured on a GPU).")
    # keys beside them: a run without telemetry, schedule or cross-check has them, empty
    for key in ("lateness_p50_s", "lateness_p99_s", "lateness_max_s", "energy_j", "joules_per_token",
                "tokens_per_joule", "tokens_per_s_per_gpu", "mean_power_w", "max_power_w", "gpus", "throttled",
                "energy_label", "achieved_flops_per_s"):
        assert step[key] is None, key
    assert data["energy"] is None and data["crosscheck"] == []
    assert "Energy:" not in data["verdict"]


def test_analyze_writes_the_step_table(tmp_path):
    run = _run(tmp_path)
    analyze(run.path)
    t = pd.read_parquet(run.path / "steps.parquet")
    csv = pd.read_csv(run.path / "steps.csv")
    assert len(t) == len(csv) == 3 * len(LEVELS)
    for col in ("variant", "step", "level", "output_tokens_per_s", "output_tokens_per_s_lo", "ttft_p99_s",
                "goodput_tokens_per_s", "server_running_mean", "server_ttft_p50_s", "roofline_regime", "error_kinds"):
        assert col in t.columns
    assert t.roofline_regime.isin(["memory", "compute"]).all()


def test_served_mismatch_is_called_out(tmp_path):
    servers = {"gptq": {"argv": ["vllm", "serve", "x"], "url": "http://127.0.0.1:1",
                        "variant": {"name": "gptq", "weights": "gptq", "kv_cache_dtype": "auto"},
                        "served": {"verdict": "mismatch",
                                   "reasons": ["weights took 14.96 GiB, the size of 16-bit weights"]}}}
    run = _run(tmp_path, servers=servers)
    s = analyze(run.path)
    assert "gptq ran at 16-bit size: not INT4 (weights took 14.96 GiB" in s.verdict
    assert s.data["variants"]["gptq"]["served_verdict"] == "mismatch"
    assert any("served model does not match" in w for w in s.data["warnings"])


def _rate_run(tmp_path):
    """Two variants at 0.5 and 2.5 req/s; request k of a step was sent (k mod 10) ms after it was due."""
    run = RunDir(tmp_path / "run").create()
    infos = []
    rng = np.random.default_rng(0)
    for v, speed in (("fp16", 1.0), ("awq", 1.4)):
        for i, rate in enumerate((0.5, 2.5)):
            table, info, _ = closed_loop(v, i, StepModel(2, 0.01 / speed, 0.01, output_tokens=20, duration_s=3.0),
                                         1e9 + 100 * i + (0 if v == "fp16" else 1000), rng)
            table, info = as_rate_step(table, info, rate, 0.001 * (np.arange(table.num_rows) % 10))
            atomic_write_table(run.requests_path(v, i), table)
            infos.append(info)
    plan = plan_dict(["fp16", "awq"], sweep={"mode": "rate", "rates": [0.5, 2.5]})
    run.write_manifest(manifest(plan, infos))
    return run


def test_rate_sweep_keys_are_rates(tmp_path):
    run = _rate_run(tmp_path)
    s = analyze(run.path)
    assert set(s.speedup["awq"]) == {"0.5", "2.5"}
    assert s.data["level"] == "rate"
    assert s.data["variants"]["awq"]["steps"][0]["rate"] == 0.5


def test_open_loop_lateness_per_step_in_the_summary_and_both_reports(tmp_path):
    run = _rate_run(tmp_path)
    s = analyze(run.path)
    m = {(x["variant"], x["step"]): x for x in run.read_manifest()["steps"]}
    for v in ("fp16", "awq"):
        for entry in s.data["variants"][v]["steps"]:
            t = pq.read_table(run.requests_path(v, entry["step"])).to_pandas()
            w = m[(v, entry["step"])]
            due = t[(t.scheduled_time >= w["window_start"]) & (t.scheduled_time <= w["window_end"])]
            late = (due.send_time - due.scheduled_time).to_numpy()
            assert len(due) < len(t)  # warm-up arrivals are left out
            assert entry["lateness_p50_s"] == pytest.approx(np.percentile(late, 50), abs=1e-9)
            assert entry["lateness_p99_s"] == pytest.approx(np.percentile(late, 99), abs=1e-9)
            assert entry["lateness_max_s"] == pytest.approx(0.009, abs=1e-6)  # epoch seconds: float64 to 0.1 µs
            assert 0.002 <= entry["lateness_p50_s"] <= 0.007
    render_reports(run.path)
    md = (run.path / "report.md").read_text()
    html = (run.path / "report.html").read_text()
    assert "| late p50 | late p99 | late max |" in md and "<th>late p99</th>" in html
    assert "9 ms" in md


def test_closed_loop_reports_have_no_lateness_columns(tmp_path):
    run = _run(tmp_path)
    render_reports(run.path)
    assert "late p99" not in (run.path / "report.md").read_text()
    assert "late p99" not in (run.path / "report.html").read_text()


def _energy_run(tmp_path, fp16_w=400.0, awq_w=360.0, gpus=2, source="modelled", awq_reasons=0):
    variants = {"fp16": _steps(1.0, power_w=fp16_w),
                "awq": [StepModel(c, 0.005 * (1 + c / 32) / 1.5, 0.02, output_tokens=(32, 64), jitter=0.1,
                                  warmup_s=0.5, duration_s=4.0, power_w=awq_w,
                                  clock_reasons=awq_reasons if c == 64 else 0) for c in LEVELS]}
    return build_run(tmp_path / "run", RunModel(steps=variants, plan=plan_dict(["fp16", "awq"], baseline="fp16"),
                                                gpus=gpus, telemetry_source=source))


def _at(data, variant, concurrency):
    return next(x for x in data["variants"][variant]["steps"] if x["concurrency"] == concurrency)


def test_energy_per_step_and_the_verdicts_energy_sentence(tmp_path):
    run = _energy_run(tmp_path)
    s = analyze(run.path)
    a, b = _at(s.data, "awq", 64), _at(s.data, "fp16", 64)
    # each GPU draws 360 W throughout: two GPUs, 720 W, over the measured window
    assert a["gpus"] == 2
    assert a["energy_j"] == pytest.approx(720.0 * a["window_s"])
    assert a["mean_power_w"] == pytest.approx(720.0) and a["max_power_w"] == pytest.approx(720.0)
    assert a["joules_per_token"] == pytest.approx(720.0 / a["output_tokens_per_s"])
    assert a["tokens_per_joule"] == pytest.approx(a["output_tokens_per_s"] / 720.0)
    assert a["tokens_per_s_per_gpu"] == pytest.approx(a["output_tokens_per_s"] / 2)
    assert a["throttled"] is False and a["energy_comparable"] is True
    assert a["energy_label"] == "modelled" and a["energy_source"] == "modelled"
    speed = a["output_tokens_per_s"] / b["output_tokens_per_s"]
    less = 1 - (720.0 / a["output_tokens_per_s"]) / (800.0 / b["output_tokens_per_s"])
    assert 0.3 < less < 0.5
    sentence = (f"Energy: awq at concurrency 64 gives {speed:.2f}x the tokens of fp16 for {round(less * 100)}% less "
                f"energy per token ({720.0 / a['output_tokens_per_s']:.3g} vs {800.0 / b['output_tokens_per_s']:.3g} "
                f"J/token; modelled power, not measured).")
    assert sentence in s.verdict
    assert s.data["energy"]["label"] == "modelled" and s.data["energy"]["sources"] == ["modelled"]
    assert s.data["energy"]["comparable_steps"] == 2 * len(LEVELS)
    # the step table carries them too
    t = pd.read_parquet(run.path / "steps.parquet")
    assert t.energy_j.notna().all() and t.throttled.eq(False).all()


def test_reports_show_the_energy_table_with_its_label(tmp_path):
    run = _energy_run(tmp_path, source="nvml")
    s = analyze(run.path)
    assert s.data["energy"]["label"] == "measured" and "measured by nvml" in s.verdict
    render_reports(run.path)
    md = (run.path / "report.md").read_text()
    html = (run.path / "report.html").read_text()
    a = _at(s.data, "awq", 64)
    assert "## Energy" in md and "| variant | step | concurrency | power | GPUs | mean power |" in md
    assert f"| awq | 3 | 64 | measured | 2 | 720 W | 720 W | {a['joules_per_token']:.3g} |" in md
    assert 'id="energy"' in html and ">720 W<" in html and ">measured<" in html
    assert (run.path / "energy.parquet").exists() and (run.path / "charts" / "energy.png").exists()


def test_a_throttled_step_is_flagged_and_left_out_of_the_energy_sentence(tmp_path):
    run = _energy_run(tmp_path, awq_reasons=0x40)
    s = analyze(run.path)
    a = _at(s.data, "awq", 64)
    assert a["throttled"] is True and a["energy_comparable"] is False
    assert a["throttle_reasons"] == "hw_thermal_slowdown"
    assert "Energy: awq at concurrency 16 gives" in s.verdict  # the highest level both compare at
    assert "clocks were throttled in awq step 3" in s.verdict
    assert s.data["energy"]["throttled_steps"] == 1
    render_reports(run.path)
    assert "| awq | 3 | 64 | modelled | 2 | 720 W | 720 W |" in (run.path / "report.md").read_text()
    assert "hw_thermal_slowdown" in (run.path / "report.html").read_text()


def test_a_failed_step_stays_in_the_table_but_not_in_the_curves(tmp_path):
    run = _run(tmp_path)
    m = run.read_manifest()
    for st in m["steps"]:
        if st["variant"] == "awq" and st["step"] == 3:
            st["status"] = "failed"
            st["error"] = "server of awq exited with status 1 during step 3"
    run.write_manifest(m)
    s = analyze(run.path)
    assert "64" not in s.speedup["awq"]
    statuses = [x["status"] for x in s.data["variants"]["awq"]["steps"]]
    assert statuses.count("failed") == 1
    assert any("awq step 3 is failed" in w for w in s.data["warnings"])
    assert "did not complete" in s.verdict


def test_an_unknown_model_leaves_out_the_roofline_only(tmp_path):
    run = _run(tmp_path, plan=plan_dict(["fp16", "awq", "gptq"], model="/nonexistent/model-dir"))
    s = analyze(run.path)
    assert any(w.startswith("no roofline:") for w in s.data["warnings"])
    assert s.speedup["awq"]["1"] > 1.3
    assert s.data["variants"]["awq"]["ridge_batch"] is None


def test_client_saturation_is_reported(tmp_path):
    run = _run(tmp_path)
    m = run.read_manifest()
    m["steps"][0]["client_saturated"] = True
    m["steps"][0]["client_cpu_max"] = 99.0
    run.write_manifest(m)
    s = analyze(run.path)
    assert s.data["variants"]["fp16"]["steps"][0]["client_saturated"] is True
    assert "CPU-saturated" in s.verdict


def test_a_plan_that_no_longer_validates_is_read_leniently(tmp_path):
    run = _run(tmp_path)
    m = run.read_manifest()
    m["plan"]["name"] = "<script>alert(1)</script>"  # not a valid run name any more
    m["plan"]["unknown_future_key"] = 1
    run.write_manifest(m)
    s = analyze(run.path)
    assert s.data["run"] == "<script>alert(1)</script>"
    assert any("does not validate" in w for w in s.data["warnings"])


def test_bad_input_names_what_and_where(tmp_path):
    with pytest.raises(AnalysisError, match="no such results directory"):
        analyze(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="not a results directory"):
        analyze(tmp_path / "empty")
    run = _run(tmp_path)
    bad = run.requests_path("awq", 1)
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(AnalysisError, match=r"step-001\.parquet: cannot be read"):
        analyze(run.path)


def test_request_files_the_manifest_never_listed_are_analysed(tmp_path):
    run = _run(tmp_path)
    m = run.read_manifest()
    m["steps"] = [st for st in m["steps"] if not (st["variant"] == "gptq" and st["step"] == 2)]
    run.write_manifest(m)
    s = analyze(run.path)
    steps = s.data["variants"]["gptq"]["steps"]
    assert [x["step"] for x in steps] == [0, 1, 2, 3]
    unlisted = [x for x in steps if x["step"] == 2][0]
    assert unlisted["status"] == "unlisted" and unlisted["concurrency"] == 16
    assert any("no step in the manifest" in w for w in s.data["warnings"])


def test_analysis_is_cached_until_a_file_changes(tmp_path):
    from analysis.pipeline import compute

    run = _run(tmp_path)
    a1 = compute(run.path)
    assert compute(run.path) is a1
    m = run.read_manifest()
    m["warnings"] = ["changed"]
    run.write_manifest(m)
    assert compute(run.path) is not a1
