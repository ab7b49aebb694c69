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
  in use, since they follow one variant at a time.

Side by side, the variants' steps also share one stream budget, so the client is never asked for
several variants' heaviest steps at once: a step holds as many streams as its concurrency (an
open-loop step its max_concurrency, else the whole budget) and waits until they fit; a step larger
than the budget runs alone. The budget is STREAMS_PER_CPU streams per usable CPU: on two cores two
steps at concurrency 256 run together, four at 128 (the client then stays near half a core; four at
256 took it to a whole core, which `client_saturated` flags).
"""

from __future__ import annotations

import os
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
    if plan.backend != "emulator" or shared:
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

    def acquire(self, streams: int) -> int:
        """Wait until `streams` (at most the limit) fit, then hold them; returns what is held."""
        n = max(0, min(int(streams), self.limit))
        while self.held + n > self.limit:
            self._freed.clear()
            self._freed.wait()
        self.held += n
        return n

    def release(self, streams: int) -> None:
        self.held -= streams
        self._freed.set()
