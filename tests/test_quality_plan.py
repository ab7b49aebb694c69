"""The plan's quality section: eval files are read and checked when the plan loads, before any server starts.

Each bad file must fail naming the file, the line and the reason, inside a PlanError that also names
the plan's key and line; `ridgeline run` and `ridgeline quality` refuse it without making a results
directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loadtest.cli import app
from core.plan import Plan, PlanError, load_plan, parse_plan
from core.plan_quality import EvalFileError, read_eval_file

PLAN = """\
name: q
backend: emulator
variants: [{{name: fp16}}, {{name: awq}}]
quality:
  {block}:
    file: {file}
"""


def _plan(block: str, file: Path) -> str:
    return PLAN.format(block=block, file=file)


def _problem(text: str) -> str:
    with pytest.raises(PlanError) as info:
        parse_plan(text, "plan.yaml")
    assert len(info.value.problems) == 1, info.value.problems
    path, line, why = info.value.problems[0]
    return f"{path}|{line}|{why}"


def test_good_files_give_records_with_line_number_ids(tmp_path):
    f = tmp_path / "text.jsonl"
    f.write_text('{"text": "one"}\n\n{"id": "b", "text": "two"}\n{"id": 7, "text": "three"}\n')
    plan = parse_plan(_plan("likelihood", f))
    recs = plan.quality.likelihood.records()
    assert [(r.id, r.line, r["text"]) for r in recs] == [("1", 1, "one"), ("b", 3, "two"), ("7", 4, "three")]
    assert plan.quality.baseline == "fp16"  # the speed baseline by default


@pytest.mark.parametrize("block,content,line,reason", [
    ("likelihood", '{"text": "a"}\n{"text": "b"\n', 2, "not valid JSON"),
    ("likelihood", '{"text": "a"}\n["text"]\n', 2, "expected a JSON object with text, got list"),
    ("greedy", '{"prompt": "a"}\n{"text": "b"}\n', 2, "missing key 'prompt'"),
    ("task", '{"prompt": "a", "reference": 4}\n', 1, "'reference' must be a string, got int"),
    ("task", '{"prompt": "a", "reference": "x"}\n{"prompt": "  ", "reference": "x"}\n', 2, "'prompt' is empty"),
    ("greedy", '{"id": "a", "prompt": "x"}\n\n{"id": "a", "prompt": "y"}\n', 3, "id 'a' repeats (first on line 1)"),
    ("greedy", '{"id": null, "prompt": "x"}\n', 1, "'id' must be a non-empty string or an integer"),
])
def test_malformed_record_names_file_line_and_reason(tmp_path, block, content, line, reason):
    f = tmp_path / "evals.jsonl"
    f.write_text(content)
    got = _problem(_plan(block, f))
    assert got.startswith(f"quality.{block}.file|6|eval file {f}, line {line}: "), got
    assert reason in got


def test_not_utf8_names_the_line(tmp_path):
    f = tmp_path / "text.jsonl"
    f.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    assert f"eval file {f}, line 2: not UTF-8 text" in _problem(_plan("likelihood", f))


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file(tmp_path, content):
    f = tmp_path / "text.jsonl"
    f.write_text(content)
    assert _problem(_plan("likelihood", f)) == (f"quality.likelihood.file|6|eval file {f}: holds no records "
                                                f"(empty file)")


def test_missing_file_and_directory(tmp_path):
    assert _problem(_plan("greedy", tmp_path / "nope.jsonl")).endswith(f"eval file {tmp_path / 'nope.jsonl'}: "
                                                                       f"no such file")
    assert _problem(_plan("greedy", tmp_path)).endswith("not a regular file")


def test_reader_error_carries_its_parts(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "a"}\n7\n')
    with pytest.raises(EvalFileError) as info:
        read_eval_file(str(f), ("prompt",))
    assert (info.value.path, info.value.line) == (str(f), 2)


def test_section_names_checked(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "x"}) + "\n")
    text = f"name: q\nvariants: [{{name: fp16}}, {{name: awq}}]\nquality:\n  baseline: int8\n  greedy: {{file: {f}}}\n"
    assert "quality.baseline names int8, not among the variants (fp16, awq)" in _problem(text)
    assert "quality has no measurement" in _problem("variants: [{name: a}]\nquality: {confidence: 0.9}\n")
    t = tmp_path / "t.jsonl"
    t.write_text(json.dumps({"prompt": "x", "reference": "y"}) + "\n")
    assert "unknown key 'scorr' (did you mean 'scorer'?)" in _problem(
        f"variants: [{{name: a}}]\nquality:\n  task: {{file: {t}, scorr: x}}\n")


def test_cli_refuses_before_any_directory_or_server(tmp_path, monkeypatch):
    bad = tmp_path / "task.jsonl"
    bad.write_text('{"prompt": "2+2", "reference": "4"}\n{"prompt": "3+3"}\n')
    plan = tmp_path / "plan.yaml"
    plan.write_text(_plan("task", bad) + f"output_dir: {tmp_path / 'results'}\n")
    monkeypatch.chdir(tmp_path)
    for args in (["run", str(plan)], ["quality", str(plan)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, res.output
        assert f"eval file {bad}, line 2: missing key 'reference'" in " ".join(res.output.split())
    assert not (tmp_path / "results").exists()
    with pytest.raises(PlanError):
        load_plan(plan)


def test_schema_alone_does_not_need_the_eval_files(tmp_path):
    """A results directory's plan is re-validated by the analysis, maybe on another machine: the files
    are read when a plan is loaded to be run, not by the schema."""
    gone = tmp_path / "moved-away.jsonl"
    plan = Plan.model_validate({"variants": [{"name": "a"}], "quality": {"greedy": {"file": str(gone)}}})
    assert plan.quality.eval_file_problems() == [("quality.greedy.file", f"eval file {gone}: no such file")]
