"""Load from several processes (or hosts): a Locust master in this process, Locust workers beside it.

The sweep drives a `DistributedDriver` exactly as it drives the in-process one. Closed-loop users
are spread over the workers by Locust's own master; everything Locust does not know about travels
in Locust custom messages:

    master -> worker   rl_setup   the scenario, server URL, timeouts, seed and the worker's index
    master -> worker   rl_step    the step: level, measured window (open loop: this worker's share
                                  of the rate and its phase)
    master -> worker   rl_stop    stop sending new requests
    master -> worker   rl_finish  cancel what is in flight and send every record left
    worker -> master   rl_ready   set up (or the error that stopped it)
    worker -> master   rl_status  sent, measured, in flight, accepting, CPU (every 0.1 s in a step)
    worker -> master   rl_records a batch of records (every 0.25 s, and at the finish)
    worker -> master   rl_flushed the step's last word: how many it sent and how many records it sent

A step ends only when every worker has flushed, and the master checks that the records it got
from each worker are as many as that worker sent.

Local workers are started here as `python -m loadtest.distributed worker ...` and stopped on every
exit path; each also watches this process and exits if it disappears. For workers on other hosts,
set RIDGELINE_MASTER_BIND=0.0.0.0:5557 and RIDGELINE_REMOTE_WORKERS=1 on the master, and run
`python -m loadtest.distributed worker --master-host MASTER --master-port 5557` on each worker host
(see docs/scenarios.md).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import gevent
import psutil
from locust.env import Environment

from core.errors import RidgelineError
from core.levels import from_fields
from core.net import free_port
from core.plan import ScenarioSpec
from core.records import DRAIN, MEASURE, REQUEST_SCHEMA, RequestRecord
from loadtest.driver import LocalDriver
from scenarios.openai_stream import Timeouts, served_model
from scenarios.users import StreamingUser
from scenarios.workload import build_workload

logging.getLogger("locust.runners").setLevel(logging.ERROR)
logging.getLogger("locust.rpc").setLevel(logging.ERROR)

MSG_SETUP, MSG_STEP, MSG_STOP, MSG_FINISH = "rl_setup", "rl_step", "rl_stop", "rl_finish"
MSG_READY, MSG_STATUS, MSG_RECORDS, MSG_FLUSHED = "rl_ready", "rl_status", "rl_records", "rl_flushed"
FIELDS = REQUEST_SCHEMA.names
BATCH = 500  # records per message
STATUS_EVERY_S = 0.1
FLUSH_EVERY_S = 0.25


class DistributedError(RidgelineError, RuntimeError):
    """Workers that did not start, set up or report; the message carries their log tail."""


class RidgelineUser(StreamingUser):
    """The user class of every worker; its workload and server arrive with rl_setup."""

    abstract = False
    host = "http://127.0.0.1"


def _record_row(r: RequestRecord) -> list[Any]:
    return [getattr(r, f) for f in FIELDS]


def _row_record(row: list[Any]) -> RequestRecord:
    return RequestRecord(**dict(zip(FIELDS, row)))


def _split(total: Optional[int], n: int) -> list[Optional[int]]:
    if total is None:
        return [None] * n
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


# ---------------------------------------------------------------------- master side

class DistributedDriver:
    """The Driver protocol over a Locust master and `workers` worker processes."""

    def __init__(self, plan, url: str, timeouts: Timeouts, headers: Optional[dict[str, str]] = None,  # noqa: ANN001
                 workers: int = 2, model: Optional[str] = None, bind: Optional[str] = None, salt: Optional[str] = None,
                 remote: Optional[bool] = None, connect_timeout_s: float = 60.0):
        if workers < 1:
            raise ValueError("a distributed driver needs at least one worker")
        self.plan = plan
        self.url = url
        self.timeouts = timeouts
        self.headers = headers
        self.n = workers
        self.model = model or plan.served_model_name or served_model(url, headers) or plan.model
        self.salt = salt  # names the run and variant: each worker's prompts are new to the server
        bind = bind or os.environ.get("RIDGELINE_MASTER_BIND", "127.0.0.1:0")
        host, _, port = bind.rpartition(":")
        self.bind_host = host or "127.0.0.1"
        self.port = int(port) if port and port != "0" else free_port(self.bind_host)
        self.remote = remote if remote is not None else os.environ.get("RIDGELINE_REMOTE_WORKERS") == "1"
        self.connect_timeout_s = connect_timeout_s
        self.procs: list[subprocess.Popen] = []
        self.logdir = Path(tempfile.mkdtemp(prefix="ridgeline-workers-"))
        self._closed = False
        self._step = -1
        self._accepting = False
        self._measure_target: Optional[int] = None
        self._records: list[RequestRecord] = []
        self._status: dict[str, dict[str, Any]] = {}
        self._flushed: dict[str, dict[str, Any]] = {}
        self._got: dict[str, int] = {}
        self._ready: dict[str, dict[str, Any]] = {}
        self._cpu_max = 0.0
        self.problems: list[str] = []

        self.env = Environment(user_classes=[RidgelineUser])
        self.runner = self.env.create_master_runner(self.bind_host, self.port)
        for kind, fn in ((MSG_READY, self._on_ready), (MSG_STATUS, self._on_status),
                         (MSG_RECORDS, self._on_records), (MSG_FLUSHED, self._on_flushed)):
            self.runner.register_message(kind, fn)
        atexit.register(self._kill_workers)
        try:
            if not self.remote:
                self._spawn_workers()
            self._wait_workers()
            self._setup()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ workers
    def _spawn_workers(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        for i in range(self.n):
            log = open(self.logdir / f"worker-{i}.log", "wb")  # noqa: SIM115 - closed with the process
            argv = [sys.executable, "-m", "loadtest.distributed", "worker", "--master-host",
                    "127.0.0.1" if self.bind_host in ("0.0.0.0", "") else self.bind_host,
                    "--master-port", str(self.port), "--parent-pid", str(os.getpid())]
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root))
            log.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _log_tails(self, lines: int = 15) -> str:
        out = []
        for f in sorted(self.logdir.glob("worker-*.log")):
            text = f.read_text(errors="replace").strip().splitlines()[-lines:]
            if text:
                out.append(f"--- {f.name}\n" + "\n".join(text))
        return "\n".join(out)

    def _wait_workers(self) -> None:
        deadline = time.time() + self.connect_timeout_s
        while len(self.runner.clients.ready) < self.n:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise DistributedError(f"{len(dead)} of {self.n} worker processes exited before connecting "
                                       f"(status {dead[0].returncode}):\n{self._log_tails()}")
            if time.time() > deadline:
                raise DistributedError(
                    f"only {len(self.runner.clients.ready)} of {self.n} workers connected to the master on "
                    f"{self.bind_host}:{self.port} within {self.connect_timeout_s:g} s\n{self._log_tails()}")
            gevent.sleep(0.05)

    def _setup(self) -> None:
        sw = self.plan.sweep
        ids = sorted(c.id for c in self.runner.clients.ready)[: self.n]
        self.worker_ids = ids
        t = self.timeouts
        for i, cid in enumerate(ids):
            self.runner.send_message(MSG_SETUP, {
                "url": self.url, "model": self.model, "scenario": self.plan.scenario.model_dump(mode="json"),
                "timeouts": [t.connect_s, t.first_token_s, t.total_s], "headers": self.headers,
                "arrival": sw.arrival, "burstiness": sw.burstiness,
                "max_concurrency": (max(1, sw.max_concurrency // self.n) if sw.max_concurrency else None),
                "seed": self.plan.scenario.seed, "index": i, "workers": self.n, "salt": self.salt,
            }, client_id=cid)
        deadline = time.time() + self.connect_timeout_s
        while len(self._ready) < self.n:
            if time.time() > deadline:
                raise DistributedError(f"workers did not finish setting up within {self.connect_timeout_s:g} s\n"
                                       f"{self._log_tails()}")
            gevent.sleep(0.02)
        bad = [f"{cid}: {d['error']}" for cid, d in self._ready.items() if not d.get("ok")]
        if bad:
            raise DistributedError("worker setup failed:\n  " + "\n  ".join(bad))

    # ------------------------------------------------------------------ messages in
    def _on_ready(self, environment, msg) -> None:  # noqa: ANN001
        self._ready[msg.node_id] = msg.data

    def _on_status(self, environment, msg) -> None:  # noqa: ANN001
        d = msg.data
        if d.get("step") != self._step:
            return
        self._status[msg.node_id] = d
        self._cpu_max = max(self._cpu_max, float(d.get("cpu") or 0.0))
        if self._accepting and self._measure_target is not None:
            if sum(s.get("measured", 0) for s in self._status.values()) >= self._measure_target:
                self.stop_accepting()

    def _on_records(self, environment, msg) -> None:  # noqa: ANN001
        d = msg.data
        if d.get("step") != self._step:
            return
        rows = d.get("records") or []
        self._records.extend(_row_record(r) for r in rows)
        self._got[msg.node_id] = self._got.get(msg.node_id, 0) + len(rows)

    def _on_flushed(self, environment, msg) -> None:  # noqa: ANN001
        if msg.data.get("step") == self._step:
            self._flushed[msg.node_id] = msg.data

    # ------------------------------------------------------------------ the Driver protocol
    def start_step(self, variant: str, step: int, concurrency: Optional[int], rate: Optional[float],
                   window_start: float, window_end: Optional[float], measure_requests: Optional[int],
                   ramp_s: float) -> None:
        self._wait_ready_again()
        self._step = step
        self._records, self._status, self._flushed, self._got = [], {}, {}, {}
        self._cpu_max = 0.0
        self._measure_target = measure_requests
        self._accepting = True
        start = time.time()
        for i, cid in enumerate(self.worker_ids):
            share = rate / self.n if rate is not None else None
            self.runner.send_message(MSG_STEP, {
                "variant": variant, "step": step, "concurrency": concurrency, "rate": rate, "share": share,
                # constant arrivals interleave: worker i starts i/rate after worker 0
                "phase": (i / rate) if rate else 0.0,
                "window_start": window_start, "window_end": window_end, "start": start,
                # closed loop: worker i's users take ramp slots i, i + n, ... (StepControl.set_ramp)
                "ramp_s": ramp_s, "ramp_first": i, "ramp_stride": self.n,
            }, client_id=cid)
        from_fields(concurrency, rate).drive(self, ramp_s)

    def hold_users(self, users: int, ramp_s: float) -> None:  # noqa: ARG002 - each worker ramps its own users
        """Closed loop: the master spreads `users` over the workers (Locust's own distribution)."""
        self.runner.start(users, spawn_rate=max(users * 1000.0, 1000.0))

    def send_at_rate(self, rate: float) -> None:
        """Open loop: nothing to do here; each worker sends its share on the schedule it was sent."""

    def _wait_ready_again(self, timeout_s: float = 15.0) -> None:
        """After a stop, Locust workers report ready again; a new spawn before that would be lost."""
        deadline = time.time() + timeout_s
        while len(self.runner.clients.ready) < self.n:
            self._check_alive()
            if time.time() > deadline:
                raise DistributedError(f"only {len(self.runner.clients.ready)} of {self.n} workers are ready")
            gevent.sleep(0.02)

    def _check_alive(self) -> None:
        dead = [p for p in self.procs if p.poll() is not None]
        if dead:
            raise DistributedError(f"worker process {dead[0].pid} exited with status {dead[0].returncode}:\n"
                                   f"{self._log_tails()}")

    def stop_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            self.runner.send_message(MSG_STOP, {"step": self._step})

    def accepting(self) -> bool:
        return self._accepting

    def in_flight(self) -> int:
        return sum(int(s.get("in_flight", 0)) for s in self._status.values())

    def sent(self) -> int:
        src = self._flushed if len(self._flushed) == self.n else self._status
        return sum(int(s.get("sent", 0)) for s in src.values())

    def worker_cpu_max(self) -> float:
        """The busiest worker's CPU (percent of one core) in this step, for the saturation warning."""
        return self._cpu_max

    def finish_step(self, timeout_s: float = 30.0) -> list[RequestRecord]:
        """Stop every worker's load, wait for every record, and hand them back (in-flight ones cancelled)."""
        self.stop_accepting()
        if self.runner.state not in ("ready", "stopped", "stopping"):
            for cid in self.worker_ids:  # stop users now; the master's own stop waits in 1 s ticks
                from locust.rpc import Message

                self.runner.server.send_to_client(Message("stop", None, cid))
            self.runner.stop(send_stop_to_client=False)
        self.runner.send_message(MSG_FINISH, {"step": self._step})
        deadline = time.time() + timeout_s
        while len(self._flushed) < self.n:
            if time.time() > deadline or any(p.poll() is not None for p in self.procs):
                missing = [c for c in self.worker_ids if c not in self._flushed]
                self.problems.append(f"step {self._step}: no final flush from {len(missing)} worker(s)")
                break
            gevent.sleep(0.02)
        for cid, f in self._flushed.items():
            if f.get("recorded") != self._got.get(cid, 0):
                self.problems.append(f"step {self._step}: worker {cid} sent {f.get('recorded')} records, "
                                     f"{self._got.get(cid, 0)} arrived")
        records = self._records
        if self._measure_target is not None:
            _close_count_window(records, self._measure_target)
        self._records = []
        return records

    def close(self) -> None:
        """Quit the workers (a message, then a signal, then a kill) and the master; never leaves one behind."""
        if self._closed:
            return
        self._closed = True
        try:
            try:
                self.runner.quit()
            except Exception:  # noqa: BLE001 - the processes are stopped below whatever happened here
                pass
        finally:
            self._kill_workers()
            atexit.unregister(self._kill_workers)

    def _kill_workers(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def _close_count_window(records: list[RequestRecord], target: int) -> None:
    """Workers stop within a status interval of the N-th measured send; later sends are drain."""
    meas = sorted((r for r in records if r.phase == MEASURE), key=lambda r: r.send_time)
    for r in meas[target:]:
        r.phase = DRAIN


# ---------------------------------------------------------------------- worker side

class Worker:
    """One worker process: applies the master's steps to a local driver and streams records back."""

    def __init__(self, master_host: str, master_port: int, parent_pid: Optional[int] = None):
        self.env = Environment(user_classes=[RidgelineUser])
        self.runner = self.env.create_worker_runner(master_host, master_port)
        self.parent_pid = parent_pid
        self.driver = None
        self.step = -1
        self.active = False
        self.recorded = 0
        self.proc = psutil.Process()
        for kind, fn in ((MSG_SETUP, self.on_setup), (MSG_STEP, self.on_step), (MSG_STOP, self.on_stop),
                         (MSG_FINISH, self.on_finish)):
            self.runner.register_message(kind, fn)

    def send(self, kind: str, data: dict[str, Any]) -> None:
        self.runner.send_message(kind, data)

    def on_setup(self, environment, msg) -> None:  # noqa: ANN001

        d = msg.data
        try:
            spec = ScenarioSpec.model_validate(d["scenario"])
            index = int(d["index"])
            workload = build_workload(spec, d["model"], seed=spec.seed + 7919 * index, salt=d.get("salt"))
            timeouts = Timeouts(*d["timeouts"])
            self.driver = LocalDriver(d["url"], workload, timeouts, d.get("headers"), arrival=d["arrival"],
                                      burstiness=d["burstiness"], max_concurrency=d.get("max_concurrency"),
                                      seed=spec.seed + 104729 * (index + 1))
            # the users Locust's master spawns here share the driver's step control and workload
            RidgelineUser.host = d["url"]
            RidgelineUser.workload = workload
            RidgelineUser.timeouts = timeouts
            RidgelineUser.control = self.driver.control
            RidgelineUser.api_headers = d.get("headers")
            self.send(MSG_READY, {"ok": True, "worker": self.driver.control.worker})
        except Exception as exc:  # noqa: BLE001 - the master reports it and stops the run
            self.send(MSG_READY, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})

    def on_step(self, environment, msg) -> None:  # noqa: ANN001
        d = msg.data
        drv = self.driver
        ctl = drv.control
        self.step, self.recorded = d["step"], 0
        ctl.begin(d["variant"], d["step"], d["concurrency"], d["rate"])
        ctl.window_start, ctl.window_end = d["window_start"], d["window_end"]
        if d["concurrency"] is not None:
            ctl.set_ramp(d["start"], float(d.get("ramp_s") or 0.0), int(d["concurrency"]),
                         int(d.get("ramp_first") or 0), int(d.get("ramp_stride") or 1))
        self.proc.cpu_percent(None)
        self.active = True
        if d["concurrency"] is None:
            drv.open_loop_phase = float(d.get("phase") or 0.0)
            drv._start_open_loop(float(d["share"]), start_wall=d.get("start"))  # noqa: SLF001

    def on_stop(self, environment, msg) -> None:  # noqa: ANN001
        if self.driver is not None:
            self.driver.stop_accepting()

    def on_finish(self, environment, msg) -> None:  # noqa: ANN001
        step = msg.data["step"]
        if self.driver is None:
            return
        self.active = False
        rest = self.driver.finish_step()
        self._ship(rest, step)
        ctl = self.driver.control
        self.send(MSG_FLUSHED, {"step": step, "sent": ctl.sent, "recorded": self.recorded})

    def _ship(self, records: list[RequestRecord], step: int) -> None:
        for i in range(0, len(records), BATCH):
            batch = records[i:i + BATCH]
            self.recorded += len(batch)
            self.send(MSG_RECORDS, {"step": step, "records": [_record_row(r) for r in batch]})

    def reporter(self) -> None:
        """Status every STATUS_EVERY_S and records every FLUSH_EVERY_S while a step runs."""
        last_flush = time.time()
        while True:
            gevent.sleep(STATUS_EVERY_S)
            if not self.active or self.driver is None:
                continue
            ctl = self.driver.control
            self.send(MSG_STATUS, {"step": self.step, "sent": ctl.sent, "measured": ctl.measured_sent,
                                   "in_flight": ctl.in_flight, "accepting": ctl.accepting,
                                   "cpu": self.proc.cpu_percent(None)})
            if time.time() - last_flush >= FLUSH_EVERY_S:
                last_flush = time.time()
                if self.active:
                    self._ship(ctl.take(), self.step)

    def watch_parent(self) -> None:
        """Exit when the process that started this worker is gone, so no worker outlives its master."""
        while True:
            gevent.sleep(0.5)
            if self.parent_pid and not psutil.pid_exists(self.parent_pid):
                os._exit(3)

    def run(self) -> None:
        gevent.spawn(self.reporter)
        if self.parent_pid:
            gevent.spawn(self.watch_parent)
        self.runner.greenlet.join()


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtest.distributed",
                                 description="A ridgeline load worker: connects to a sweep's Locust master.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="run one worker process")
    w.add_argument("--master-host", default="127.0.0.1")
    w.add_argument("--master-port", type=int, default=5557)
    w.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    a = ap.parse_args(argv)
    Worker(a.master_host, a.master_port, a.parent_pid).run()


if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()
    main()
