"""The client benchmark's set-up, the same for both clients: ramp, CPU placement, and the host's load.

Three things decide whether `ridgeline bench client` compares two clients or two set-ups:

- *The ramp.* Streams that start together tick together: the null server then writes a burst of
  events at one instant and the last of them leaves late, whichever client reads it. Both clients
  start stream k at k * spacing with a constant spacing of p * gap / streams (p odd and prime to
  the stream count), so the streams' ticks fall evenly over the gap, p gaps long in all.
- *Placement.* On a small host the null server and the client share the cores with each other and
  with whatever else runs. With `split`, the null server runs on the first CPU and every client
  process on the others, so neither client competes with the server it measures (`none`: the
  scheduler places them).
- *The host's load.* Figures from a busy host are not quiet-host figures: the load average before
  and after, and the CPU time other processes used while the benchmark ran, go with every result;
  the host counts as quiet when that CPU time is under 10% of its cores.
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import psutil

PLACEMENTS = ("split", "none")
# a host counts as quiet while other processes use less than this share of its cores; the load
# average is printed beside it but does not decide, since it still holds the benchmark's own
# previous run for minutes (three runs back to back would read as busy)
QUIET_FOREIGN_SHARE = 0.10


@dataclass(frozen=True)
class Ramp:
    """Stream k starts at k * spacing_s; all of them within ramp_s."""

    spacing_s: float
    ramp_s: float

    @property
    def rate(self) -> float:
        """Starts per second (vllm bench serve's --request-rate, with --burstiness inf)."""
        return 1.0 / self.spacing_s


def even_ramp(streams: int, gap_s: float, target_s: float) -> Ramp:
    """A constant start spacing whose streams tick at `streams` distinct, evenly spread phases of the gap.

    With spacing p * gap / streams, stream k ticks at phase k * p / streams of the gap, and those
    are all different exactly when p and the stream count have no common factor. p is the odd
    number prime to `streams` nearest to target_s / gap, so the ramp lasts about target_s.
    """
    if streams <= 0 or gap_s <= 0:
        raise ValueError(f"even_ramp needs streams > 0 and gap > 0, got {streams} and {gap_s}")
    want = max(target_s / gap_s, 1.0)
    best: Optional[int] = None
    for p in range(1, 2 * int(math.ceil(want)) + 3):
        if math.gcd(p, streams) == 1 and (best is None or abs(p - want) < abs(best - want)):
            best = p
    p = best or 1
    return Ramp(spacing_s=p * gap_s / streams, ramp_s=p * gap_s)


@dataclass(frozen=True)
class Placement:
    """Which CPUs the null server and the clients run on (None: anywhere)."""

    name: str
    server_cpus: Optional[tuple[int, ...]]
    client_cpus: Optional[tuple[int, ...]]

    def server_prefix(self) -> list[str]:
        return _taskset(self.server_cpus)

    def client_prefix(self) -> list[str]:
        return _taskset(self.client_cpus)


def _taskset(cpus: Optional[tuple[int, ...]]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []


def placement(name: str, cpus: Optional[list[int]] = None) -> Placement:
    """`split`: the null server on the first CPU this process may use, the clients on the rest; `none`."""
    if name not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {name!r}")
    allowed = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if name == "none" or len(allowed) < 2:
        return Placement("none", None, None)
    return Placement("split", (allowed[0],), tuple(allowed[1:]))


def run_delay_s(pid: int) -> Optional[float]:
    """Seconds the process's main thread has waited for a CPU while runnable (/proc/PID/schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class HostLoad:
    """The host's load around a benchmark: load averages, and the CPU others used meanwhile."""

    cpus: int
    load_before: tuple[float, float, float]
    load_after: Optional[tuple[float, float, float]] = None
    wall_s: Optional[float] = None
    foreign_cpu_s: Optional[float] = None  # CPU seconds of processes other than the benchmark's
    foreign_share: Optional[float] = None  # of all the host's cores over the run
    quiet: Optional[bool] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        b = " ".join(f"{x:.2f}" for x in self.load_before)
        a = " ".join(f"{x:.2f}" for x in self.load_after) if self.load_after else "?"
        other = (f"; other processes used {100 * self.foreign_share:.0f}% of the {self.cpus} cores meanwhile"
                 if self.foreign_share is not None else "")
        verdict = "quiet host" if self.quiet else "NOT a quiet host: read the figures as relative only"
        return f"host load average {b} before, {a} after{other}: {verdict}"


class LoadWatch:
    """Measures what the rest of the host did while this process (and its children) benchmarked.

    Call `done()` after every child has exited and been waited for: reaped children's CPU is in
    this process's RUSAGE_CHILDREN, so host busy time minus ours is everyone else's.
    """

    def __init__(self) -> None:
        self.cpus = psutil.cpu_count() or 1
        self.load = HostLoad(self.cpus, tuple(round(x, 2) for x in os.getloadavg()))  # type: ignore[arg-type]
        self._t0 = time.perf_counter()
        self._busy0 = _host_busy_s()
        self._own0 = _own_cpu_s()

    def done(self) -> HostLoad:
        h = self.load
        h.wall_s = round(time.perf_counter() - self._t0, 3)
        h.load_after = tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[assignment]
        foreign = max((_host_busy_s() - self._busy0) - (_own_cpu_s() - self._own0), 0.0)
        h.foreign_cpu_s = round(foreign, 3)
        h.foreign_share = round(foreign / (h.wall_s * self.cpus), 4) if h.wall_s > 0 else None
        h.quiet = h.foreign_share is not None and h.foreign_share < QUIET_FOREIGN_SHARE
        return h


def _host_busy_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)


def _own_cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
