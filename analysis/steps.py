"""One step's request rows turned into throughput, latency percentiles, errors and goodput.

Throughput counts token *events* by the time they arrived, not requests by the time they ended: an
event at send_time + ttft_s + cumsum(itl_s) inside the measured window counts, whichever request it
belongs to (warm-up, measured, later cancelled). That is what the server delivered during the
window, it does not depend on how the step's edges cut requests, and it stays right for windows
shorter than one request. Where a request's usage says it received more tokens than events (a
server that sends several tokens per chunk), each of its events is weighted by tokens/events.

For the throughput's interval the window is also cut into SLICES equal slices and the tokens
of each counted (see analysis.block_bootstrap).

Latencies are over the measured-phase requests (sent inside the window). An open-loop step's
lateness (send_time - scheduled_time) is over the arrivals the schedule put inside the window, so
one sent so late that it left after the window still counts. Everything is vectorised
over the flattened inter-token gaps of the step: no Python loop per request or per token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.data import SLO, AnalysisError
from analysis.gaps import Gaps
from analysis.gaps import window_counts as _window_counts
from analysis.goodput import judge_requests

PERCENTILES = (50, 90, 95, 99)
SLICES = 50  # the measured window is cut into this many equal slices for the throughput interval
REQUEST_COLUMNS = ["concurrency", "rate", "phase", "send_time", "scheduled_time", "ttft_s", "itl_s", "e2e_s",
                   "prompt_tokens", "output_tokens", "token_events", "status", "error_kind", "error"]


@dataclass
class StepRequests:
    """What the later stages need per request of one step (arrays in send-time order)."""

    tokens_in_window: np.ndarray  # output tokens that arrived inside the window, per request
    good_tokens_in_window: np.ndarray  # the same, for requests meeting the SLO
    measure: np.ndarray  # bool: sent inside the window
    ttft_s: np.ndarray
    e2e_s: np.ndarray
    tpot_s: np.ndarray
    mean_gap_s: np.ndarray  # mean inter-token gap of the request (NaN without gaps)
    ok: np.ndarray  # bool
    slice_tokens: np.ndarray  # output tokens that arrived in each of SLICES equal slices of the window
    slice_good_tokens: np.ndarray  # the same, of requests meeting the SLO
    lead_s: float = 0.0  # from the window's start to the first send inside it (client start-up)


def read_step_table(path: Path) -> pa.Table:
    """The request columns of one step file; a clear error naming the file when it cannot be read."""
    try:
        schema = pq.read_schema(path)
        cols = [c for c in REQUEST_COLUMNS if c in schema.names]
        return pq.read_table(path, columns=cols)
    except (pa.ArrowInvalid, OSError) as exc:
        raise AnalysisError(f"{path}: cannot be read as a request table ({exc})") from None


def column(table: pa.Table, name: str, dtype: Any = np.float64, fill: Any = np.nan) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, fill, dtype=dtype)
    arr = table.column(name)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return np.asarray(arr.fill_null("").to_numpy(zero_copy_only=False), dtype=object)
    return np.asarray(arr.cast(pa.float64()).fill_null(fill).to_numpy(), dtype=dtype)


def quantiles(values: np.ndarray, qs: tuple[float, ...], in_place: bool = False) -> np.ndarray:
    """numpy's linear-interpolation percentiles (qs in 0..100) from one sort of one copy.

    One in-place sort is several times faster than numpy's partition with several kth (which
    selects them one after another), and the copy is made at most once.
    """
    v = values if in_place else values.copy()
    n = v.size
    pos = np.asarray(qs, dtype=np.float64) / 100.0 * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    v.sort()
    a, b = v[lo].astype(np.float64), v[hi].astype(np.float64)
    return a + (b - a) * (pos - lo)


def _pcts(values: np.ndarray, prefix: str, in_place: bool = False) -> dict[str, float]:
    """p50/p90/p95/p99, max and mean of the finite values."""
    out: dict[str, float] = {}
    v = values
    if v.size and not np.isfinite(v).all():
        v, in_place = v[np.isfinite(v)], True
    if v.size == 0:
        for p in PERCENTILES:
            out[f"{prefix}_p{p}_s"] = np.nan
        out[f"{prefix}_max_s"] = np.nan
        out[f"{prefix}_mean_s"] = np.nan
        return out
    out[f"{prefix}_mean_s"] = float(v.mean(dtype=np.float64))
    qs = quantiles(v, PERCENTILES + (100,), in_place)
    for p, q in zip(PERCENTILES, qs):
        out[f"{prefix}_p{p}_s"] = float(q)
    out[f"{prefix}_max_s"] = float(qs[-1])
    return out


def lateness(send: np.ndarray, scheduled: np.ndarray, w0: float, w1: float, measure: np.ndarray
             ) -> dict[str, float]:
    """p50, p99 and max of send_time - scheduled_time over the arrivals due inside [w0, w1].

    An open-loop client that falls behind its schedule sends late: the load it offered was lower
    than the rate says. Without a window, the measured-phase arrivals; closed-loop rows (no
    schedule) give NaN.
    """
    due = np.isfinite(scheduled) & np.isfinite(send)
    due &= (scheduled >= w0) & (scheduled <= w1) if np.isfinite(w0) and np.isfinite(w1) else measure
    out = {"lateness_p50_s": np.nan, "lateness_p99_s": np.nan, "lateness_max_s": np.nan}
    if due.any():
        p50, p99, top = quantiles(send[due] - scheduled[due], (50, 99, 100), in_place=True)
        out.update(lateness_p50_s=float(p50), lateness_p99_s=float(p99), lateness_max_s=float(top))
    return out


def window_from_records(table: pa.Table) -> tuple[Optional[float], Optional[float]]:
    """[first measured send, last measured end] when the manifest gives no window."""
    if table.num_rows == 0:
        return None, None
    phase = column(table, "phase", object)
    send = column(table, "send_time")
    e2e = column(table, "e2e_s")
    m = phase == "measure"
    if not m.any():
        m = np.ones(len(send), bool)
    ends = send[m] + np.where(np.isfinite(e2e[m]), e2e[m], 0.0)
    return float(np.nanmin(send[m])), float(np.nanmax(ends))


@dataclass
class EventSpans:
    """When each request's token events came: its first token, its gaps, its last event."""

    has_first: np.ndarray  # a first token arrived
    t_first: np.ndarray  # its time (NaN without one)
    gaps: Gaps
    counts: np.ndarray  # gaps per request; those of a request without a first token are ignored
    gap_sum: np.ndarray  # seconds from the first token to the last event
    last: np.ndarray  # the last event's time (the send time without a first token)

    @classmethod
    def of(cls, table: pa.Table, send: np.ndarray, ttft: np.ndarray) -> "EventSpans":
        has_first = np.isfinite(ttft) & np.isfinite(send)
        t_first = np.where(has_first, send + np.where(has_first, ttft, 0.0), np.nan)
        g = Gaps.of(table, table.num_rows)
        gap_sum = g.request_sums()
        last = np.where(has_first, t_first + np.where(has_first, gap_sum, 0.0), send)
        return cls(has_first, t_first, g, np.where(has_first, g.counts, 0), gap_sum, last)


