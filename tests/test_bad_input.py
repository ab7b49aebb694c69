"""Every kind of mistake in a plan, a dataset, a tokenizer or the command line, through `ridgeline run`.

Each must end the command with status 2 and a message naming the file, the line or key path and
what was expected, before anything is started or written: the plan's server program would leave a
marker file if it ever ran, and the results directory must not exist afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from core.plan import parse_plan

ROOT = Path(__file__).resolve().parents[1]


def _base(tmp: Path) -> dict:
    """A valid plan whose 'server' leaves a marker file when started (it must never be)."""
    marker = tmp / "server-started"
    prog = tmp / "server.py"
    prog.write_text(f"open({str(marker)!r}, 'w').write('started')\n")
    return {
        "name": "bad", "backend": "vllm", "model": "llama-3-8b",
        "variants": [{"name": "fp16", "model": str(tmp / "ckpt")}],
        "server": {"program": [sys.executable, str(prog)]},
        "scenario": {"prompt_tokens": 16, "output_tokens": 16},
        "sweep": {"concurrency": [1, 2], "duration_s": 1.0},
        "output_dir": str(tmp / "results"),
    }


def _set(d: dict, path: str, value) -> dict:  # noqa: ANN001
    keys = path.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value
    return d


def _sharegpt(tmp: Path, records) -> str:  # noqa: ANN001
    p = tmp / "data.jsonl"
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return str(p)


# Each case: a function (tmp, plan dict) -> (plan text or None for the dict, extra CLI args), and the
# substrings the error must hold.
def _text(t: str):
    return lambda tmp, d: (t, [])


def _edit(path: str, value):  # noqa: ANN001
    def f(tmp, d):  # noqa: ANN001
        _set(d, path, value(tmp) if callable(value) else value)
        return None, []
    return f


def _yaml_with(fragment_after: str, insert: str):
    """The base plan as YAML text with `insert` placed after the first line holding `fragment_after`."""
    def f(tmp, d):  # noqa: ANN001
        lines = yaml.safe_dump(d, sort_keys=False).splitlines()
        i = next(n for n, line in enumerate(lines) if fragment_after in line)
        lines.insert(i + 1, insert)
        return "\n".join(lines) + "\n", []
    return f


CASES = {
    "unknown top-level key": (_yaml_with("name: bad", "sweeep: {concurrency: [1]}"),
                              ["unknown key 'sweeep'", "did you mean 'sweep'", "(line 2)"]),
    "typo three levels deep": (_yaml_with("prompt_tokens: 16", "  output_tokenz: 8"),
                               ["scenario.output_tokenz", "unknown key", "did you mean 'output_tokens'"]),
    "typo inside a list item": (_edit("variants", [{"name": "fp16", "quantisation": "awq"}]),
                                ["variants.0.quantisation", "did you mean 'quantization'"]),
    "wrong type": (_edit("sweep.concurrency", "many"), ["sweep.concurrency", "list"]),
    "wrong type deep": (_edit("scenario.prompt_tokens", {"dist": "uniform", "min": "ten", "max": 20}),
                        ["scenario.prompt_tokens.min", "integer"]),
    "negative sweep": (_edit("sweep.concurrency", [4, -1]), ["sweep.concurrency", "at least 1"]),
    "empty sweep": (_edit("sweep.concurrency", []), ["sweep", "no steps"]),
    "rate sweep without rates": (_edit("sweep.mode", "rate"), ["sweep", "needs 'rates'"]),
    "zero rate": (lambda tmp, d: (_set(d, "sweep.rates", [0.0, 2.0]), _set(d, "sweep.mode", "rate"))
                  and (None, []), ["sweep.rates", "above 0"]),
    "negative timeout": (_edit("timeouts", {"first_token_s": -5}), ["timeouts.first_token_s", "greater than 0"]),
    "bad on_failure": (_edit("server.on_failure", "retry"), ["server.on_failure", "'skip' or 'restart'"]),
    "no variants": (_edit("variants", []), ["variants", "at least one variant"]),
    "run name escapes": (_edit("name", "../x"), ["name", "cannot hold a path"]),
    "variant name escapes": (_edit("variants", [{"name": "a/../../b"}]), ["variants.0.name", "letters, digits"]),
    "baseline unknown": (_edit("baseline", "int4"), ["baseline 'int4' is not one of the variants"]),
    "unknown builtin scenario": (_edit("scenario", {"builtin": "nope"}), ["scenario", "unknown builtin scenario"]),
    "not YAML": (_text("name: x\nvariants: [\n  - {name: a\n"), ["not valid YAML", "line"]),
    "tabs in YAML": (_text("name: x\n\tvariants: []\n"), ["not valid YAML", "(line 2)"]),
    "a list, not a mapping": (_text("- name: x\n"), ["expected a mapping of keys, got list"]),
    "empty plan": (_text(""), ["the plan is empty"]),
    "not UTF-8": (lambda tmp, d: (b"\xff\xfe\x00n\x00a", []), ["cannot be read"]),
    "missing plan file": (lambda tmp, d: ("MISSING", []), ["no such file"]),
    "missing dataset": (_edit("scenario.dataset", lambda tmp: str(tmp / "none.jsonl")),
                        ["dataset", "none.jsonl", "no such file"]),
    "dataset not JSON": (_edit("scenario.dataset", lambda tmp: _sharegpt(tmp, ['{"conversations": []}', "{oops"])),
                         ["dataset", "data.jsonl", "record 2 (line 2)", "not JSON"]),
    "ShareGPT record without turns": (
        _edit("scenario.dataset", lambda tmp: _sharegpt(tmp, [
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
            {"id": "x", "conversations": None}])),
        ["data.jsonl", "record 2 (line 2)", "no 'conversations' list"]),
    "ShareGPT turn of the wrong shape": (
        _edit("scenario.dataset", lambda tmp: _sharegpt(tmp, [{"conversations": ["hi", "hello"]}])),
        ["record 1 (line 1)", "turn 0 must be an object"]),
    "dataset of nothing usable": (
        _edit("scenario.dataset", lambda tmp: _sharegpt(tmp, [{"conversations": [{"from": "human", "value": "hi"}]}])),
        ["data.jsonl", "no usable record"]),
    "tokenizer that is not one": (_edit("scenario.tokenizer", lambda tmp: str(tmp)),
                                  ["scenario.tokenizer", "not a Hugging Face tokenizer directory", "tokenizer.json"]),
    "tokenizer.json that is not one": (
        _edit("scenario.tokenizer", lambda tmp: (tmp.joinpath("tok").mkdir(), tmp.joinpath("tok/tokenizer.json")
                                                 .write_text("{}"), str(tmp / "tok"))[2]),
        ["scenario.tokenizer", "cannot be loaded"]),
    "API key variable not set": (_edit("api_key_env", "RIDGELINE_TEST_UNSET_KEY"),
                                 ["api_key_env", "RIDGELINE_TEST_UNSET_KEY", "not set"]),
    "API key file missing": (_edit("api_key_file", lambda tmp: str(tmp / "no-key")),
                             ["api_key_file", "no-key", "cannot be read"]),
    "unknown option": (lambda tmp, d: (None, ["--concurency", "3"]), ["No such option", "--concurency"]),
    "force without resume": (lambda tmp, d: (None, ["--force"]), ["--force only makes sense with --resume"]),
    "resume a directory that is not a run": (lambda tmp, d: ("NOPLAN", ["--resume", str(tmp)]),
                                             ["not a results directory"]),
    "resume a missing directory": (lambda tmp, d: ("NOPLAN", ["--resume", str(tmp / "gone")]),
                                   ["no such results directory"]),
    "no plan at all": (lambda tmp, d: ("NOPLAN", []), ["give a plan file"]),
}


def _prepare(name: str, tmp: Path) -> list[str]:
    """Write the case's files; the arguments after `ridgeline`."""
    make, _ = CASES[name]
    d = _base(tmp)
    text, args = make(tmp, d)
    plan = tmp / "plan.yaml"
    if text is None:
        plan.write_text(yaml.safe_dump(d, sort_keys=False))
    elif isinstance(text, bytes):
        plan.write_bytes(text)
    elif text not in ("MISSING", "NOPLAN"):
        plan.write_text(text)
    return ["run"] + ([] if text == "NOPLAN" else [str(plan)]) + args


