"""The engine core on a real clock: one asyncio task that schedules a step, sleeps for its modelled
duration, then hands every new token to its stream.

The task never burns CPU waiting: it sleeps until the step's end on the loop's monotonic clock. Each
step starts where the previous one ended (not when the task woke up), so wake-up lateness and the
time spent writing events do not accumulate; if the process falls far behind (more than
`max_lag_s`), the clock is allowed to slip rather than replay a burst of late steps.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from deploy.emulator.engine import EngineCore, FrontendQueue, Request, StepOutput
from deploy.emulator.metrics import EmulatorMetrics

log = logging.getLogger("deploy.emulator")


@dataclass
class DriftStats:
    """How closely real step ends followed the modelled ones (for the benchmark and the docs)."""

    steps: int = 0
    late_sum_s: float = 0.0
    late_max_s: float = 0.0
    modelled_s: float = 0.0
    slips: int = 0
    late_samples: list[float] = field(default_factory=list)

    def add(self, late: float, modelled: float) -> None:
        self.steps += 1
        self.late_sum_s += late
        self.late_max_s = max(self.late_max_s, late)
        self.modelled_s += modelled
        if len(self.late_samples) < 100_000:
            self.late_samples.append(late)


class AsyncEngine:
    """Drives an EngineCore in real time and streams its tokens."""

    def __init__(self, core: EngineCore, metrics: EmulatorMetrics, max_lag_s: float = 0.05):
        self.core = core
        self.metrics = metrics
        cal = core.perf.cal
        self.frontend = FrontendQueue(cal.frontend_req_s, cal.frontend_token_s, cal.frontend_s)
        self.max_lag_s = max_lag_s
        self.drift = DriftStats()
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._pending: deque[tuple[float, StepOutput]] = deque()  # steps' tokens waiting for the API server

    # --- lifecycle
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="emulator-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._fail_all("the server is shutting down")

    def _fail_all(self, message: str) -> None:
        """End every request still in the engine with an error (it will never be served)."""
        for req in list(self.core.running) + list(self.core.waiting):
            self.core.abort(req)
            if req.sink is not None:
                req.sink.fail(message)

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # --- requests
    def submit(self, req: Request) -> None:
        """Accept a request now; it reaches the engine after its modelled API-server turn."""
        t = self.now()
        req.http_time = t
        at = self.frontend.admit_time(t)
        self._loop.call_at(at, self._admit, req)

    def _admit(self, req: Request) -> None:
        if req.aborted:
            return
        req.arrival_time = self.now()
        self.core.add_request(req)
        self._wake.set()

    def abort(self, req: Request) -> None:
        """The client went away: drop the request wherever it is."""
        if req.status == "finished":
            return
        was_in_engine = req in self.core.running or req in self.core.waiting
        self.core.abort(req)
        req.aborted = True
        if was_in_engine:
            self.metrics.on_finished([req], self.now())
            self._publish_state()
        self._wake.set()

    def _publish_state(self) -> None:
        c = self.core
        self.metrics.set_state(c.num_running, c.num_waiting, c.kv_usage())

    # --- the loop
    async def _run(self) -> None:
        while True:
            try:
                await self._loop_steps()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - an engine bug must not hang every client
                log.exception("engine step failed; failing the requests in flight")
                self._fail_all("internal error in the emulated engine")

    async def _loop_steps(self) -> None:
        core = self.core
        prev_end: Optional[float] = None
        while True:
            if not core.has_work():
                self._publish_state()
                self._wake.clear()
                await self._wake.wait()
                prev_end = None
                continue
            pre_preempt, pre_q, pre_h = core.num_preemptions, core.prefix_queries_total, core.prefix_hits_total
            step = core.schedule()
            if step is None:  # nothing fits yet; wait for a finish or an abort to free blocks
                self._publish_state()
                self._wake.clear()
                await self._wake.wait()
                prev_end = None
                continue
            now = self.now()
            if prev_end is None:
                t_start = now
            else:
                t_start = max(prev_end, now - self.max_lag_s)
                if t_start > prev_end:
                    self.drift.slips += 1
                    self.metrics.slips.inc()
            core.mark_scheduled(step, t_start)
            self._publish_state()
            dur = step.timing.time_s
            t_end = t_start + dur
            delay = t_end - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            late = max(self.now() - t_end, 0.0)
            self.drift.add(late, dur)
            self.metrics.lateness.observe(late)
            out = core.complete(step, t_end)
            self.metrics.on_step(step, out, t_start, t_end, core.num_preemptions - pre_preempt,
                                 core.prefix_queries_total - pre_q, core.prefix_hits_total - pre_h)
            self._publish_state()
            self._deliver(out, self.frontend.deliver_time(t_end, len(out.tokens)))
            prev_end = t_end

    def _deliver(self, out: StepOutput, t: float) -> None:
        """Queue a step's tokens for their delivery time; deliveries go out in step order, always."""
        self._pending.append((t, out))
        if len(self._pending) == 1:
            self._drain()

    def _drain(self) -> None:
        pending = self._pending
        while pending and pending[0][0] - self.now() <= 5e-4:
            t, out = pending.popleft()
            self._emit(out, t)
        if pending:
            self._loop.call_at(pending[0][0], self._drain)

    def _emit(self, out: StepOutput, t: float) -> None:
        """Hand each new token to its stream (the hot path: one bisect and one write per token)."""
        m = self.metrics
        ttft, itl = m.ttft.observe, m.itl.observe
        # a request ends with the step that finished it, not with whichever delivery runs after the engine
        # (ahead of a busy API server) has finished it: reading its status now would cut its stream short
        done = {id(r) for r in out.finished} if out.finished else ()
        for req in out.tokens:
            sink = req.sink
            if sink is None:
                continue
            last = sink._last_t
            if last is None:
                ttft(max(t - req.http_time, 0.0))
            else:
                itl(t - last)
            sink._last_t = t
            sink.emit(req.finish_reason if id(req) in done else None)
        if out.finished:
            m.on_finished(out.finished, t)
