"""The sweep: for each variant, bring its server up, run every load level, persist, bring it down.

Every step is written to the results directory as soon as it ends (requests, scraped series,
manifest), so an interrupted run loses at most the step in flight, and that step is marked
incomplete rather than dropped. Servers are stopped on every exit path.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import gevent
import greenlet
from gevent.event import Event
import psutil

from core.hardware.variants import resolve
from core.levels import Level
from core.plan import Plan
from core.records import MEASURE, STEP_COMPLETE, STEP_FAILED, STEP_INCOMPLETE, RequestRecord, StepInfo
from core.results import ResultsError, RunDir, atomic_write_text, safe_child
from core.secrets import read_api_key, redact_obj, scrub_file
from deploy import cpu_split, launcher, verify
from deploy.servers import server_commands
from deploy.start_retry import StartFailed, start_with_retries
from loadtest import crosscheck
from loadtest.distributed import DistributedDriver
from loadtest.driver import Driver, LocalDriver
from loadtest.exporter import ClientExporter, exporter_for
from loadtest.lanes import NoGate, PhaseGate, StreamBudget, step_streams, stream_budget, variants_at_once
from loadtest.manifest import new_manifest
from loadtest.probes import (
    ClientCpuProbe, ExporterProbe, GpuProbe, LivenessProbe, PrefixCacheReset, Probe, ScrapeProbe, StepContext,
    TargetsProbe,
)
from loadtest.quality.measure import measure_variant, quality_done
from loadtest.quality.rows import FAILED as QUALITY_FAILED
from loadtest.telemetry import GpuSampler, Telemetry
from scenarios.openai_stream import Timeouts
from scenarios.workload import build_workload

class RunInterrupted(Exception):
    """The run was stopped by a signal; what was measured is on disk."""


def api_key(plan: Plan) -> Optional[str]:
    """The API key from the environment variable or file the plan names (never from the plan itself)."""
    return read_api_key(plan.api_key_env, plan.api_key_file)


def new_run_dir(plan: Plan, out: Optional[str] = None) -> RunDir:
    """results/<name>-<UTC timestamp>, never outside the output directory."""
    root = Path(out or plan.output_dir)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = safe_child(root, f"{plan.name}-{stamp}")
    n = 1
    while path.exists():
        path = safe_child(root, f"{plan.name}-{stamp}-{n}")
        n += 1
    return RunDir(path).create()


@dataclass
class StepLevel:
    index: int
    load: Level  # the load the step holds (core.levels): closed loop at C, open loop at R req/s, ...
    repeat: int = 0
    level: int = 0  # position in the plan's list of levels

    @property
    def concurrency(self) -> Optional[int]:
        return self.load.concurrency

    @property
    def rate(self) -> Optional[float]:
        return self.load.rate


def step_levels(plan: Plan) -> list[StepLevel]:
    out = []
    i = 0
    for rep in range(plan.sweep.repeats):
        for pos, load in enumerate(plan.sweep.load_levels()):
            out.append(StepLevel(i, load, rep, pos))
            i += 1
    return out


@dataclass
class Progress:
    """What the live display shows; the runner updates it, a renderer reads it."""

    variant: str = ""
    variant_index: int = 0
    variants: int = 0
    step: int = 0
    steps: int = 0
    level: str = ""
    phase: str = ""
    started: float = field(default_factory=time.time)
    sent: int = 0
    done: int = 0
    errors: int = 0
    tokens: int = 0
    in_flight: int = 0
    message: str = ""
    finished: list[dict[str, Any]] = field(default_factory=list)


class Sweep:
    """One run of a plan against live servers."""

    def __init__(self, plan: Plan, run_dir: RunDir, plan_source: Optional[str] = None,
                 on_progress: Optional[Callable[[Progress], None]] = None,
                 commands: Optional[list[launcher.ServerCommand]] = None):
        self.plan = plan
        self.run = run_dir
        self.plan_source = plan_source
        self.on_progress = on_progress or (lambda p: None)
        self.progress = Progress(variants=len(plan.variants), steps=len(step_levels(plan)))
        self.manifest = new_manifest(plan, plan_source, time.time())
        self.levels = step_levels(plan)
        self.key = api_key(plan)
        self.headers = {"Authorization": f"Bearer {self.key}"} if self.key else None
        self.timeouts = Timeouts(plan.timeouts.connect_s, plan.timeouts.first_token_s, plan.timeouts.total_s)
        self._servers: dict[str, launcher.Server] = {}
        self._commands = commands
        self.telemetry = Telemetry(plan, self.manifest)
        self._samplers: dict[str, GpuSampler] = {}
        self._interrupted: Optional[str] = None
        self._secrets = [self.key] if self.key else []
        self._main: Optional[greenlet.greenlet] = None  # the greenlet running execute()
        self._shields: set[greenlet.greenlet] = set()  # persisting or cleaning up: a signal waits until done
        self._lanes: list[gevent.Greenlet] = []  # variants swept side by side (sweep.variants_at_once)
        self._lane_progress: dict[greenlet.greenlet, Progress] = {}
        self._budget: Optional[StreamBudget] = None  # side by side: the streams all steps may hold at once
        self._gate: PhaseGate | NoGate = NoGate()  # side by side: no window open while a lane does bookkeeping
        self._starting = 0  # side by side: lanes still starting their server (steps wait for all of them)
        self._all_started = Event()
        self._all_started.set()
        self.exporter: Optional[ClientExporter] = None

    # ------------------------------------------------------------------ servers
    def commands(self) -> list[launcher.ServerCommand]:
        if self._commands is None:
            self._commands = server_commands(self.plan)
        return self._commands

    def _server_entry(self, cmd: launcher.ServerCommand) -> dict[str, Any]:
        v = resolve(self.plan.variant(cmd.variant))
        entry = {"argv": list(cmd.argv), "env": _mask_env(cmd.env), "url": cmd.url, "variant": v.to_dict(),
                 "log": f"logs/{cmd.variant}.log", "served": None, **cmd.notes}
        if cmd.cpus is not None:
            entry["cpus"] = cmd.cpus.model_dump()
        return entry

    def _start(self, cmd: launcher.ServerCommand) -> Optional[launcher.Server]:
        if not cmd.argv:  # external: nothing to start
            return None
        srv = self.plan.server
        entry = self.manifest["servers"].setdefault(cmd.variant, {})

        def retried(failure: dict[str, Any]) -> None:
            entry.setdefault("failed_starts", []).append(failure)
            self.manifest["warnings"].append(
                f"variant {cmd.variant}: server start {failure['attempt']} failed ({failure['error']}); "
                f"retrying in {srv.start_retry_pause_s:g} s (its log: {failure['log']})")
            self._save_manifest()

        try:
            server, failures = start_with_retries(cmd, self.run.log_path(cmd.variant), srv.start_retries,
                                           srv.start_retry_pause_s, root=self.run.path, sleep=gevent.sleep,
                                           on_retry=retried)
        except StartFailed as exc:
            entry.setdefault("failed_starts", []).append(exc.failures[-1])
            raise
        if failures:
            self.manifest["warnings"].append(
                f"variant {cmd.variant}: server started on try {len(failures) + 1} after {len(failures)} failed "
                f"start(s); their logs: {', '.join(f['log'] for f in failures)}")
        if server.pinned:
            entry["engine_processes_pinned"] = dict(server.pinned)
        self._servers[cmd.variant] = server
        return server

    def _stop(self, variant: str) -> None:
        server = self._servers.pop(variant, None)
        if server is not None:
            launcher.stop(server)
            scrub_file(server.log_path, self._secrets)  # a server may log what it was sent

    def _gpu_sampler(self, cmd: launcher.ServerCommand) -> GpuSampler:
        """The GPU telemetry sampler of a variant's server, opened on its first step."""
        if cmd.variant not in self._samplers:
            self._samplers[cmd.variant] = self.telemetry.sampler(cmd.variant, cmd.url, cmd.argv, cmd.env, self.headers)
        return self._samplers[cmd.variant]

    def _probes(self, cmd: launcher.ServerCommand) -> list[Probe]:
        """What watches each step of this variant, in the order they start and finish."""
        probes: list[Probe] = [PrefixCacheReset()]
        if self.exporter is not None:
            probes.append(ExporterProbe(self.exporter))
        probes += [TargetsProbe(lambda: self.exporter.url if self.exporter is not None else None),
                   ScrapeProbe(self.plan, cmd, self.headers),
                   GpuProbe(self._gpu_sampler(cmd), self.telemetry),
                   ClientCpuProbe(psutil.Process()),  # its own: side by side, none resets another's interval
                   LivenessProbe(self._servers.get(cmd.variant))]
        return probes

    def stop_all(self) -> None:
        for v in list(self._servers):
            self._stop(v)

    def _describe_served(self, cmd: launcher.ServerCommand, server: Optional[launcher.Server]) -> dict[str, Any]:
        """What really ran, from the server's own report; never fatal."""
        try:
            return verify.served_report(self.plan, cmd, server, self.run.path, self.manifest.get("servers", {}))
        except Exception as exc:  # noqa: BLE001 - the run goes on; the report says what is unknown
            return {"verdict": "unverified", "reasons": [f"could not verify: {type(exc).__name__}: {exc}"]}

    # ------------------------------------------------------------------ persistence
    def _save_manifest(self) -> None:
        self.run.write_manifest(redact_obj(self.manifest, self._secrets) if self._secrets else self.manifest)

    def _step_entry(self, info: StepInfo) -> None:
        steps = self.manifest["steps"]
        for i, s in enumerate(steps):
            if s["variant"] == info.variant and s["step"] == info.step:
                steps[i] = info.to_dict()
                break
        else:
            steps.append(info.to_dict())
        self._save_manifest()

    # ------------------------------------------------------------------ the sweep
    def execute(self, skip: Optional[set[tuple[str, int]]] = None) -> RunDir:
        """Run every variant and step not in `skip`; always stop servers and mark the end."""
        skip = skip or set()
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        self._main = greenlet.getcurrent()
        for s in old:
            signal.signal(s, self._on_signal)
        if not (self.run.path / "plan.yaml").exists():
            atomic_write_text(self.run.path / "plan.yaml", self.plan.to_yaml())
        self.manifest["scenario"] = build_workload(self.plan.scenario, "x").describe()
        self._save_manifest()
        status = "complete"
        split = self.plan.server.cpus  # the client's side of the split holds for a server started elsewhere too
        client_cpus = contextlib.ExitStack()
        try:
            pinned = client_cpus.enter_context(cpu_split.client_on(split.frontend if split else None))
            if pinned is not None:
                self.manifest["client_cpus"] = pinned
            cmds = self.commands()
            for cmd in cmds:
                self.manifest["servers"].setdefault(cmd.variant, self._server_entry(cmd))
            self._save_manifest()
            self.exporter = exporter_for(self.plan.scrape.exporter_host, self.plan.scrape.exporter_port)
            if self.exporter is not None:
                self.manifest["exporter"] = self.exporter.url
            work = []
            for vi, cmd in enumerate(cmds):
                todo = [lv for lv in self.levels if (cmd.variant, lv.index) not in skip]
                if todo or self._wants_quality(cmd.variant):
                    work.append((vi, cmd, todo))
            at_once = variants_at_once(self.plan)
            if at_once > 1 and len(work) > 1:
                self.manifest["variants_at_once"] = at_once
                self._side_by_side(work, at_once)
            else:
                for vi, cmd, todo in work:
                    if self._interrupted is not None:  # a signal that came while a server was stopping
                        raise RunInterrupted(self._interrupted)
                    self.progress.variant, self.progress.variant_index = cmd.variant, vi + 1
                    self._run_variant(cmd, todo)
        except (KeyboardInterrupt, RunInterrupted) as exc:
            status = "interrupted"
            self.manifest["warnings"].append(f"run interrupted: {self._interrupted or type(exc).__name__}")
            stopped = RunInterrupted(str(self.run.path))
            stopped.signal = self._interrupted or "SIGINT"
            raise stopped from None
        except BaseException as exc:
            status = "failed"
            self.manifest["warnings"].append(f"run failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            self._shield(True)  # a second Ctrl-C must not leave servers running
            self.stop_all()
            if self.exporter is not None:
                self.exporter.stop()
            self.telemetry.close()
            client_cpus.close()
            for s, h in old.items():
                signal.signal(s, h)
            self._shield(False)
            self._main = None
            self.manifest["status"] = status
            self.manifest["ended"] = time.time()
            try:
                self._save_manifest()
            except ResultsError:
                if status == "complete":
                    raise  # otherwise the error already on its way says what went wrong
        return self.run

    def _shield(self, on: bool) -> None:
        """Mark the current greenlet as persisting or cleaning up (on) or done (off)."""
        (self._shields.add if on else self._shields.discard)(greenlet.getcurrent())

    def _progress_here(self) -> Progress:
        """The progress of the variant the current greenlet sweeps (side by side, each has its own)."""
        return self._lane_progress.get(greenlet.getcurrent(), self.progress)

    def _side_by_side(self, work: list[tuple[int, launcher.ServerCommand, list[StepLevel]]], at_once: int) -> None:
        """Sweep up to `at_once` variants at the same time, each in its own greenlet against its own server.

        A failure or a signal stops the others: each is interrupted where it waits, except while it is
        writing a step or stopping its server, after which it stops by itself (self._interrupted).
        """
        from gevent.pool import Pool

        pool = Pool(at_once)
        # the first lanes start their servers together and sweep only when all are up, so no server's
        # start-up (an import-heavy process) competes with another variant's first, lightest steps
        self._starting = min(at_once, len(work))
        self._all_started.clear()
        self._budget = StreamBudget(stream_budget())
        self._gate = PhaseGate()
        self.manifest["streams_at_once"] = self._budget.limit
        errors: list[BaseException] = []
        try:
            for vi, cmd, todo in work:
                pool.wait_available()
                if self._interrupted is not None:
                    break
                lane = gevent.Greenlet(self._lane, vi, cmd, todo, errors)
                if len(self._lanes) < self._starting:  # the first lanes measure together from their first window
                    self._gate.join(lane)
                self._lanes.append(lane)
                pool.start(lane)
            gevent.joinall(self._lanes)
        except BaseException:  # a signal thrown into this greenlet
            self._stop_lanes()
            gevent.joinall(self._lanes)
            raise
        finally:
            self._lanes = []
            self._gate = NoGate()
        failures = [e for e in errors if not isinstance(e, RunInterrupted)]
        if failures or errors:
            raise (failures or errors)[0]

    def _lane(self, vi: int, cmd: launcher.ServerCommand, todo: list[StepLevel], errors: list[BaseException]) -> None:
        p = Progress(variant=cmd.variant, variant_index=vi + 1, variants=self.progress.variants,
                     steps=self.progress.steps, started=self.progress.started)
        p.finished = self.progress.finished  # one table of finished steps for every variant
        self._lane_progress[greenlet.getcurrent()] = p
        try:
            self._run_variant(cmd, todo)
        except BaseException as exc:  # noqa: BLE001 - handed to the sweep's own greenlet, which raises it
            self._gate.park(greenlet.getcurrent())
            errors.append(exc)
            if not isinstance(exc, RunInterrupted) and self._interrupted is None:
                self._interrupted = f"stopped: {type(exc).__name__} in variant {cmd.variant}"
            self._stop_lanes()
        finally:
            self._gate.park(greenlet.getcurrent())
            self._lane_progress.pop(greenlet.getcurrent(), None)

    def _started_one(self) -> None:
        if self._starting > 0:
            self._starting -= 1
            if self._starting == 0:
                self._all_started.set()

    def _stop_lanes(self) -> None:
        """Interrupt every other lane, from the hub (as a signal is, see _on_signal)."""
        loop = gevent.get_hub().loop
        for lane in self._lanes:
            loop.run_callback(self._throw_into, lane)

    def _throw_into(self, lane: greenlet.greenlet) -> None:
        """Interrupt a lane where it waits; one that is persisting or cleaning up stops by itself after."""
        if not lane.dead and lane not in self._shields and lane is not greenlet.getcurrent():
            lane.throw(RunInterrupted(self._interrupted or "signal"))

    def _on_signal(self, signum, frame) -> None:  # noqa: ANN001
        """SIGINT/SIGTERM: stop the run in the greenlet running it, never while a step is being written.

        Under gevent a handler runs in whichever greenlet was current (a Locust user, the hub), so
        the exception is thrown into the sweep's own greenlet from the hub's loop instead of being
        raised here; while a step is persisted or servers are stopped it waits (see _run_step).
        """
        first = self._interrupted is None
        self._interrupted = signal.Signals(signum).name
        if not first or self._main is None or self._main in self._shields:
            return
        if greenlet.getcurrent() is self._main:
            raise RunInterrupted(self._interrupted)
        gevent.get_hub().loop.run_callback(self._throw_into_main)

    def _throw_into_main(self) -> None:
        main = self._main
        if main is None or main.dead or main in self._shields or greenlet.getcurrent() is main:
            return
        main.throw(RunInterrupted(self._interrupted or "signal"))

    def _run_variant(self, cmd: launcher.ServerCommand, levels: list[StepLevel]) -> None:
        p = self._progress_here()
        p.phase, p.message = "starting server", f"starting {cmd.variant}"
        self.on_progress(p)
        entry = self.manifest["servers"][cmd.variant]
        try:
            try:
                server = self._start(cmd)
            finally:
                self._started_one()
        except launcher.LaunchError as exc:
            entry["error"] = str(exc)
            for lv in levels:
                info = StepInfo(cmd.variant, lv.index, lv.concurrency, lv.rate, STEP_FAILED, time.time(),
                                ended=time.time(), error=f"server did not start: {exc}", repeat=lv.repeat)
                self._step_entry(info)
            self.manifest["warnings"].append(f"variant {cmd.variant} skipped: its server did not start")
            self._save_manifest()
            if self._wants_quality(cmd.variant):
                self._quality(cmd, unavailable=f"server did not start: {str(exc).splitlines()[0]}")
            return
        try:
            if server is not None:
                entry["pid"] = server.pid
                entry["ready_s"] = round(time.time() - server.started, 2)
            entry["served"] = self._describe_served(cmd, server)
            self._save_manifest()
            self._all_started.wait()
            if levels:
                all_ok = self._run_levels(cmd, server, levels)
                server = self._servers.get(cmd.variant, server)
                if all_ok and crosscheck.applies(self.plan, cmd.variant) and (server is None or server.alive()):
                    if self.plan.crosscheck.interleave:  # rounds a resume or a skipped step left to run
                        pending = self._crosscheck_pending(cmd.variant)
                        for rep in sorted({r for _, r in pending}):
                            self._crosscheck(cmd, only={c for c, r in pending if r == rep}, repeat=rep)
                    else:
                        self._crosscheck(cmd)
            if self._wants_quality(cmd.variant):  # while the server is up: never started twice for it
                server = self._servers.get(cmd.variant)
                dead = bool(cmd.argv) and (server is None or not server.alive())
                self._quality(cmd, unavailable=f"server of {cmd.variant} is not running" if dead else None)
        finally:
            self._shield(True)  # a signal waits until the server is stopped
            try:
                self._stop(cmd.variant)
            finally:
                self._shield(False)

    def _run_levels(self, cmd: launcher.ServerCommand, server: Optional[launcher.Server],
                    levels: list[StepLevel]) -> bool:
        """The speed sweep's steps against the live server; False when a step failed."""
        entry = self.manifest["servers"][cmd.variant]
        workload = build_workload(self.plan.scenario, self.plan.served_model_name or cmd.variant,
                                  salt=self._salt(cmd.variant))
        driver = self._make_driver(cmd, workload)
        all_ok = True
        try:
            for lv in levels:
                ok = self._run_step(cmd, driver, lv)
                all_ok = all_ok and ok
                if ok and self._interleaved_here(cmd.variant, lv):
                    self._crosscheck(cmd, only={lv.concurrency}, repeat=lv.repeat)
                if not ok:
                    if self.plan.server.on_failure == "restart" and server is not None:
                        driver.close()
                        self._stop(cmd.variant)
                        try:
                            server = self._start(cmd)
                        except launcher.LaunchError as exc:
                            self.manifest["warnings"].append(f"variant {cmd.variant}: restart failed: {exc}")
                            for x in [x for x in levels if x.index > lv.index]:
                                self._step_entry(StepInfo(cmd.variant, x.index, x.concurrency, x.rate,
                                                          STEP_FAILED, time.time(), ended=time.time(),
                                                          repeat=x.repeat,
                                                          error=f"skipped: the server did not restart: {exc}"))
                            break
                        entry["pid"] = server.pid
                        entry.setdefault("restarts", []).append(time.time())
                        self.manifest["warnings"].append(
                            f"variant {cmd.variant}: server restarted after it died in step {lv.index}")
                        driver = self._make_driver(cmd, workload)
                        continue
                    rest = [x for x in levels if x.index > lv.index]
                    for x in rest:
                        self._step_entry(StepInfo(cmd.variant, x.index, x.concurrency, x.rate, STEP_FAILED,
                                                  time.time(), ended=time.time(), repeat=x.repeat,
                                                  error="skipped: the server died in an earlier step"))
                    break
        finally:
            self._gate.park(greenlet.getcurrent())  # other lanes' windows no longer wait for this one
            driver.close()
        return all_ok

    def _wants_quality(self, variant: str) -> bool:
        q = self.plan.quality
        return q is not None and q.measures(variant) and not quality_done(self.run.path, variant)

    def _quality(self, cmd: launcher.ServerCommand, unavailable: Optional[str] = None) -> None:
        """The plan's quality section against the variant's live server; a failure is recorded, never fatal."""
        p = self._progress_here()
        p.phase, p.message = "quality", f"quality of {cmd.variant}"
        self.on_progress(p)
        record = measure_variant(self.plan, cmd, self.run.path, self.headers, unavailable=unavailable)
        self.manifest.setdefault("quality", {})[cmd.variant] = {"status": record["status"], "reason": record["reason"]}
        if record["status"] == QUALITY_FAILED:
            self.manifest["warnings"].append(f"{cmd.variant}: quality not measured: {record['reason']}")
        self._save_manifest()
        if self._interrupted is not None:
            raise RunInterrupted(self._interrupted)

    def _interleaved_here(self, variant: str, lv: StepLevel) -> bool:
        """crosscheck.interleave: the bench's level at this step's concurrency runs right after it, once per
        repeat (a round of its own: new prompts, its own file), so each repeat pairs with a bench reading
        taken seconds later."""
        cc = self.plan.crosscheck
        return (cc is not None and cc.interleave and crosscheck.applies(self.plan, variant) and lv.rate is None
                and (lv.concurrency, lv.repeat) in self._crosscheck_pending(variant))

    def _crosscheck_pending(self, variant: str) -> set[tuple[int, int]]:
        """(concurrency, round) of the interleaved cross-check not run yet for the variant: a round per repeat
        at the sweep's own concurrencies, one at any other."""
        done = self.manifest.get("crosscheck", {}).get(variant)
        ran = {(lv["concurrency"], int(lv.get("repeat") or 0)) for lv in done["levels"]} if done else set()
        swept = {lv.concurrency for lv in step_levels(self.plan) if lv.rate is None}
        rounds = self.plan.sweep.repeats
        return {(c, r) for c in self.plan.crosscheck.concurrency  # type: ignore[union-attr]
                for r in range(rounds if c in swept else 1)} - ran

    def _crosscheck(self, cmd: launcher.ServerCommand, only: Optional[set[int]] = None, repeat: int = 0) -> None:
        """vllm bench serve against the same live server; its failure is recorded, never fatal."""
        if only is not None and not only:
            return
        p = self._progress_here()
        p.phase, p.message = "cross-check", f"vllm bench serve against {cmd.variant}"
        self.on_progress(p)
        entry = crosscheck.run_crosscheck(self.plan, self.run, cmd.variant, cmd.url,
                                          self.plan.served_model_name or cmd.variant, self.key, only=only,
                                          repeat=repeat)
        entries = self.manifest.setdefault("crosscheck", {})
        entries[cmd.variant] = crosscheck.merge_entries(entries.get(cmd.variant) if only is not None else None,
                                                        entry)
        if entry.get("retried"):
            self.manifest["warnings"].append(
                f"{cmd.variant}: vllm bench serve started again after its process ended early: "
                f"{str(entry['retried'][0]).splitlines()[0]}")
        failed = [lv for lv in entry["levels"] if lv["status"] != "ok"]
        if entry.get("error") or failed:
            why = entry.get("error") or next((lv["error"] for lv in failed if lv.get("error")), None) or "see its log"
            levels = f" (levels {', '.join(str(lv['concurrency']) for lv in failed)})" if failed else ""
            self.manifest["warnings"].append(
                f"{cmd.variant}: vllm bench serve cross-check incomplete{levels}: {str(why).splitlines()[0]}")
        self._save_manifest()

    def _salt(self, variant: str) -> str:
        """What makes this run's prompts to a variant's server its own (scenarios/unique.py)."""
        return f"{self.run.path.name}/{variant}/{len(self.manifest.get('resumes') or [])}"

    def _make_driver(self, cmd: launcher.ServerCommand, workload) -> Driver:  # noqa: ANN001
        sw = self.plan.sweep
        if self.plan.workers > 0:
            return DistributedDriver(self.plan, cmd.url, self.timeouts, self.headers, self.plan.workers,
                                     model=self.plan.served_model_name or cmd.variant, salt=self._salt(cmd.variant))
        return LocalDriver(cmd.url, workload, self.timeouts, self.headers, arrival=sw.arrival,
                           burstiness=sw.burstiness, max_concurrency=sw.max_concurrency, seed=self.plan.scenario.seed)

    def _run_step(self, cmd: launcher.ServerCommand, driver: Driver, lv: StepLevel) -> bool:
        """One load level; returns False when the server died during it."""
        if self._interrupted is not None:  # a signal that came while another step was being written
            raise RunInterrupted(self._interrupted)
        if self._budget is None:
            return self._one_step(cmd, driver, lv)
        me = greenlet.getcurrent()
        held = self._budget.acquire(step_streams(self.plan, lv.concurrency, self._budget.limit),
                                    on_wait=lambda: self._gate.park(me))
        try:
            return self._one_step(cmd, driver, lv)
        finally:
            self._budget.release(held)

    def _one_step(self, cmd: launcher.ServerCommand, driver: Driver, lv: StepLevel) -> bool:
        sw = self.plan.sweep
        p = self._progress_here()
        gate, me = self._gate, greenlet.getcurrent()
        step = StepContext(self.plan, self.run, cmd, lv.index, lv.concurrency, lv.rate, driver, self.headers,
                           self.manifest["warnings"])
        probes = self._probes(cmd)
        info = StepInfo(cmd.variant, lv.index, lv.concurrency, lv.rate, STEP_INCOMPLETE, time.time(), repeat=lv.repeat)
        step.info, step.t_start = info, info.started
        gate.work(me)
        for probe in probes:  # opening a source and its first reading stay out of the step's clock
            probe.open(step)
        self._step_entry(info)
        died: Optional[str] = None
        records: list[RequestRecord] = []
        started = stopped = False
        window_start: Optional[float] = None
        window_end: Optional[float] = None
        try:
            with gate.measure(me):
                try:
                    t_start = time.time()  # the step starts when its turn comes
                    info.started = step.t_start = t_start
                    window_start = t_start + sw.warmup_at(lv.level)
                    window_end = None if sw.requests_at(lv.level) is not None else window_start + sw.duration_at(lv.level)
                    p.step, p.level = lv.index + 1, lv.load.label()
                    p.sent = p.done = p.errors = p.tokens = 0
                    driver.start_step(cmd.variant, lv.index, lv.concurrency, lv.rate, window_start, window_end,
                                      sw.requests_at(lv.level), sw.ramp_s)
                    started = True
                    for probe in probes:
                        probe.start(step)
                    died = self._measure(step, driver, probes, p, lv, window_start, window_end)
                finally:
                    # the step's last scrape and the cut-off of its requests belong to its window
                    self._shield(True)  # a signal now waits until the step is on disk
                    stopped = True
                    records = self._stop_step(step, driver, probes, started)
                    end = time.time()
        finally:
            self._shield(True)
            if not stopped:
                records = self._stop_step(step, driver, probes, started)
                end = time.time()
            gate.work(me)  # the step is written while no other window is open
            step.end = info.ended = end
            info.sent, info.recorded = driver.sent(), len(records)
            info.window_start = window_start if window_start is not None else info.started
            if sw.requests_at(lv.level) is not None:
                ends = [r.send_time + (r.e2e_s or 0.0) for r in records if r.phase == MEASURE]
                info.window_end = max(ends) if ends else end
            else:
                info.window_end = min(window_end, end) if window_end else end
            self.run.write_requests(cmd.variant, lv.index, records)
            for probe in probes:
                probe.finish(step)
            if died:
                info.status, info.error = STEP_FAILED, died
            elif self._interrupted is None:
                info.status = STEP_COMPLETE
            self._step_entry(info)
            p.finished.append(_step_brief(info, records))
            self.on_progress(p)
            self._shield(False)
        if self._interrupted is not None:
            raise RunInterrupted(self._interrupted)
        return died is None

    @staticmethod
    def _stop_step(step: StepContext, driver: Driver, probes: list[Probe], started: bool) -> list[RequestRecord]:
        """The step's closing readings and its records (requests still running are cut off)."""
        for probe in probes:
            probe.stop(step)
        return driver.finish_step() if started else []

    def _measure(self, step: StepContext, driver: Driver, probes: list[Probe], p: Progress, lv: StepLevel,
                 window_start: float, window_end: Optional[float]) -> Optional[str]:
        """Hold the step until its window and drain are over; returns why the server died, if it did."""
        sw = self.plan.sweep
        drain_deadline: Optional[float] = None
        while True:
            now = time.time()
            died = next((why for why in (probe.poll(step, now) for probe in probes) if why), None)
            if died:
                return died
            p.phase = "warm-up" if now < window_start else ("measure" if driver.accepting() else "drain")
            p.sent, p.in_flight = driver.sent(), driver.in_flight()
            self.on_progress(p)
            if driver.accepting() and window_end is not None and now >= window_end:
                driver.stop_accepting()
            if not driver.accepting():
                if drain_deadline is None:
                    drain_deadline = now + sw.drain_at(lv.level)
                if driver.in_flight() == 0 or now >= drain_deadline:
                    return None
            gevent.sleep(0.05)


def _step_brief(info: StepInfo, records: list[RequestRecord]) -> dict[str, Any]:
    w0, w1 = info.window_start or 0.0, info.window_end or 0.0
    toks = 0
    for r in records:
        if r.ttft_s is None:
            continue
        t = r.send_time + r.ttft_s
        if w0 <= t <= w1:
            toks += 1
        for g in r.itl_s:
            t += g
            if w0 <= t <= w1:
                toks += 1
    span = max(w1 - w0, 1e-9)
    errors = sum(1 for r in records if r.status == "error")
    return {"variant": info.variant, "step": info.step, "concurrency": info.concurrency, "rate": info.rate,
            "tok_s": toks / span, "requests": len(records), "errors": errors, "status": info.status}


def _mask_env(env: dict[str, str]) -> dict[str, str]:
    secret = ("KEY", "TOKEN", "SECRET", "PASSWORD")
    return {k: ("***" if any(s in k.upper() for s in secret) else v) for k, v in env.items()}
