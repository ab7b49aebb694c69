"""Drivers put load on one server for one step: closed loop through Locust users, or open loop.

A driver knows nothing about sweeps or results directories: it is told the level and the window,
and hands back the records. The in-process driver runs Locust's LocalRunner in this process; the
distributed one (loadtest.distributed) runs a Locust master with workers behind the same methods.
"""

from __future__ import annotations

import logging
import time
from typing import Optional, Protocol

import gevent
import gevent.pool
import numpy as np
from locust.env import Environment

# Locust warns about fast spawn rates; a sweep starts a step's users at once on purpose
logging.getLogger("locust.runners").setLevel(logging.ERROR)

from core.levels import from_fields
from core.records import RequestRecord
from scenarios.arrivals import ArrivalSchedule
from scenarios.arrivals import gaps as _gaps
from scenarios.openai_stream import Timeouts, make_client
from scenarios.users import StepControl, send_one, user_class, wall
from scenarios.workload import Workload


class Driver(Protocol):
    """What the sweep needs from whatever generates the load."""

    def start_step(self, variant: str, step: int, concurrency: Optional[int], rate: Optional[float],
                   window_start: float, window_end: Optional[float], measure_requests: Optional[int],
                   ramp_s: float) -> None: ...

    def stop_accepting(self) -> None: ...

    def accepting(self) -> bool: ...

    def in_flight(self) -> int: ...

    def sent(self) -> int: ...

    def finish_step(self) -> list[RequestRecord]: ...

    def close(self) -> None: ...


def arrival_times(n: int, rate: float, process: str, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Offsets (s) of n arrivals at `rate` per second, the first at 0: constant, Poisson, or gamma."""
    g = _gaps(n, rate, process, burstiness, rng)
    return np.cumsum(g) - g[0]


# sockets an uncapped open-loop step may open (in flight at once); the process's file limit applies
OPEN_LOOP_CONNECTIONS = 65536


class LocalDriver:
    """Locust in this process: a LocalRunner with N closed-loop users, or an open-loop dispatcher."""

    def __init__(self, url: str, workload: Workload, timeouts: Timeouts,
                 headers: Optional[dict[str, str]] = None, arrival: str = "poisson",
                 burstiness: float = 1.0, max_concurrency: Optional[int] = None, seed: int = 0):
        self.url = url
        self.workload = workload
        self.timeouts = timeouts
        self.headers = headers
        self.control = StepControl()
        self.user_cls = user_class("StreamingUser_" + str(id(self)), url, workload, timeouts,
                                   control=self.control, headers=headers)
        self.env = Environment(user_classes=[self.user_cls])
        self.runner = self.env.create_local_runner()
        self.arrival = arrival
        self.burstiness = burstiness
        self.max_concurrency = max_concurrency
        self.rng = np.random.default_rng(seed)
        self.open_loop_phase = 0.0  # offset of the first arrival (workers of one rate share it out)
        self._dispatcher: Optional[gevent.Greenlet] = None
        self._pool: Optional[gevent.pool.Pool] = None
        self._client = None

    # closed loop through Locust, open loop through a dispatcher greenlet
    def start_step(self, variant, step, concurrency, rate, window_start, window_end, measure_requests, ramp_s):
        ctl = self.control
        ctl.begin(variant, step, concurrency, rate)
        ctl.window_start, ctl.window_end = window_start, window_end
        ctl.measure_requests = measure_requests
        from_fields(concurrency, rate).drive(self, ramp_s)

    def hold_users(self, users: int, ramp_s: float) -> None:
        """Closed loop: `users` Locust users, spawned at once, each waiting for its ramp slot."""
        self.control.set_ramp(time.time(), ramp_s, users)
        self.runner.start(users, spawn_rate=max(users * 1000.0, 1000.0))

    def send_at_rate(self, rate: float) -> None:
        """Open loop at `rate` requests/s."""
        self._start_open_loop(rate)

    def _start_open_loop(self, rate: float, start_wall: Optional[float] = None) -> None:
        """Send on a schedule fixed in advance, whatever the server does (no coordinated omission).

        Each arrival is due at t0 + offset; its record keeps that as scheduled_time, and send_time is
        when it really went out, so lateness = send_time - scheduled_time shows a client falling
        behind. Only max_concurrency (when set) holds an arrival back, and then it is sent late,
        never skipped. The connection pool is as large as the cap, so no request waits for a socket
        after its clock has started. `start_wall` (epoch seconds) anchors the schedule to a step start
        decided elsewhere (a worker told late still sends on the master's schedule, late).
        """
        cap = self.max_concurrency
        self._pool = gevent.pool.Pool(cap) if cap else gevent.pool.Group()
        self._client = make_client(self.url, self.timeouts, concurrency=cap or OPEN_LOOP_CONNECTIONS)
        schedule = ArrivalSchedule(rate, self.arrival, self.burstiness, self.rng, phase=self.open_loop_phase)
        ctl = self.control
        client, pool = self._client, self._pool
        t0 = time.perf_counter()
        if start_wall is not None:
            t0 -= max(0.0, time.time() - start_wall)

        def send(due: float) -> None:
            req = self.workload.next_request()
            send_one(client, req, self.timeouts, ctl, self.headers, wall(due), self.env.events)

        def dispatch() -> None:
            for off in schedule:
                due = t0 + off
                delay = due - time.perf_counter()
                if delay > 0:
                    gevent.sleep(delay)
                # a timed window ends the schedule at its end, whenever the step loop notices; an
                # arrival due inside it is sent even if the dispatcher is behind: late, never dropped
                # (a count window closes on its last send)
                timed = ctl.window_end is not None and ctl.measure_requests is None
                if (timed and wall(due) >= ctl.window_end) or (not ctl.accepting and not timed):
                    return
                pool.spawn(send, due)  # blocks only at the cap: the wait shows as lateness

        self._dispatcher = gevent.spawn(dispatch)

    def stop_accepting(self) -> None:
        self.control.accepting = False

    def accepting(self) -> bool:
        return self.control.accepting

    def in_flight(self) -> int:
        return self.control.in_flight

    def sent(self) -> int:
        return self.control.sent

    def finish_step(self) -> list[RequestRecord]:
        """Stop every user; requests still in flight are recorded as cancelled."""
        self.control.accepting = False
        if self._dispatcher is not None:
            self._dispatcher.kill(block=True)
            self._dispatcher = None
        if self._pool is not None:
            self._pool.kill(block=True, timeout=10)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.runner.user_count:
            self.runner.stop()
        gevent.sleep(0)
        return self.control.take()

    def close(self) -> None:
        try:
            self.finish_step()
        finally:
            self.runner.quit()