def event_weights(ok: np.ndarray, out_tok: np.ndarray, events_col: np.ndarray, has_first: np.ndarray,
                  counts: np.ndarray) -> tuple[np.ndarray, float]:
    """Tokens per streamed event of each request, and the step's median of them.

    vLLM merges tokens into one event when it falls behind, so an event is worth its request's
    usage tokens / events where both are known; a request without a usage count (an error, a
    cut stream) weighs the step's median ratio.
    """
    events = np.where(events_col > 0, events_col, has_first.astype(float) + counts)
    ratio = np.where(ok & (out_tok > 0) & (events > 0), out_tok / np.maximum(events, 1), np.nan)
    known = ratio[np.isfinite(ratio)]
    default_ratio = float(np.median(known)) if known.size else 1.0
    return np.where(np.isfinite(ratio), ratio, default_ratio), default_ratio


def window_output_tokens(table: pa.Table, w0: float, w1: float) -> float:
    """Output tokens whose events arrived in [w0, w1], weighted as the step table weighs them.

    For callers that hold request rows but no step table (the energy table of a bare results
    directory); aggregate_step computes the same sum beside everything else it reports.
    """
    n = table.num_rows
    if n == 0 or not w1 > w0:
        return 0.0
    ev = EventSpans.of(table, column(table, "send_time"), column(table, "ttft_s"))
    ok = column(table, "status", object) == "ok"
    weight, _ = event_weights(ok, column(table, "output_tokens"), column(table, "token_events"), ev.has_first,
                              ev.counts)
    ev_in, _, _, _ = _window_counts(ev.gaps, ev.has_first, ev.t_first, ev.last, weight, np.zeros(n, bool), w0, w1, 1)
    return float(np.sum(ev_in * weight))


