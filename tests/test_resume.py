"""Interrupt a run after step k with a real signal, resume it, and get what an uninterrupted run gets."""

from __future__ import annotations

import os
import signal

import gevent
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from core.plan import parse_plan
from deploy import launcher
from loadtest.resume import ResumeError, plan_diff, prepare, resume
from loadtest.runner import RunInterrupted, Sweep, new_run_dir
from testdoubles import fault_server

pytestmark = pytest.mark.timeout(120)

LEVELS = [1, 2, 4, 8]
N = 12  # measured requests per step: a count window makes the request counts exact


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    port = launcher.free_port()
    s = launcher.start(fault_server.command(port, events=8, gap_ms=2),
                       tmp_path_factory.mktemp("srv") / "fault.log")
    try:
        yield s
    finally:
        launcher.stop(s)
        assert not s.alive()


def _plan_dict(url: str, out) -> dict:
    return {
        "name": "resume", "backend": "external",
        "variants": [{"name": "a", "url": url}, {"name": "b", "url": url}],
        "scenario": {"prompt_tokens": 8, "output_tokens": 8},
        "sweep": {"concurrency": LEVELS, "warmup_s": 0, "requests": N, "drain_s": 10},
        "scrape": {"interval_s": 0.5},
        "output_dir": str(out),
    }


def _plan(d: dict):
    return parse_plan(yaml.safe_dump(d), "resume.yaml")


def _cmds(plan, port):
    return [launcher.ServerCommand(v.name, [], port=port) for v in plan.variants]


class InterruptAt:
    """Send this process a real signal once step `index` of `variant` is measuring."""

    def __init__(self, variant: str, index: int, sig: int = signal.SIGINT, elsewhere: bool = False):
        self.variant, self.index, self.sig, self.sent = variant, index, sig, False
        self.elsewhere = elsewhere  # deliver it while another greenlet runs, as a real Ctrl-C mostly does

    def __call__(self, p) -> None:  # noqa: ANN001
        if not self.sent and p.variant == self.variant and p.step == self.index + 1 and p.phase == "measure" \
                and p.sent >= 3:
            self.sent = True
            if self.elsewhere:
                gevent.spawn(os.kill, os.getpid(), self.sig)
            else:
                os.kill(os.getpid(), self.sig)


def _interrupted_run(srv, tmp_path, variant="b", index=1, sig=signal.SIGINT, elsewhere=False):
    plan = _plan(_plan_dict(srv.url, tmp_path / "int"))
    run = new_run_dir(plan)
    hook = InterruptAt(variant, index, sig, elsewhere)
    with pytest.raises(RunInterrupted) as ei:
        Sweep(plan, run, commands=_cmds(plan, srv.command.port), on_progress=hook).execute()
    assert hook.sent
    assert ei.value.signal == signal.Signals(sig).name
    return plan, run


def _counts(run) -> dict:
    man = run.read_manifest()
    return {(s["variant"], s["step"]): (s["status"], s["sent"], s["recorded"]) for s in man["steps"]}


@pytest.mark.parametrize("sig,elsewhere", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True),
                                           (signal.SIGTERM, True)],
                         ids=["SIGINT", "SIGTERM", "SIGINT-other-greenlet", "SIGTERM-other-greenlet"])
def test_signal_persists_the_step_in_flight_as_incomplete(srv, tmp_path, sig, elsewhere):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # SIG_IGN under nohup, say
    plan, run = _interrupted_run(srv, tmp_path, "a", 2, sig, elsewhere)
    man = run.read_manifest()
    assert man["status"] == "interrupted"
    assert any(signal.Signals(sig).name in w for w in man["warnings"])
    c = _counts(run)
    assert [c[("a", i)][0] for i in range(3)] == ["complete", "complete", "incomplete"]
    assert ("a", 3) not in c and not any(v == "b" for v, _ in c)
    for (v, i), (_, sent, rec) in c.items():
        assert sent == rec == pq.read_table(run.requests_path(v, i)).num_rows
    assert c[("a", 2)][1] >= 3  # the step in flight kept what it had sent
    assert (run.path / "plan.yaml").exists()
    assert {s: signal.getsignal(s) for s in before} == before  # handlers given back


