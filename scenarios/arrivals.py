"""Open-loop arrival schedules: when each request is due, fixed before the server says anything.

The schedule never waits for responses (that would be coordinated omission, hiding a slow server
behind a slow client); a sender that falls behind sends late and the record keeps both times.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

PROCESSES = ("constant", "poisson", "gamma")


def gaps(n: int, rate: float, process: str, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """n inter-arrival gaps (s) with mean 1/rate: constant, Poisson (exponential), or gamma of shape `burstiness`.

    Gamma with shape k has the same mean and a coefficient of variation of 1/sqrt(k): k < 1 is
    burstier than Poisson, k > 1 smoother, k = 1 is Poisson.
    """
    if rate <= 0:
        raise ValueError(f"arrival rate must be above 0, got {rate}")
    if process == "constant":
        return np.full(n, 1.0 / rate)
    if process == "poisson":
        return rng.exponential(1.0 / rate, size=n)
    if process == "gamma":
        if burstiness <= 0:
            raise ValueError(f"gamma burstiness (shape) must be above 0, got {burstiness}")
        return rng.gamma(burstiness, 1.0 / (rate * burstiness), size=n)
    raise ValueError(f"unknown arrival process {process!r} (known: {', '.join(PROCESSES)})")


class ArrivalSchedule:
    """Offsets (s from the step's start) of every arrival, forever: the first at `phase`."""

    def __init__(self, rate: float, process: str = "poisson", burstiness: float = 1.0,
                 rng: np.random.Generator | None = None, phase: float = 0.0, block: int = 4096):
        gaps(1, rate, process, burstiness, np.random.default_rng(0))  # validate now, not in a greenlet
        self.rate, self.process, self.burstiness = rate, process, burstiness
        self.rng = rng if rng is not None else np.random.default_rng()
        self.phase = phase
        self.block = block

    def __iter__(self) -> Iterator[float]:
        t = self.phase
        yield t
        while True:
            offs = t + np.cumsum(gaps(self.block, self.rate, self.process, self.burstiness, self.rng))
            yield from offs.tolist()
            t = float(offs[-1])  # the next block continues from the last arrival

    def first(self, n: int) -> np.ndarray:
        """The first n offsets (for tests and previews)."""
        out = np.empty(n)
        for i, t in zip(range(n), self):
            out[i] = t
        return out