def aggregate_step(table: pa.Table, w0: Optional[float], w1: Optional[float], slo: SLO
                   ) -> tuple[dict[str, Any], StepRequests, pd.DataFrame]:
    """Per-step figures, the per-request arrays, and the errors by kind (kind, count, example)."""
    n = table.num_rows
    if w0 is None or w1 is None:
        d0, d1 = window_from_records(table)
        w0 = d0 if w0 is None else w0
        w1 = d1 if w1 is None else w1
    window = (w1 - w0) if (w0 is not None and w1 is not None) else np.nan
    have_window = bool(np.isfinite(window) and window > 0)
    if not have_window:
        w0 = w1 = np.nan

    send = column(table, "send_time")
    phase = column(table, "phase", object)
    status = column(table, "status", object)
    ttft = column(table, "ttft_s")
    e2e = column(table, "e2e_s")
    out_tok = column(table, "output_tokens")
    prompt_tok = column(table, "prompt_tokens")
    events_col = column(table, "token_events")
    measure = phase == "measure"
    ok = status == "ok"
    err = status == "error"
    cancelled = status == "cancelled"
    ev = EventSpans.of(table, send, ttft)
    has_first, t_first, g, counts, gap_sum, last = ev.has_first, ev.t_first, ev.gaps, ev.counts, ev.gap_sum, ev.last

    weight, default_ratio = event_weights(ok, out_tok, events_col, has_first, counts)

    # per-request latencies
    tpot = np.where(ok & (out_tok > 1) & np.isfinite(e2e) & has_first, (e2e - ttft) / np.maximum(out_tok - 1, 1),
                    np.nan)
    mean_gap = np.where(counts > 0, gap_sum / np.maximum(counts, 1), np.nan)
    # a request without an end (cancelled) was in flight until its last event
    end = np.where(np.isfinite(e2e), send + e2e, last)
    n_slow = g.count_above(slo.itl_s) if slo.itl_s is not None else np.zeros(n, np.int64)
    good = judge_requests(slo, status, ttft, tpot, e2e, counts, n_slow)

    if have_window:
        ev_in, slices, good_slices, window_gap = _window_counts(g, has_first, t_first, last, weight, good, w0, w1,
                                                                SLICES)
    else:
        ev_in, slices, good_slices, window_gap = np.zeros(n), np.zeros(SLICES), np.zeros(SLICES), np.nan
    tokens_in = ev_in * weight

    row: dict[str, Any] = {"window_start": w0, "window_s": window if have_window else np.nan}
    m_req = int(measure.sum())
    row["requests"] = m_req
    row["requests_total"] = int(n)
    row["ok"] = int((measure & ok).sum())
    row["errors"] = int((measure & err).sum())
    row["errors_total"] = int(err.sum())
    row["cancelled"] = int((measure & cancelled).sum())
    row["error_rate"] = (row["errors"] / m_req) if m_req else np.nan
    if have_window:
        in_window_end = ok & np.isfinite(end) & (end >= w0) & (end <= w1)
        sent_in = (send >= w0) & (send <= w1)
        row["output_tokens_per_s"] = float(tokens_in.sum() / window)
        prompt_in = float(np.nansum(np.where(sent_in, prompt_tok, 0.0)))
        row["prompt_tokens_per_s"] = prompt_in / window
        row["total_tokens_per_s"] = row["output_tokens_per_s"] + row["prompt_tokens_per_s"]
        row["requests_per_s"] = float(in_window_end.sum() / window)
        row["goodput_requests_per_s"] = float((in_window_end & good).sum() / window)
        row["goodput_tokens_per_s"] = float(tokens_in[good].sum() / window)
        overlap = np.clip(np.minimum(end, w1) - np.maximum(send, w0), 0.0, None)
        row["client_in_flight_mean"] = float(np.nansum(overlap) / window)
    else:
        for k in ("output_tokens_per_s", "prompt_tokens_per_s", "total_tokens_per_s", "requests_per_s",
                  "goodput_requests_per_s", "goodput_tokens_per_s", "client_in_flight_mean"):
            row[k] = np.nan
    judged = measure & (ok | (cancelled & has_first))
    row["slo_attainment"] = float((good & judged).sum() / judged.sum()) if judged.any() else np.nan

    row.update(_pcts(ttft[measure & has_first], "ttft"))
    row.update(_pcts(g.values_of(measure & has_first), "itl", in_place=True))
    row.update(_pcts(tpot[measure], "tpot"))
    row.update(_pcts(e2e[measure & ok], "e2e"))
    mo = measure & ok
    row["output_tokens_mean"] = float(np.nanmean(out_tok[mo])) if mo.any() and np.isfinite(out_tok[mo]).any() else np.nan
    row["prompt_tokens_mean"] = (float(np.nanmean(prompt_tok[measure])) if measure.any()
                                 and np.isfinite(prompt_tok[measure]).any() else np.nan)
    row.update(lateness(send, column(table, "scheduled_time"), w0, w1, measure))
    row["tokens_per_event"] = default_ratio
    row["window_itl_mean_s"] = window_gap  # every gap that ended inside the window, any request

    kinds = _errors_by_kind(table, err)
    row["error_kinds"] = json.dumps({str(k): int(c) for k, c in zip(kinds.error_kind, kinds["count"])},
                                    sort_keys=True)
    reqs = StepRequests(tokens_in_window=tokens_in, good_tokens_in_window=np.where(good, tokens_in, 0.0),
                        measure=measure, ttft_s=ttft, e2e_s=np.where(ok, e2e, np.nan), tpot_s=tpot,
                        mean_gap_s=mean_gap, ok=ok, slice_tokens=slices,
                        slice_good_tokens=good_slices, lead_s=_lead(send, w0, w1))
    return row, reqs, kinds


def _lead(send: np.ndarray, w0: float, w1: float) -> float:
    """Seconds from the window's start to the first send inside it (0 when none, or no window)."""
    inside = send[np.isfinite(send) & (send >= w0) & (send <= w1)] if np.isfinite(w0) and np.isfinite(w1) else send[:0]
    return float(inside.min() - w0) if inside.size else 0.0


def _errors_by_kind(table: pa.Table, err: np.ndarray) -> pd.DataFrame:
    if not err.any():
        return pd.DataFrame({"error_kind": pd.Series(dtype=str), "count": pd.Series(dtype=int),
                             "example": pd.Series(dtype=str)})
    kind = column(table, "error_kind", object)[err]
    msg = column(table, "error", object)[err]
    df = pd.DataFrame({"error_kind": np.where(kind == "", "unknown", kind), "example": msg})
    g = df.groupby("error_kind", sort=True)
    return pd.DataFrame({"count": g.size(), "example": g["example"].first()}).reset_index()


def level_of(table: pa.Table) -> tuple[Optional[int], Optional[float]]:
    """(concurrency, rate) from the records, for a step the manifest does not describe."""
    c, r = None, None
    if table.num_rows:
        if "concurrency" in table.column_names:
            v = table.column("concurrency").drop_null()
            c = int(v[0].as_py()) if len(v) else None
        if "rate" in table.column_names:
            v = table.column("rate").drop_null()
            r = float(v[0].as_py()) if len(v) else None
    return c, r