def test_resume_equals_an_uninterrupted_run(srv, tmp_path):
    # the reference: the same plan, never interrupted
    ref_plan = _plan(_plan_dict(srv.url, tmp_path / "ref"))
    ref = new_run_dir(ref_plan)
    Sweep(ref_plan, ref, commands=_cmds(ref_plan, srv.command.port)).execute()

    plan, run = _interrupted_run(srv, tmp_path, "b", 1)
    before = _counts(run)
    kept_files = {k: run.requests_path(*k).stat().st_mtime_ns for k, v in before.items() if v[0] == "complete"}

    state = prepare(run.path)  # no plan given: the stored one
    assert state.changes == []
    assert state.keep == {("a", i) for i in range(4)} | {("b", 0)}
    assert [(v, s) for v, s, _ in state.redo] == [("b", 1)]
    assert "was incomplete" in state.redo[0][2]
    resume(state, commands=_cmds(plan, srv.command.port))

    man = run.read_manifest()
    assert man["status"] == "complete"
    assert len(man["resumes"]) == 1 and man["resumes"][0]["rerun"] == ["b/1"]
    after, want = _counts(run), _counts(ref)
    assert set(after) == set(want)
    assert all(v[0] == "complete" for v in after.values())
    # the same requests per step as the uninterrupted run: exactly N measured each
    assert {k: v[1:] for k, v in after.items()} == {k: v[1:] for k, v in want.items()}
    assert all(v[1] == N for v in after.values())
    # kept steps untouched; the re-run step's file replaced, with no rows of the interrupted attempt
    for k, mtime in kept_files.items():
        assert run.requests_path(*k).stat().st_mtime_ns == mtime
    df, rdf = run.read_requests(), ref.read_requests()
    assert len(df) == len(rdf) == 8 * N
    assert df.groupby(["variant", "step"]).size().to_dict() == rdf.groupby(["variant", "step"]).size().to_dict()
    assert (df.status == "ok").all()
    # nothing to do the second time
    assert prepare(run.path).done
    # and the analysis sees the same steps and counts (timings aside)
    from analysis import analyze

    analyze(run.path)
    analyze(ref.path)
    cols = ["variant", "step", "concurrency", "status", "sent", "recorded", "requests", "ok", "errors", "cancelled",
            "output_tokens_mean"]
    got = pd.read_parquet(run.path / "steps.parquet")[cols].sort_values(["variant", "step"]).reset_index(drop=True)
    want = pd.read_parquet(ref.path / "steps.parquet")[cols].sort_values(["variant", "step"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)


def test_changed_plan_is_refused_with_the_key_paths_unless_forced(srv, tmp_path):
    plan, run = _interrupted_run(srv, tmp_path, "a", 1)
    d = _plan_dict(srv.url, tmp_path / "elsewhere")  # output_dir may differ
    d["sweep"]["requests"] = 20
    d["variants"][1]["url"] = "http://127.0.0.1:9"
    d["timeouts"] = {"first_token_s": 5}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(d))
    with pytest.raises(ResumeError) as ei:
        prepare(run.path, changed)
    msg = str(ei.value)
    assert "sweep.requests: 12 -> 20" in msg
    assert "variants[1].url: " in msg and "'http://127.0.0.1:9'" in msg
    assert "timeouts.first_token_s: 300.0 -> 5.0" in msg
    assert "output_dir" not in msg and "--force" in msg
    state = prepare(run.path, changed, force=True)
    assert {c.path for c in state.changes} == {"sweep.requests", "variants[1].url", "timeouts.first_token_s"}
    # the same plan, given as a file, is accepted
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump(_plan_dict(srv.url, tmp_path / "x")))
    assert prepare(run.path, same).changes == []


def test_complete_step_whose_file_is_gone_is_measured_again(srv, tmp_path):
    plan, run = _interrupted_run(srv, tmp_path, "a", 2)
    run.requests_path("a", 0).unlink()
    run.requests_path("a", 1).write_bytes(b"not parquet")
    state = prepare(run.path)
    redo = {(v, s): why for v, s, why in state.redo}
    assert "missing" in redo[("a", 0)] and "cannot be read" in redo[("a", 1)] and "incomplete" in redo[("a", 2)]
    resume(state, commands=_cmds(plan, srv.command.port))
    c = _counts(run)
    assert len(c) == 8 and all(v == ("complete", N, N) for v in c.values())


def test_resume_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(ResumeError, match="no such results directory"):
        prepare(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResumeError, match="not a results directory"):
        prepare(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{half")
    with pytest.raises(ResumeError, match="not valid JSON"):
        prepare(tmp_path / "bad")


def test_plan_diff_names_nested_paths():
    a = {"x": {"y": [1, {"z": 2}], "k": 1}, "output_dir": "a"}
    b = {"x": {"y": [1, {"z": 3}], "n": 2}, "output_dir": "b"}
    assert [str(c) for c in plan_diff(a, b)] == ["x.y[1].z: 2 -> 3", "x.k: 1 -> (absent)", "x.n: (absent) -> 2"]
    assert [c.path for c in plan_diff({"l": [1, 2]}, {"l": [1]})] == ["l"]


def test_warnings_of_what_runs_again_become_history(tmp_path):
    from core.results import RunDir
    from loadtest.resume import ResumeState, merge_manifest

    plan = parse_plan("variants: [{name: fp16}, {name: gptq}]\nsweep: {concurrency: [1, 4], duration_s: 1}\n", "p.yaml")
    state = ResumeState(RunDir(tmp_path), plan, "p.yaml", changes=[], total=4)
    state.keep |= {("fp16", 0), ("fp16", 1)}
    state.redo += [("gptq", 0, "was failed"), ("gptq", 1, "was failed")]
    old = {"steps": [], "servers": {}, "warnings": [
        "variant gptq skipped: its server did not start",
        "fp16 step 1: a load-generator process reached 99% of a core; its latencies may include client delay",
        "gptq step 0: a load-generator process reached 99% of a core",
        "fp16: vllm bench serve cross-check incomplete (levels 1): no result file written",
        "run interrupted: SIGINT"]}
    current: dict = {}
    merge_manifest(current, old, state)
    assert current["warnings"] == [old["warnings"][1], old["warnings"][3]]
    assert current["resumes"][-1]["earlier_warnings"] == [old["warnings"][0], old["warnings"][2], old["warnings"][4]]


def test_a_variant_run_again_is_cross_checked_again(tmp_path):
    from loadtest.resume import _still_true

    stale = "gptq: vllm bench serve cross-check incomplete (levels 1): cannot start python3"
    assert not _still_true(stale, {("gptq", 0)})
    assert _still_true(stale, {("fp16", 0)})  # gptq's steps are kept, and so is what was said of its check
