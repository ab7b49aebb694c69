"""Which requests meet the service levels: the requests goodput counts.

A request is good when it ended without error and meets every SLO the plan sets: time to first
token, its own p99 inter-token gap, time per output token, end-to-end latency. A request cancelled
at the end of a step (still streaming) is judged on what it showed so far, first token and gaps,
since its TPOT and end-to-end latency never happened; a failed request is never good.

The request's p99 gap is the nearest-rank percentile (the ceil(0.99 n)-th smallest gap), so
"p99 <= limit" is exactly "at most n - ceil(0.99 n) gaps exceed the limit": one count per request,
counted with one running sum over the step's gaps instead of sorting every request's gaps.
"""

from __future__ import annotations

import numpy as np

from analysis.data import SLO

REQUEST_GAP_QUANTILE = 0.99


def allowed_slow_gaps(n_gaps: np.ndarray, q: float = REQUEST_GAP_QUANTILE) -> np.ndarray:
    """How many of a request's n gaps may exceed the limit with its nearest-rank q-quantile within it."""
    n = np.asarray(n_gaps, dtype=np.int64)
    rank = np.ceil(q * n - 1e-9).astype(np.int64)  # 1-based rank of the quantile
    return n - rank


def judge_requests(slo: SLO, status: np.ndarray, ttft: np.ndarray, tpot: np.ndarray, e2e: np.ndarray,
                   n_gaps: np.ndarray, n_slow: np.ndarray) -> np.ndarray:
    """Boolean per request: meets every SLO set (see the module docstring for cancelled requests).

    n_gaps: each request's number of gaps; n_slow: how many of them exceed slo.itl_s.
    """
    ok = status == "ok"
    cancelled = status == "cancelled"
    has_first = np.isfinite(ttft)
    good = (ok | cancelled) & has_first
    if slo.ttft_s is not None:
        good &= np.where(has_first, ttft, np.inf) <= slo.ttft_s
    if slo.itl_s is not None:
        good &= n_slow <= allowed_slow_gaps(n_gaps)
    if slo.tpot_s is not None:
        good &= cancelled | (np.where(np.isfinite(tpot), tpot, 0.0) <= slo.tpot_s)
    if slo.e2e_s is not None:
        good &= cancelled | (np.where(np.isfinite(e2e), e2e, np.inf) <= slo.e2e_s)
    return good
