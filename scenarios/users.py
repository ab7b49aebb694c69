"""Locust users that send a workload to an OpenAI-compatible server and keep a record per request.

`StreamingUser` is closed loop: each user sends its next request when its last one ends, which is
what `--max-concurrency` means in `vllm bench serve`. The step it runs in (variant, load level,
measured window, whether new requests are accepted) lives in a `StepControl` shared by all users
of the process, so the sweep can move the window without touching the users.
"""

from __future__ import annotations

import gc
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import gevent
from locust import User, constant, task

from core.records import CANCELLED, DRAIN, ERROR, MEASURE, OK, WARMUP, RequestRecord
from scenarios.openai_stream import E_CANCELLED, StreamResult, Timeouts, make_client, stream_request
from scenarios.workload import RequestSpec, Workload

# one wall-clock anchor per process: send times are wall-clock, durations are monotonic
_WALL0 = time.time()
_PERF0 = time.perf_counter()


def quiet_gc() -> None:
    """Keep the garbage collector from pausing the clock mid-step.

    A full collection walks every object the process holds (Locust, numpy, pydantic: hundreds of
    thousands) and stops every stream for tens of milliseconds, which shows up as late tokens.
    Freezing what exists at a step's start leaves the collector only the step's own objects.
    RIDGELINE_GC_FREEZE=0 turns it off (to measure the difference).
    """
    if os.environ.get("RIDGELINE_GC_FREEZE", "1") == "0":
        return
    gc.collect()
    gc.freeze()


def wall(perf: float) -> float:
    """Epoch seconds of a perf_counter reading, so records align with the scraped series."""
    return _WALL0 + (perf - _PERF0)


@dataclass
class StepControl:
    """The step every user of this process is in; the sweep moves it, users read it."""

    variant: str = ""
    step: int = -1
    concurrency: Optional[int] = None
    rate: Optional[float] = None
    accepting: bool = False
    window_start: Optional[float] = None  # epoch seconds
    window_end: Optional[float] = None
    measure_requests: Optional[int] = None  # window by count: stop accepting after this many
    measured_sent: int = 0
    sent: int = 0
    in_flight: int = 0
    records: list[RequestRecord] = field(default_factory=list)
    worker: str = field(default_factory=lambda: f"{os.uname().nodename}:{os.getpid()}")
    on_record: Optional[Callable[[RequestRecord], None]] = None
    keep_records: bool = True  # plain Locust runs keep only Locust's own statistics
    # the ramp: user k of this process starts at ramp_start + (ramp_first + k * ramp_stride) * ramp_spacing
    ramp_start: Optional[float] = None  # epoch seconds; None: users start as they spawn
    ramp_spacing: float = 0.0
    ramp_first: int = 0
    ramp_stride: int = 1
    _ids: "itertools.count[int]" = field(default_factory=itertools.count)
    _ramp_slots: "itertools.count[int]" = field(default_factory=itertools.count)

    def begin(self, variant: str, step: int, concurrency: Optional[int], rate: Optional[float]) -> None:
        self.variant, self.step, self.concurrency, self.rate = variant, step, concurrency, rate
        self.window_start = self.window_end = None
        self.measure_requests = None
        self.measured_sent = self.sent = 0
        self.records = []
        self.ramp_start = None
        quiet_gc()
        self.accepting = True

    def set_ramp(self, start: float, ramp_s: float, users: int, first: int = 0, stride: int = 1) -> None:
        """Spread the step's user starts evenly over ramp_s from `start` (epoch seconds).

        Locust spawns users in batches of floor(spawn rate) once a second, so a ramp shorter than
        a second per user started them all together, and streams started together tick together.
        Here each user takes the next slot; a process that holds every `stride`-th user of the step
        from slot `first` (a worker) interleaves with the others.
        """
        if ramp_s <= 0 or users <= 0:
            self.ramp_start = None
            return
        self.ramp_start, self.ramp_spacing = start, ramp_s / users
        self.ramp_first, self.ramp_stride = first, max(stride, 1)
        self._ramp_slots = itertools.count()

    def ramp_delay(self, now: float) -> float:
        """Seconds the next user to start waits before its first request (takes its slot)."""
        if self.ramp_start is None:
            return 0.0
        slot = self.ramp_first + next(self._ramp_slots) * self.ramp_stride
        return max(self.ramp_start + slot * self.ramp_spacing - now, 0.0)

    def phase_at(self, t: float) -> str:
        if self.window_start is None or t < self.window_start:
            return WARMUP
        if self.window_end is not None and t >= self.window_end:
            return DRAIN
        return MEASURE

    def take(self) -> list[RequestRecord]:
        out, self.records = self.records, []
        return out


CONTROL = StepControl()


