"""How many variants a sweep runs side by side (the plan's sweep.variants_at_once).

Each variant runs against its own server, so variants swept at the same time do not share a GPU; what
they share is the host: the load generator (one process) and, for the emulator, the emulated
servers. The emulator sleeps through each modelled engine step and only spends CPU on writing the
stream's events, and ridgeline's client parses over 200,000 token events per second per core
(`ridgeline bench client`), so one emulated variant with its share of the client needs well under
half a core even at the demo's heaviest step (256 streams, about 7,500 events/s, docs/demo.md has
the measurement). Hence the rule for `auto`:

- emulator: two variants per usable CPU (all four of the demo's on two cores);
- vllm and external: one at a time (a real server's speed may depend on what else runs on the host
  or the network; ask for more explicitly, with server.placement: parallel for vllm);
- one at a time whenever the client's exporter, Prometheus targets or Locust worker processes are
  in use, since they follow one variant at a time, and with crosscheck.interleave, whose bench must
  read the server right after ridgeline did with nothing else loading the host in between.

Side by side, the variants' steps also share one stream budget, so the client is never asked for
several variants' heaviest steps at once: a step holds as many streams as its concurrency (an
open-loop step its max_concurrency, else the whole budget) and waits until they fit; a step larger
than the budget runs alone. The budget is STREAMS_PER_CPU streams per usable CPU: on two cores two
steps at concurrency 256 run together, four at 128 (the client then stays near half a core; four at
256 took it to a whole core, which `client_saturated` flags).

Side by side, the lanes also take turns between measuring and bookkeeping (PhaseGate): every lane's
streams are timed by the same client process, so a lane that writes its finished step to disk (the
first write imports the Parquet machinery: half a second) or opens its next step's probes holds up
the streams of a lane still inside its window, and those tokens are then stamped late or fall
past the window's end. That is what moved fp8kv's ratio at concurrency 1 between 0.94x and 1.04x
with free-running lanes. With the gate no window is open while any lane does bookkeeping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional

from gevent.event import Event

from core.plan import Plan

EMULATED_PER_CPU = 2
STREAMS_PER_CPU = 256


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which a container's cpuset limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def variants_at_once(plan: Plan, cpus: Optional[int] = None) -> int:
    """The number of variants to sweep side by side for this plan on this host (at least 1)."""
    n = len(plan.variants)
    want = plan.sweep.variants_at_once
    if want != "auto":
        return max(1, min(int(want), n))
    shared = plan.scrape.exporter_port is not None or plan.scrape.targets_dir is not None or plan.workers > 0
    interleaved = plan.crosscheck is not None and plan.crosscheck.interleave
    if plan.backend != "emulator" or shared or interleaved:
        return 1
    return max(1, min(n, EMULATED_PER_CPU * (cpus if cpus is not None else usable_cpus())))


def stream_budget(cpus: Optional[int] = None) -> int:
    """Streams the variants' steps may hold at once when swept side by side."""
    return STREAMS_PER_CPU * (cpus if cpus is not None else usable_cpus())


def step_streams(plan: Plan, concurrency: Optional[int], budget: int) -> int:
    """What one step holds of the budget: its concurrency, an open-loop step's cap, at most the budget."""
    if concurrency is not None:
        return min(int(concurrency), budget)
    cap = plan.sweep.max_concurrency
    return min(int(cap), budget) if cap is not None else budget


class StreamBudget:
    """Streams held by the steps running side by side; a step waits until its streams fit."""

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self.held = 0
        self._freed = Event()

    def acquire(self, streams: int, on_wait: Optional[Callable[[], None]] = None) -> int:
        """Wait until `streams` (at most the limit) fit, then hold them; returns what is held.
        `on_wait` is called once before waiting, when they do not fit at once."""
        n = max(0, min(int(streams), self.limit))
        if on_wait is not None and self.held + n > self.limit:
            on_wait()
        while self.held + n > self.limit:
            self._freed.clear()
            self._freed.wait()
        self.held += n
        return n

    def release(self, streams: int) -> None:
        self.held -= streams
        self._freed.set()


class PhaseGate:
    """Lanes open their windows together and do their bookkeeping together, never both at once.

    A lane is either measuring (its window is open), between windows (writing its last step,
    setting up its next one, starting its server) or parked (waiting for stream budget, done, or
    busy with something that is no step). A window opens only when no lane is between windows, so
    the lanes measure the same level at the same time; bookkeeping starts only when no window is
    open. Every lane joins between windows, so the first windows wait until all servers are up.
    """

    def __init__(self) -> None:
        self.measuring = 0
        self.between: set[object] = set()
        self._changed = Event()

    def _wait(self) -> None:
        self._changed.clear()
        self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()

    def join(self, lane: object) -> None:
        """A new lane: between windows until its first one."""
        self.between.add(lane)

    def park(self, lane: object) -> None:
        """The lane waits for something else, or is done: windows no longer wait for it."""
        if lane in self.between:
            self.between.discard(lane)
            self._notify()

    def work(self, lane: object) -> None:
        """Between windows: wait until no window is open (the others' windows wait for this lane)."""
        self.between.add(lane)
        while self.measuring:
            self._wait()

    @contextmanager
    def measure(self, lane: object) -> Iterator[None]:
        """Hold the lane's window open: opens once no lane is between windows."""
        self.park(lane)
        while self.between:
            self._wait()
        self.measuring += 1
        try:
            yield
        finally:
            self.measuring -= 1
            self._notify()


class NoGate:
    """One lane: nothing to take turns with."""

    def join(self, lane: object) -> None:
        pass

    def park(self, lane: object) -> None:
        pass

    def work(self, lane: object) -> None:
        pass

    @contextmanager
    def measure(self, lane: object) -> Iterator[None]:
        yield
