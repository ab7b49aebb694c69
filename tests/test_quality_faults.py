"""Quality measurement against servers that misbehave in ways real vLLM cannot be made to (a test double).

What must hold: rows are exactly what the server said (logprobs checked against the double's own
formula), a server without prompt logprobs gives status "failed" with that reason while the other
collectors' rows are written, malformed answers and dead servers are named, transient 500s are
retried, and none of it raises into the run.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from deploy import launcher
from deploy.launcher import ServerCommand
from core.plan import Plan
from core.plan_quality import LmEvalSpec
from loadtest.quality.base import Context
from loadtest.quality.client import QualityClient
from loadtest.quality.lm_eval import harness_argv
from loadtest.quality.measure import measure_variant, quality_done, read_status
from loadtest.resume import prepare, resume
from loadtest.runner import Sweep, new_run_dir
from tests.support.quality_fault_server import expected_logprob, word_ids
from tests.support.vllm_plan import serving

REPO = Path(__file__).resolve().parents[1]
DOCS = ["alpha beta gamma delta", "one two three four five six seven eight nine ten"]


@pytest.fixture
def fault_server(tmp_path):
    """A factory of test-double servers, each stopped (its whole process group) when the test ends."""
    with contextlib.ExitStack() as stack:
        def start(fault: str, after: int = 3) -> launcher.Server:
            port = launcher.free_port()
            argv = [sys.executable, "-m", "tests.support.quality_fault_server", "--port", str(port), "--fault", fault,
                    "--after", str(after)]
            cmd = ServerCommand("fault", argv, port=port, startup_timeout_s=60, cwd=str(REPO))
            return stack.enter_context(serving(cmd, tmp_path / f"fault-{port}.log"))

        yield start


def _evals(tmp_path: Path) -> dict[str, Path]:
    files = {"text": tmp_path / "text.jsonl", "prompts": tmp_path / "prompts.jsonl", "task": tmp_path / "task.jsonl"}
    files["text"].write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(DOCS)))
    files["prompts"].write_text(json.dumps({"prompt": "hello there"}) + "\n" + json.dumps({"prompt": "a b c"}) + "\n")
    files["task"].write_text(json.dumps({"prompt": "2 + 2", "reference": "4"}) + "\n")
    return files


def _measure(srv: launcher.Server, tmp_path: Path, retries: int = 2, **likelihood) -> dict:
    f = _evals(tmp_path)
    plan = Plan.model_validate({
        "name": "q", "backend": "external", "served_model_name": "m", "variants": [{"name": "v", "url": srv.url}],
        "quality": {"retries": retries, "timeout_s": 10,
                    "likelihood": {"file": str(f["text"]), "top_k": 3, **likelihood},
                    "greedy": {"file": str(f["prompts"]), "max_tokens": 4},
                    "task": {"file": str(f["task"]), "max_tokens": 2}}})
    cmd = ServerCommand("v", [], base_url=srv.url)
    return measure_variant(plan, cmd, tmp_path / "run")


def _likelihood(tmp_path: Path):
    return pq.read_table(tmp_path / "run/quality/v/likelihood.parquet").to_pandas()


def test_rows_hold_what_the_server_said(fault_server, tmp_path):
    rec = _measure(fault_server("none"), tmp_path, max_tokens=6)
    assert rec["status"] == "measured" and rec["reason"] is None and rec["token_ids"] is True
    assert rec["measurements"]["likelihood"]["protocol"]["tokenize"] is True
    df = _likelihood(tmp_path)
    for i, text in enumerate(DOCS):
        ids = word_ids(text)[:6]  # cut at max_tokens by the server's own tokenization
        got = df[df.doc_id == f"d{i}"].sort_values("position")
        assert list(got.position) == list(range(1, len(ids)))
        assert list(got.token) == [f"token_id:{t}" for t in ids[1:]]
        assert list(got.logprob) == pytest.approx([expected_logprob(a, b) for a, b in zip(ids, ids[1:])])
        assert all(len(t) == 3 and list(v) == sorted(v, reverse=True) for t, v in zip(got.top_tokens, got.top_logprobs))
    greedy = pq.read_table(tmp_path / "run/quality/v/greedy.parquet").to_pandas()
    assert list(greedy.prompt_id) == ["1", "2"] and all(len(t) == 4 for t in greedy.tokens)
    task = pq.read_table(tmp_path / "run/quality/v/task.parquet").to_pandas()
    assert list(task.reference) == ["4"] and task.output[0].startswith("w")
    assert quality_done(tmp_path / "run", "v")


def test_no_prompt_logprobs_fails_likelihood_and_keeps_the_rest(fault_server, tmp_path):
    rec = _measure(fault_server("no-logprobs"), tmp_path)
    assert rec["status"] == "failed"
    assert rec["reason"].startswith("likelihood: server returned no prompt logprobs")
    assert rec["measurements"]["greedy"]["status"] == "measured"
    assert rec["measurements"]["task"]["status"] == "measured"
    out = tmp_path / "run/quality/v"
    assert (out / "greedy.parquet").exists() and (out / "task.parquet").exists()
    assert not (out / "likelihood.parquet").exists()
    assert read_status(tmp_path / "run", "v")["status"] == "failed"
    assert not quality_done(tmp_path / "run", "v")  # a resumed run asks again


def test_prompt_logprobs_field_when_echo_has_none(fault_server, tmp_path):
    rec = _measure(fault_server("prompt-logprobs-only"), tmp_path)
    assert rec["status"] == "measured", rec["reason"]
    assert rec["measurements"]["likelihood"]["protocol"]["logprobs_from"] == "prompt_logprobs"
    df = _likelihood(tmp_path)
    ids = word_ids(DOCS[1])
    got = df[df.doc_id == "d1"].sort_values("position")
    assert list(got.logprob) == pytest.approx([expected_logprob(a, b) for a, b in zip(ids, ids[1:])])
    # the actual token (rank 50 in the double) is kept as `logprob`, the top-k lists only the k best
    assert all(len(t) == 3 for t in got.top_tokens)


def test_malformed_json_is_named(fault_server, tmp_path):
    rec = _measure(fault_server("bad-json"), tmp_path)
    assert rec["status"] == "failed"
    assert "/v1/completions: the answer is not JSON" in rec["reason"]


def test_transient_500s_are_retried(fault_server, tmp_path):
    rec = _measure(fault_server("flaky"), tmp_path, retries=2)
    assert rec["status"] == "measured", rec["reason"]
    assert rec["retries"] >= 2


def test_persistent_500s_give_up_with_the_last_answer(fault_server, tmp_path):
    rec = _measure(fault_server("always-500"), tmp_path, retries=1)
    assert rec["status"] == "failed"
    assert "no usable answer after 2 attempts; last: HTTP 500: internal error" in rec["reason"]


def test_server_dying_midway_is_a_failure_not_a_crash(fault_server, tmp_path):
    rec = _measure(fault_server("die-after", after=1), tmp_path, retries=1)
    assert rec["status"] == "failed"
    assert "no usable answer after 2 attempts" in rec["reason"]
    assert (tmp_path / "run/quality/v/quality.json").exists()


def test_lm_eval_harness_argv_points_at_the_variants_server(tmp_path):
    """The harness's command line (the harness itself is not installed here: its run is not tested)."""
    task = tmp_path / "mytask.yaml"
    task.write_text("task: my_facts\ndataset_path: json\n")
    spec = LmEvalSpec(tasks=["hellaswag", str(task)], limit=10, program=["lm_eval"])
    client = QualityClient("http://127.0.0.1:9/", concurrency=3, retries=2)
    argv = harness_argv(Context(client, "m", "http://127.0.0.1:9/", spec, "v"), tmp_path / "out")
    assert argv[:3] == ["lm_eval", "--model", "local-completions"]
    args = dict(kv.split("=", 1) for kv in argv[argv.index("--model_args") + 1].split(","))
    assert args["base_url"] == "http://127.0.0.1:9/v1/completions" and args["model"] == "m"
    assert args["num_concurrent"] == "3" and args["max_retries"] == "2"
    assert argv[argv.index("--tasks") + 1] == "hellaswag,my_facts"
    assert argv[argv.index("--include_path") + 1] == str(tmp_path)
    assert argv[argv.index("--limit") + 1] == "10"