def send_one(client, req: RequestSpec, timeouts: Timeouts, ctl: StepControl,
             headers: Optional[dict[str, str]] = None, scheduled: Optional[float] = None,
             events=None) -> RequestRecord:
    """Send one request, time it, and leave exactly one record, whatever happens (even a kill)."""
    rid = f"{ctl.worker}-{ctl.step}-{next(ctl._ids)}"
    if req.session is not None:  # multi-turn: the conversation and the turn travel in the id
        rid += f"/{req.session}/t{req.turn}"
    variant, step, conc, rate = ctl.variant, ctl.step, ctl.concurrency, ctl.rate
    res = StreamResult()
    t0 = time.perf_counter()
    send_wall = wall(t0)
    phase = ctl.phase_at(send_wall)
    ctl.sent += 1
    if phase == MEASURE:
        ctl.measured_sent += 1
        if ctl.measure_requests is not None and ctl.measured_sent >= ctl.measure_requests:
            ctl.accepting = False
    ctl.in_flight += 1
    cancelled = False
    try:
        stream_request(client, req.path, req.body, timeouts, headers=headers, t_send=t0, result=res,
                       collect_text=req.keep_text)
    except gevent.GreenletExit:
        cancelled = True
        if res.error_kind is None:
            res.error_kind, res.error = E_CANCELLED, f"cancelled after {res.token_events} token events"
        if res.e2e_s is None:
            res.e2e_s = time.perf_counter() - t0
        raise
    finally:
        ctl.in_flight -= 1
        status = OK if res.ok else (CANCELLED if cancelled or res.error_kind == E_CANCELLED else ERROR)
        rec = RequestRecord(
            variant=variant, step=step, concurrency=conc, rate=rate, request_id=rid, phase=phase,
            send_time=send_wall, scheduled_time=scheduled, ttft_s=res.ttft_s, itl_s=res.itl_s,
            e2e_s=res.e2e_s, prompt_tokens=res.prompt_tokens if res.prompt_tokens is not None else req.prompt_tokens,
            output_tokens=res.output_tokens, token_events=res.token_events, status=status,
            error_kind=res.error_kind, error=res.error, http_status=res.http_status, worker=ctl.worker,
        )
        if ctl.step == step and ctl.keep_records:
            ctl.records.append(rec)
            if ctl.on_record is not None:
                ctl.on_record(rec)
        if events is not None:
            _fire_locust(events, rec, variant, conc, rate)
        if req.on_done is not None:
            req.on_done(res.ok, "".join(res.text) if res.text else None, res.output_tokens)
    return rec


def _fire_locust(events, rec: RequestRecord, variant: str, conc: Optional[int], rate: Optional[float]) -> None:
    """Show the request in Locust's own statistics and web UI: end to end and time to first token.

    A request cut off because the run stopped is no failure of the server: Locust never sees it.
    """
    if rec.status == CANCELLED:
        return
    level = f" c={conc}" if conc is not None else (f" rate={rate:g}" if rate is not None else "")
    exc = None if rec.status == OK else RuntimeError(f"{rec.error_kind}: {rec.error}")
    events.request.fire(
        request_type="POST", name=f"{variant}{level} e2e", response_time=(rec.e2e_s or 0.0) * 1000,
        response_length=rec.output_tokens or 0, exception=exc, context={},
    )
    if rec.ttft_s is not None:
        events.request.fire(
            request_type="TTFT", name=f"{variant}{level}", response_time=rec.ttft_s * 1000,
            response_length=0, exception=None, context={},
        )


class StreamingUser(User):
    """Closed-loop user: the next request goes out as soon as the last one has ended."""

    abstract = True
    wait_time = constant(0)
    workload: Workload
    timeouts: Timeouts = Timeouts()
    control: StepControl = CONTROL
    api_headers: Optional[dict[str, str]] = None
    fire_locust_events: bool = True

    def on_start(self) -> None:
        self.http = make_client(self.host, self.timeouts)
        # a multi-turn workload hands each user its own conversation; others are their own session
        self.conversation = self.workload.session() if hasattr(self.workload, "session") else self.workload
        delay = self.control.ramp_delay(time.time())
        if delay > 0:
            gevent.sleep(delay)

    def on_stop(self) -> None:
        try:
            self.http.close()
        except Exception:  # noqa: BLE001
            pass

    @task
    def send(self) -> None:
        ctl = self.control
        if not ctl.accepting:
            gevent.sleep(0.02)
            return
        req = self.conversation.next_request()
        send_one(self.http, req, self.timeouts, ctl, headers=self.api_headers,
                 events=self.environment.events if self.fire_locust_events else None)


def user_class(name: str, host: str, workload: Workload, timeouts: Timeouts,
               control: StepControl = CONTROL, headers: Optional[dict[str, str]] = None) -> type[StreamingUser]:
    """A concrete user class bound to one server and workload."""
    return type(name, (StreamingUser,), {
        "abstract": False, "host": host, "workload": workload, "timeouts": timeouts,
        "control": control, "api_headers": headers,
    })
