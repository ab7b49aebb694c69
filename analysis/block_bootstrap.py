"""The sampling distribution of a step's throughput: a circular block bootstrap over time slices
whose block spans at least one request's lifetime.

A closed-loop step moves in waves: its requests start together, their prefills stall decoding for
a moment, then every stream decodes until the wave ends and the next one starts. Counted in short
time slices, tokens arrive unevenly (a prefill slice holds few, the slices after it many), but
every stretch as long as one request's lifetime holds about one wave's worth. Resampling slices
one by one treats the starved slice and the catch-up slices as independent and inflates the
spread several-fold (on an H100 at concurrency 64: +-14% against a 1.4% spread of independent
measurements). Resampling runs of consecutive slices at least one request long keeps each wave's
dip with its catch-up, so only what varies from one lifetime to the next (a slower wave, a
preemption, a stall) widens the interval.

Blocks: the circle is the window from its first send to its end (the stretch before the first send
is the client starting, alike in every run, and is not resampled), wrapped onto itself (Politis
and Romano's circular block bootstrap, so every moment is equally likely to be drawn). It is cut
into b blocks of equal length, b = the number of whole median request lifetimes it holds (at
least MIN_BLOCKS); a draw is the sum of b blocks, each starting at a random slice bound, read from
the slices' running sum. Equal blocks that tile the circle exactly matter: a closed loop of k
waves spans k lifetimes, so a block of circle / k holds one wave's dip and its catch-up whatever
its start, while a shorter tail block (or one not a whole number of waves) would draw the dip or
not by chance. A draw's deviation from the measured rate is scaled by sqrt(b / (b - 1)): the spread
over every start on the circle divides by b, where an unbiased variance of b blocks divides by b - 1.

Its coverage is measured, not assumed: benchmarks/interval_coverage.py runs the same steps many
times with fresh seeds and counts how often one run's 95% interval holds the other runs' mean
(docs/analysis.md has the table). Where it fails: a window shorter than two request lifetimes (the
block is cut to half the window, dependence longer than that is not seen and the interval is too
narrow), and drift that is constant within a run but differs between runs (a slower server
start, a host busy for the whole step), which no single run can show: repeats measure that.
"""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 1000
MIN_BLOCKS = 2  # the block is cut so at least this many fit in the window


def _blocks(slices: int, window_s: float, lifetime_s: float) -> int:
    """How many blocks of at least one request lifetime fit the window: at least MIN_BLOCKS, at most one per slice."""
    if not (np.isfinite(lifetime_s) and lifetime_s > 0):
        return MIN_BLOCKS
    return int(min(max(slices, MIN_BLOCKS), max(MIN_BLOCKS, math.floor(window_s / lifetime_s + 1e-9))))


def rate_draws(slice_tokens: np.ndarray, window_s: float, request_s: np.ndarray, rng: np.random.Generator,
               lead_s: float = 0.0, resamples: int = RESAMPLES) -> np.ndarray:
    """Bootstrap draws of a step's throughput, sum(slice_tokens) / window_s, by circular blocks.

    slice_tokens: tokens that arrived in each equal slice of the measured window, in time order;
    request_s: the step's requests' end-to-end times (NaN for one that did not finish), whose median
    is the shortest block; lead_s: time from the window's start to its first request's send, the
    same in every run, which is kept out of the circle (not resampled). Returns `resamples` draws
    (NaN without a window). The same draws give the step's interval, the speedup's (ratio of two
    steps' draws) and the crossover's (crossings of the speedup's bounds).
    """
    x = np.asarray(slice_tokens, dtype=float)
    n = x.size
    if not (window_s and np.isfinite(window_s) and window_s > 0) or n == 0:
        return np.full(resamples, np.nan)
    e2e = np.asarray(request_s, dtype=float)
    e2e = e2e[np.isfinite(e2e) & (e2e > 0)]
    lead = min(max(float(lead_s), 0.0), window_s * (1 - 1 / n)) if np.isfinite(lead_s) else 0.0
    circle = window_s - lead
    b = _blocks(n, circle, float(np.median(e2e)) if e2e.size else np.nan)
    times = np.linspace(0.0, window_s, n + 1)
    cum = np.concatenate([[0.0], np.cumsum(x)])  # tokens before each slice bound, linear inside a slice
    at_lead = np.interp(lead, times, cum)
    total = cum[-1] - at_lead  # tokens on the circle (none arrive before the first send)

    def on_circle(u: np.ndarray) -> np.ndarray:
        """Tokens from the circle's start to position u (0 <= u < 2 x circle), wrapping once."""
        wrapped = u > circle
        t = lead + np.where(wrapped, u - circle, u)
        return np.interp(t, times, cum) - at_lead + np.where(wrapped, total, 0.0)

    block = circle / b
    # blocks start one slice apart (a start inside a slice would blend two slices and hide their noise)
    positions = max(1, round(circle / (window_s / n)))
    starts = rng.integers(0, positions, size=(resamples, b)) * (circle / positions)
    sums = on_circle(starts + block) - on_circle(starts)
    draws = (sums.sum(axis=1) + (cum[-1] - total)) / window_s
    # the circle's b blocks are b observations: its variance over every start divides by b where an
    # unbiased one divides by b - 1
    rate = cum[-1] / window_s
    return rate + (draws - rate) * math.sqrt(b / (b - 1))