def test_lm_eval_missing_harness_is_a_clear_failure(fault_server, tmp_path):
    srv = fault_server("none")
    plan = Plan.model_validate({"name": "q", "backend": "external", "variants": [{"name": "v", "url": srv.url}],
                                "quality": {"lm_eval": {"tasks": ["x"], "program": ["no-such-lm-eval-program"]}}})
    rec = measure_variant(plan, ServerCommand("v", [], base_url=srv.url), tmp_path / "run")
    assert rec["status"] == "failed"
    assert rec["reason"].startswith("lm_eval: lm-eval harness not found ('no-such-lm-eval-program')")


def test_resume_asks_again_where_quality_failed(fault_server, tmp_path):
    """Each prompt fails twice before it is answered: the run's quality fails (one retry), the resumed
    run measures it and keeps the speed steps; the failure's warning goes with it."""
    srv = fault_server("flaky")
    f = _evals(tmp_path)
    plan = Plan.model_validate({
        "name": "q", "backend": "external", "variants": [{"name": "v", "url": srv.url}],
        "scenario": {"prompt_tokens": 4, "output_tokens": 2},
        "sweep": {"concurrency": [1], "warmup_s": 0, "requests": 2, "drain_s": 5},
        "output_dir": str(tmp_path / "results"),
        "quality": {"retries": 1, "greedy": {"file": str(f["prompts"]), "max_tokens": 2}}})
    run = new_run_dir(plan)
    Sweep(plan, run).execute()
    assert read_status(run.path, "v")["status"] == "failed"
    assert any(w.startswith("v: quality not measured: greedy:") for w in run.read_manifest()["warnings"])
    steps = run.read_manifest()["steps"]
    state = prepare(run.path)
    assert state.quality == ["v"] and not state.done and len(state.keep) == 1
    resume(state)
    assert read_status(run.path, "v")["status"] == "measured"
    man = run.read_manifest()
    assert man["steps"] == steps
    assert not any("quality not measured" in w for w in man["warnings"])