def _check(name: str, tmp: Path, code: int, out: str) -> None:
    assert code == 2, out
    assert "Traceback" not in out
    for want in CASES[name][1]:
        assert want in out, f"{want!r} not in:\n{out}"
    assert not (tmp / "server-started").exists()
    assert not (tmp / "results").exists()


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("RIDGELINE_TEST_UNSET_KEY", raising=False)
    monkeypatch.setenv("COLUMNS", "400")  # one line per message, whatever the terminal


def test_base_plan_is_valid(tmp_path):
    """The base every case edits is itself accepted as written (so each case's error is its own)."""
    plan = parse_plan(yaml.safe_dump(_base(tmp_path)), "base.yaml")
    assert (plan.name, plan.backend, plan.model) == ("bad", "vllm", "llama-3-8b")
    assert [v.name for v in plan.variants] == ["fp16"] and plan.variants[0].model == str(tmp_path / "ckpt")
    assert plan.server.program == [sys.executable, str(tmp_path / "server.py")]
    assert list(plan.sweep.concurrency) == [1, 2] and plan.sweep.duration_s == 1.0


@pytest.mark.parametrize("name", list(CASES))
def test_mistake_fails_before_anything_starts(tmp_path, no_key, name):
    """Every case through the command line's own code (in this process, for speed)."""
    from typer.testing import CliRunner

    from loadtest.cli import app

    args = _prepare(name, tmp_path)
    r = CliRunner().invoke(app, args, catch_exceptions=True)
    out = r.output + (getattr(r, "stderr", "") if r.stderr_bytes is not None else "")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"{type(r.exception).__name__}: {r.exception}\n{out}")
    _check(name, tmp_path, r.exit_code, out)


SUBPROCESS = ["typo three levels deep", "not YAML", "ShareGPT record without turns", "tokenizer that is not one",
              "unknown option", "API key variable not set"]


def test_mistakes_through_the_real_command(tmp_path_factory):
    """A few cases as real `ridgeline run` processes: exit status 2 and the message on the terminal."""
    env = {k: v for k, v in os.environ.items() if k != "RIDGELINE_TEST_UNSET_KEY"}
    env["COLUMNS"] = "400"

    def one(name: str):  # noqa: ANN202
        tmp = tmp_path_factory.mktemp("case")
        args = _prepare(name, tmp)
        r = subprocess.run([sys.executable, "-m", "loadtest.cli"] + args, cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
        return name, tmp, r

    with ThreadPoolExecutor(max_workers=3) as ex:
        for name, tmp, r in ex.map(one, SUBPROCESS):
            _check(name, tmp, r.returncode, r.stdout + r.stderr)
