"""Quality inside `ridgeline run`, `ridgeline quality` and `--resume`, on the emulator (quick).

The emulator has no weights: its variants are recorded "not_measured", and no numbers. Served as an
external URL it is also a real server without prompt logprobs: the quality fails with that reason
while every speed step is kept. A resumed run measures only the quality it does not have.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from deploy import launcher
from deploy.servers import server_commands
from loadtest.cli import app
from core.plan import Plan
from loadtest.quality.measure import DUMMY_REASON, EMULATOR_REASON, ORIGIN_FILE, measure_variant, weights_of
from loadtest.resume import prepare, resume
from loadtest.runner import Sweep, new_run_dir

pytestmark = pytest.mark.timeout(300)


def _prompts(tmp_path: Path) -> Path:
    f = tmp_path / "prompts.jsonl"
    f.write_text(json.dumps({"prompt": "The capital of France is"}) + "\n")
    return f


def _plan_dict(tmp_path: Path, **keys) -> dict:
    d = {"name": "q", "backend": "emulator", "model": "llama-3-8b", "variants": [{"name": "fp16"}, {"name": "awq"}],
         "scenario": {"prompt_tokens": 16, "output_tokens": 8},
         "sweep": {"concurrency": [1], "warmup_s": 0, "requests": 4, "drain_s": 10},
         "scrape": {"interval_s": 0.5}, "output_dir": str(tmp_path / "results"),
         "quality": {"greedy": {"file": str(_prompts(tmp_path)), "max_tokens": 4}}}
    d.update(keys)
    return d


def _status(run: Path, variant: str) -> dict:
    return json.loads((run / "quality" / variant / "quality.json").read_text())


def test_emulator_variants_are_not_measured_and_resume_redoes_only_missing_quality(tmp_path):
    plan = Plan.model_validate(_plan_dict(tmp_path))
    run = new_run_dir(plan)
    Sweep(plan, run).execute()
    for v in ("fp16", "awq"):
        st = _status(run.path, v)
        assert (st["status"], st["reason"], st["weights"]) == ("not_measured", EMULATOR_REASON, "emulator")
        assert sorted(p.name for p in (run.path / "quality" / v).iterdir()) == ["quality.json"]  # no numbers
    man = run.read_manifest()
    assert [s["status"] for s in man["steps"]] == ["complete", "complete"]
    assert man["quality"]["awq"]["status"] == "not_measured"

    state = prepare(run.path)
    assert state.done  # speed and quality both there: nothing to resume
    shutil.rmtree(run.path / "quality" / "awq")
    fp16_written = (run.path / "quality/fp16/quality.json").stat().st_mtime_ns
    state = prepare(run.path)
    assert not state.done and state.quality == ["awq"] and len(state.keep) == 2
    assert "quality still to measure: awq" in state.describe()
    resume(state)
    assert _status(run.path, "awq")["status"] == "not_measured"
    assert (run.path / "quality/fp16/quality.json").stat().st_mtime_ns == fp16_written  # not asked again
    after = run.read_manifest()
    assert [s["status"] for s in after["steps"]] == ["complete", "complete"]
    assert [s["started"] for s in after["steps"]] == [s["started"] for s in man["steps"]]  # steps kept as they were
    assert "fp16" not in [p.stem for p in (run.path / "logs").iterdir()] or \
        (run.path / "logs/fp16.log").stat().st_mtime_ns < after["resumes"][-1]["at"] * 1e9  # fp16 not restarted


def test_server_without_prompt_logprobs_keeps_the_speed_sweep(tmp_path):
    emu = Plan.model_validate({"name": "e", "backend": "emulator", "model": "llama-3-8b", "variants": [{"name": "x"}]})
    cmd = server_commands(emu)[0]
    srv = launcher.start(cmd, tmp_path / "emu.log")
    try:
        text = tmp_path / "text.jsonl"
        text.write_text(json.dumps({"text": "one two three four"}) + "\n")
        d = _plan_dict(tmp_path, backend="external", served_model_name="x", variants=[{"name": "ext", "url": cmd.url}])
        d["quality"]["likelihood"] = {"file": str(text)}
        plan = Plan.model_validate(d)
        run = new_run_dir(plan)
        Sweep(plan, run).execute()
    finally:
        launcher.stop(srv)
    man = run.read_manifest()
    assert man["status"] == "complete"
    assert [s["status"] for s in man["steps"]] == ["complete"]
    assert pq.read_metadata(run.requests_path("ext", 0)).num_rows == man["steps"][0]["recorded"] > 0
    st = _status(run.path, "ext")
    assert st["status"] == "failed" and st["weights"] == "real"
    assert st["reason"].startswith("likelihood: server returned no prompt logprobs")
    assert st["measurements"]["greedy"]["status"] == "measured"
    assert any(w.startswith("ext: quality not measured: likelihood: server returned no prompt logprobs")
               for w in man["warnings"])


def test_quality_command_new_run_and_into_an_existing_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = _plan_dict(tmp_path)
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(app, ["quality", str(plan_file), "--quiet"])
    assert res.exit_code == 0, res.output
    runs = sorted((tmp_path / "results").iterdir())
    assert len(runs) == 1
    assert _status(runs[0], "awq")["status"] == "not_measured"
    assert json.loads((runs[0] / "manifest.json").read_text())["steps"] == []
    assert f"results: {runs[0]}" in res.output
    assert "awq: quality not measured: emulator: no model weights" in res.output
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["quality"]["variants"]["awq"]["status"] == "not_measured"

    # a speed-only run, then its quality added with --into
    speed = dict(d)
    speed.pop("quality")
    speed_plan = Plan.model_validate(speed)
    run = new_run_dir(speed_plan, str(tmp_path / "speed"))
    Sweep(speed_plan, run).execute()
    steps = run.read_manifest()["steps"]
    res = CliRunner().invoke(app, ["quality", str(plan_file), "--into", str(run.path), "--quiet"])
    assert res.exit_code == 0, res.output
    assert _status(run.path, "fp16")["status"] == "not_measured"
    man = run.read_manifest()
    assert man["steps"] == steps and man["status"] == "complete"
    assert "quality" in yaml.safe_load((run.path / "plan.yaml").read_text())

    # --into refuses a plan that measured something else
    other = dict(d, sweep={**d["sweep"], "requests": 5})
    plan_file.write_text(yaml.safe_dump(other))
    res = CliRunner().invoke(app, ["quality", str(plan_file), "--into", str(run.path), "--quiet"])
    assert res.exit_code == 2
    assert "sweep.requests: 4 -> 5" in res.output


def test_weights_come_from_the_command_and_the_checkpoint_note(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    base = {"name": "w", "backend": "vllm", "model": str(ckpt), "variants": [{"name": "bf16", "preset": "bf16"}],
            "server": {"program": ["python", "-m", "vllm.entrypoints.openai.api_server"]}}
    plan = Plan.model_validate(base)
    assert weights_of(plan, server_commands(plan, api_key=None)[0]) == ("real", None)
    (ckpt / ORIGIN_FILE).write_text(json.dumps({"weights": "dequantized-bf16"}))
    assert weights_of(plan, server_commands(plan, api_key=None)[0]) == ("dequantized-bf16", None)
    for server in ({"load_format": "dummy"}, {"extra_args": ["--load-format=dummy"]}):
        plan = Plan.model_validate({**base, "server": {**base["server"], **server}})
        assert weights_of(plan, server_commands(plan, api_key=None)[0]) == ("dummy", DUMMY_REASON)


def test_dummy_weights_are_not_asked(tmp_path):
    """--load-format dummy: recorded as not measured, and no request is sent (nothing listens on the URL)."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    d = _plan_dict(tmp_path, backend="vllm", model=str(ckpt), variants=[{"name": "bf16", "preset": "bf16"}],
                   server={"program": ["python", "-m", "vllm.entrypoints.openai.api_server"], "load_format": "dummy"})
    plan = Plan.model_validate(d)
    cmd = server_commands(plan, api_key=None)[0]
    rec = measure_variant(plan, cmd, tmp_path / "run")
    assert (rec["status"], rec["reason"], rec["weights"]) == ("not_measured", DUMMY_REASON, "dummy")
    assert "requests" not in rec and rec["measurements"] == {}
    assert sorted(p.name for p in (tmp_path / "run/quality/bf16").iterdir()) == ["quality.json"]
