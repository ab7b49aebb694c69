"""Variants swept side by side: the rule for how many, the shared stream budget, and a real sweep
whose variants' steps overlap in time, then a SIGTERM that stops every variant cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import gevent
import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from loadtest.lanes import PhaseGate, StreamBudget, step_streams, variants_at_once
from core.plan import PlanError, parse_plan

ROOT = Path(__file__).resolve().parents[1]
FOUR = [{"name": v} for v in ("fp16", "awq", "gptq", "fp8kv")]


def _plan(**d):
    return parse_plan(yaml.safe_dump({"variants": FOUR, **d}), "lanes.yaml")


@pytest.mark.parametrize("cpus,expected", [(1, 2), (2, 4), (16, 4)])
def test_auto_sweeps_two_emulated_variants_per_cpu(cpus, expected):
    assert variants_at_once(_plan(sweep={"variants_at_once": "auto"}), cpus=cpus) == expected


def test_auto_is_one_at_a_time_on_real_servers_and_shared_client_pieces():
    auto = {"variants_at_once": "auto"}
    assert variants_at_once(_plan(sweep=auto, backend="vllm", server={"placement": "parallel"}), cpus=16) == 1
    assert variants_at_once(_plan(sweep=auto, workers=2), cpus=16) == 1
    assert variants_at_once(_plan(sweep=auto, scrape={"exporter_port": 0}), cpus=16) == 1
    interleaved = {"crosscheck": {"interleave": True}, "scenario": {"tokenizer": "/models/tok"}}
    assert variants_at_once(_plan(sweep=auto, **interleaved), cpus=16) == 1
    assert variants_at_once(_plan(sweep=auto, crosscheck={}, scenario={"tokenizer": "/t"}), cpus=16) == 4
    assert variants_at_once(_plan(), cpus=16) == 1  # the default: one at a time
    assert variants_at_once(_plan(sweep={"variants_at_once": 3}), cpus=1) == 3  # asked for: as asked
    assert variants_at_once(_plan(sweep={"variants_at_once": 9}), cpus=1) == 4  # never more than the variants


def test_variants_sharing_a_gpu_are_refused_side_by_side():
    with pytest.raises(PlanError, match="placement: parallel"):
        _plan(backend="vllm", sweep={"variants_at_once": 2})
    with pytest.raises(PlanError, match="exporter_port"):
        _plan(sweep={"variants_at_once": 2}, scrape={"exporter_port": 0})
    with pytest.raises(PlanError, match="at least 1"):
        _plan(sweep={"variants_at_once": 0})
    with pytest.raises(PlanError, match="interleave reads each server twice seconds apart; with "
                                        "sweep.variants_at_once 2"):
        _plan(sweep={"variants_at_once": 2}, crosscheck={"interleave": True}, scenario={"tokenizer": "/t"})
    assert variants_at_once(_plan(backend="vllm", server={"placement": "parallel"},
                                  sweep={"variants_at_once": 2})) == 2


def test_step_streams_are_its_concurrency_at_most_the_budget():
    plan = _plan(sweep={"mode": "rate", "rates": [1.0], "max_concurrency": 64})
    assert step_streams(plan, 256, 512) == 256 and step_streams(plan, 1024, 512) == 512
    assert step_streams(plan, None, 512) == 64
    assert step_streams(_plan(sweep={"mode": "rate", "rates": [1.0]}), None, 512) == 512


def test_budget_lets_steps_in_while_they_fit_and_a_big_one_alone():
    budget = StreamBudget(512)
    order: list[str] = []
    release = {name: gevent.event.Event() for name in ("a", "b", "c", "d")}

    def step(name: str, streams: int) -> None:
        held = budget.acquire(streams)
        order.append(f"+{name}")
        release[name].wait()
        order.append(f"-{name}")
        budget.release(held)

    lanes = [gevent.spawn(step, "a", 256), gevent.spawn(step, "b", 256), gevent.spawn(step, "c", 1024)]
    gevent.sleep(0)
    assert order == ["+a", "+b"] and budget.held == 512  # c waits: it needs the whole budget
    release["a"].set()
    gevent.sleep(0)
    assert order == ["+a", "+b", "-a"]  # still waiting for b
    lanes.append(gevent.spawn(step, "d", 1))
    release["b"].set()
    release["c"].set()
    release["d"].set()
    gevent.joinall(lanes, raise_error=True)
    assert order.index("-b") < order.index("+c") and budget.held == 0


def test_gate_opens_windows_together_and_keeps_bookkeeping_out_of_them():
    gate = PhaseGate()
    order: list[str] = []
    go = {name: gevent.event.Event() for name in ("a", "b", "c")}

    def lane(name: str, steps: int, park_first: bool = False) -> None:
        me = gevent.getcurrent()
        for i in range(steps):
            gate.work(me)
            order.append(f"setup {name}{i}")
            gevent.sleep(0)  # the setup yields (a scrape, a write)
            with gate.measure(me):
                order.append(f"open {name}{i}")
                go[name].wait()
                go[name].clear()
            order.append(f"close {name}{i}")
            gate.work(me)
            order.append(f"write {name}{i}")
        gate.park(me)

    lanes = {n: gevent.Greenlet(lane, n, 2) for n in ("a", "b")}
    for g in lanes.values():
        gate.join(g)
        g.start()
    gevent.sleep(0.01)
    assert order[-2:] == ["open a0", "open b0"] or order[-2:] == ["open b0", "open a0"]
    go["a"].set()
    gevent.sleep(0.01)
    assert "write a0" not in order  # b's window is still open
    go["b"].set()
    gevent.sleep(0.01)
    # both wrote their first step, then both opened their second window together
    i_open = [order.index(f"open {n}1") for n in "ab"]
    assert max(order.index(f"write {n}0") for n in "ab") < min(i_open)
    assert max(order.index(f"close {n}0") for n in "ab") < min(order.index(f"write {n}0") for n in "ab")
    go["a"].set()
    go["b"].set()
    gevent.joinall(list(lanes.values()), raise_error=True)
    assert gate.measuring == 0 and not gate.between


def test_gate_does_not_wait_for_a_parked_or_interrupted_lane():
    gate = PhaseGate()
    opened = gevent.event.Event()

    def measuring_lane() -> None:
        me = gevent.getcurrent()
        gate.work(me)
        with gate.measure(me):
            opened.set()

    def stuck_lane() -> None:  # between windows, then interrupted (its server would not start)
        me = gevent.getcurrent()
        try:
            gate.work(me)
            gevent.sleep(60)
        finally:
            gate.park(me)

    a, b = gevent.Greenlet(measuring_lane), gevent.Greenlet(stuck_lane)
    for g in (a, b):
        gate.join(g)
        g.start()
    gevent.sleep(0.01)
    assert not opened.is_set()  # the first windows wait for every lane
    b.kill()
    a.join(timeout=5)
    assert opened.is_set() and gate.measuring == 0 and not gate.between


def test_budget_calls_on_wait_only_when_it_must_wait():
    budget = StreamBudget(4)
    waited: list[int] = []
    assert budget.acquire(3, on_wait=lambda: waited.append(3)) == 3 and waited == []
    g = gevent.spawn(budget.acquire, 2, lambda: waited.append(2))
    gevent.sleep(0)
    assert waited == [2]
    budget.release(3)
    assert g.get(timeout=5) == 2


def _emulator_plan(tmp: Path, concurrency: list[int], duration_s: float) -> Path:
    d = {"name": "lanes", "backend": "emulator", "variants": [{"name": "fp16"}, {"name": "awq"}],
         "scenario": {"prompt_tokens": 64, "output_tokens": 16, "ignore_eos": True},
         "sweep": {"concurrency": concurrency, "warmup_s": 0.2, "duration_s": duration_s, "drain_s": 5,
                   "variants_at_once": 2},
         "scrape": {"interval_s": 0.5}, "output_dir": str(tmp / "results")}
    p = tmp / "plan.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.mark.slow
def test_two_emulated_variants_are_swept_at_the_same_time(tmp_path):
    plan = _emulator_plan(tmp_path, [1, 4], 1.0)
    r = subprocess.run([sys.executable, "-m", "loadtest.cli", "run", str(plan), "--quiet"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = list((tmp_path / "results").iterdir())
    man = json.loads((run / "manifest.json").read_text())
    assert man["variants_at_once"] == 2 and man["status"] == "complete"
    st = {(s["variant"], s["step"]): s for s in man["steps"]}
    assert all(s["status"] == "complete" for s in st.values()) and len(st) == 4
    for i in (0, 1):  # each level's two steps overlap in time
        a, b = st[("fp16", i)], st[("awq", i)]
        assert a["started"] < b["ended"] and b["started"] < a["ended"], (a, b)
    assert all(s["recorded"] > 0 for s in st.values())
    assert (run / "report.html").exists()


def test_sigterm_stops_every_variant_swept_side_by_side(tmp_path):
    plan = _emulator_plan(tmp_path, [1, 2, 4], 2.0)
    proc = subprocess.Popen([sys.executable, "-m", "loadtest.cli", "run", str(plan), "--quiet"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run, pids = None, set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # both variants measuring their second step
            for m in (tmp_path / "results").glob("*/manifest.json"):
                try:
                    man = json.loads(m.read_text())
                except ValueError:
                    continue
                run = m.parent
                pids.update(s["pid"] for s in man.get("servers", {}).values() if s.get("pid"))
                st = {(s["variant"], s["step"]): s["status"] for s in man["steps"]}
                if st.get(("fp16", 1)) == "incomplete" and st.get(("awq", 1)) == "incomplete":
                    break
            else:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.1)
                continue
            break
        else:
            pytest.fail("the run never reached the steps to interrupt")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "interrupted"
    st = {(s["variant"], s["step"]): s for s in man["steps"]}
    for v in ("fp16", "awq"):
        assert st[(v, 0)]["status"] == "complete" and st[(v, 1)]["status"] == "incomplete"
        assert (v, 2) not in st
    for (v, i), s in st.items():  # what each variant had measured is on disk
        assert s["recorded"] == pq.read_table(run / "requests" / v / f"step-{i:03d}.parquet").num_rows
    pids.update(s["pid"] for s in man["servers"].values() if s.get("pid"))
    assert len(pids) == 2
    for pid in pids:
        try:
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass
