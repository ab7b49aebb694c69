"""One step's request rows turned into throughput, latency percentiles, errors and goodput.

Throughput counts token *events* by the time they arrived, not requests by the time they ended: an
event at send_time + ttft_s + cumsum(itl_s) inside the measured window counts, whichever request it
belongs to (warm-up, measured, later cancelled). That is what the server delivered during the
window, it does not depend on how the step's edges cut requests, and it stays right for windows
shorter than one request. Where a request's usage says it received more tokens than events (a
server that sends several tokens per chunk), each of its events is weighted by tokens/events.

For the throughput's interval the window is also cut into SLICES equal slices and the tokens
of each counted (see analysis.speedup).

Latencies are over the measured-phase requests (sent inside the window). Everything is vectorised
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analysis.data import SLO, AnalysisError
from analysis.goodput import judge_requests

PERCENTILES = (50, 90, 95, 99)
SLICES = 50  # the measured window is cut into this many equal slices for the throughput interval
REQUEST_COLUMNS = ["concurrency", "rate", "phase", "send_time", "ttft_s", "itl_s", "e2e_s", "prompt_tokens",
                   "output_tokens", "token_events", "status", "error_kind", "error"]


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


def read_step_table(path: Path) -> pa.Table:
    """The request columns of one step file; a clear error naming the file when it cannot be read."""
    try:
        schema = pq.read_schema(path)
        cols = [c for c in REQUEST_COLUMNS if c in schema.names]
        return pq.read_table(path, columns=cols)
    except (pa.ArrowInvalid, OSError) as exc:
        raise AnalysisError(f"{path}: cannot be read as a request table ({exc})") from None


def _col(table: pa.Table, name: str, dtype: Any = np.float64, fill: Any = np.nan) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, fill, dtype=dtype)
    arr = table.column(name)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return np.asarray(arr.fill_null("").to_numpy(zero_copy_only=False), dtype=object)
    return np.asarray(arr.cast(pa.float64()).fill_null(fill).to_numpy(), dtype=dtype)


def _pcts(values: np.ndarray, prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    v = values[np.isfinite(values)]
    if v.size == 0:
        for p in PERCENTILES:
            out[f"{prefix}_p{p}_s"] = np.nan
        out[f"{prefix}_max_s"] = np.nan
        out[f"{prefix}_mean_s"] = np.nan
        return out
    qs = np.percentile(v, PERCENTILES)
    for p, q in zip(PERCENTILES, qs):
        out[f"{prefix}_p{p}_s"] = float(q)
    out[f"{prefix}_max_s"] = float(v.max())
    out[f"{prefix}_mean_s"] = float(v.mean())
    return out


def window_from_records(table: pa.Table) -> tuple[Optional[float], Optional[float]]:
    """[first measured send, last measured end] when the manifest gives no window."""
    if table.num_rows == 0:
        return None, None
    phase = _col(table, "phase", object)
    send = _col(table, "send_time")
    e2e = _col(table, "e2e_s")
    m = phase == "measure"
    if not m.any():
        m = np.ones(len(send), bool)
    ends = send[m] + np.where(np.isfinite(e2e[m]), e2e[m], 0.0)
    return float(np.nanmin(send[m])), float(np.nanmax(ends))


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

    # sort by send time so bootstrap blocks are neighbours in time
    send = _col(table, "send_time")
    order = np.argsort(send, kind="stable")
    if n and not np.all(order == np.arange(n)):
        table = table.take(pa.array(order))
        send = send[order]

    phase = _col(table, "phase", object)
    status = _col(table, "status", object)
    ttft = _col(table, "ttft_s")
    e2e = _col(table, "e2e_s")
    out_tok = _col(table, "output_tokens")
    prompt_tok = _col(table, "prompt_tokens")
    events_col = _col(table, "token_events")
    measure = phase == "measure"
    ok = status == "ok"
    err = status == "error"
    cancelled = status == "cancelled"
    has_first = np.isfinite(ttft)
    t_first = send + np.where(has_first, ttft, 0.0)

    # the gaps, flattened, with the row each belongs to
    if "itl_s" in table.column_names and n:
        itl = table.column("itl_s").combine_chunks()
        gaps = np.asarray(pc.list_flatten(itl).to_numpy(zero_copy_only=False), dtype=np.float64)
        parent = np.asarray(pc.list_parent_indices(itl).to_numpy(), dtype=np.int64)
        counts = np.asarray(pc.list_value_length(itl).fill_null(0).to_numpy(), dtype=np.int64)
    else:
        gaps = np.zeros(0)
        parent = np.zeros(0, np.int64)
        counts = np.zeros(n, np.int64)
    gap_ok = has_first[parent] & np.isfinite(gaps)
    gaps = np.where(gap_ok, gaps, 0.0)
    # arrival time of each event: first token time + cumulative gaps within its request
    cs = np.cumsum(gaps)
    starts = np.cumsum(counts) - counts
    row_base = np.zeros(n)
    has_gaps = counts > 0
    row_base[has_gaps] = (cs - gaps)[starts[has_gaps]]
    arrival = t_first[parent] + (cs - row_base[parent])

    # tokens per event: usage tokens / events where both are known, else the step's median ratio
    events = np.where(events_col > 0, events_col, has_first.astype(float) + counts)
    ratio = np.where(ok & (out_tok > 0) & (events > 0), out_tok / np.maximum(events, 1), np.nan)
    known = ratio[np.isfinite(ratio)]
    default_ratio = float(np.median(known)) if known.size else 1.0
    weight = np.where(np.isfinite(ratio), ratio, default_ratio)

    slices = np.zeros(SLICES)
    if have_window:
        first_in = has_first & (t_first >= w0) & (t_first <= w1)
        gap_in = gap_ok & (arrival >= w0) & (arrival <= w1)
        ev_in = first_in.astype(float) + np.bincount(parent[gap_in], minlength=n).astype(float)
        scale = SLICES / window
        idx = np.concatenate((((t_first[first_in] - w0) * scale), ((arrival[gap_in] - w0) * scale)))
        w = np.concatenate((weight[first_in], weight[parent[gap_in]]))
        slices = np.bincount(np.minimum(idx.astype(np.int64), SLICES - 1), weights=w, minlength=SLICES)
    else:
        ev_in = np.zeros(n)
    tokens_in = ev_in * weight

    # per-request latencies
    tpot = np.where(ok & (out_tok > 1) & np.isfinite(e2e) & has_first, (e2e - ttft) / np.maximum(out_tok - 1, 1),
                    np.nan)
    gap_sum = np.bincount(parent[gap_ok], weights=gaps[gap_ok], minlength=n)
    gap_n = np.bincount(parent[gap_ok], minlength=n)
    mean_gap = np.where(gap_n > 0, gap_sum / np.maximum(gap_n, 1), np.nan)
    # a request without an end (cancelled) was in flight until its last event
    last = np.where(has_first, t_first + np.bincount(parent, weights=gaps, minlength=n), send)
    end = np.where(np.isfinite(e2e), send + e2e, last)

    good = judge_requests(slo, status, ttft, tpot, e2e, gaps, parent, gap_ok, n)

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
    row.update(_pcts(gaps[gap_ok & measure[parent]], "itl"))
    row.update(_pcts(tpot[measure], "tpot"))
    row.update(_pcts(e2e[measure & ok], "e2e"))
    mo = measure & ok
    row["output_tokens_mean"] = float(np.nanmean(out_tok[mo])) if mo.any() and np.isfinite(out_tok[mo]).any() else np.nan
    row["prompt_tokens_mean"] = (float(np.nanmean(prompt_tok[measure])) if measure.any()
                                 and np.isfinite(prompt_tok[measure]).any() else np.nan)
    row["tokens_per_event"] = default_ratio

    kinds = _errors_by_kind(table, err)
    row["error_kinds"] = json.dumps({str(k): int(c) for k, c in zip(kinds.error_kind, kinds["count"])},
                                    sort_keys=True)
    reqs = StepRequests(tokens_in_window=tokens_in, good_tokens_in_window=np.where(good, tokens_in, 0.0),
                        measure=measure, ttft_s=ttft, e2e_s=np.where(ok, e2e, np.nan), tpot_s=tpot,
                        mean_gap_s=mean_gap, ok=ok, slice_tokens=slices)
    return row, reqs, kinds


def _errors_by_kind(table: pa.Table, err: np.ndarray) -> pd.DataFrame:
    if not err.any():
        return pd.DataFrame({"error_kind": pd.Series(dtype=str), "count": pd.Series(dtype=int),
                             "example": pd.Series(dtype=str)})
    kind = _col(table, "error_kind", object)[err]
    msg = _col(table, "error", object)[err]
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
