"""What the server said about a step: gauges, counter rates and histogram quantiles from the scrapes.

The scraped rows (records.METRIC_SCHEMA) are cut to the step's measured window: the scrapes inside
it when there are at least two, otherwise the nearest scrape on either side. Counter deltas follow
docs/metrics.md: within a series, in time order, a value that went down or a scrape marked with a
`ridgeline:counter_reset` row starts a new segment that counts from zero, so a restart adds the new
process's count instead of a negative jump. Histogram quantiles are Prometheus's
`histogram_quantile` over the bucket deltas (linear inside the bucket), summed over label sets
other than `le` (engines, models).
"""

from __future__ import annotations

import json
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
import pyarrow as pa

GAP = "ridgeline:scrape_gap"
UP = "ridgeline:scrape_up"
RESET = "ridgeline:counter_reset"

RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREEMPTIONS = ("vllm:num_preemptions_total",)
GEN_TOKENS = ("vllm:generation_tokens_total",)
PROMPT_TOKENS = ("vllm:prompt_tokens_total",)
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
FLOPS = ("vllm:estimated_flops_per_gpu_total",)
READ_BYTES = ("vllm:estimated_read_bytes_per_gpu_total",)
HISTOGRAMS = {
    "ttft": ("vllm:time_to_first_token_seconds",),
    "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "e2e": ("vllm:e2e_request_latency_seconds",),
    "queue": ("vllm:request_queue_time_seconds",),
}
COUNTERS = PREEMPTIONS + GEN_TOKENS + PROMPT_TOKENS + PREFIX_HITS + PREFIX_QUERIES + FLOPS + READ_BYTES

# every column step_server_metrics returns, so a step without scrapes has the same shape
COLUMNS = (
    ["scrapes_in_window", "scrape_gaps", "counter_resets", "server_running_mean", "server_running_max",
     "server_waiting_mean", "server_waiting_max", "kv_cache_usage_mean", "kv_cache_usage_max", "preemptions",
     "server_generation_tokens_per_s", "server_prompt_tokens_per_s", "prefix_cache_hit_rate",
     "achieved_flops_per_s", "achieved_read_bytes_per_s"]
    + [f"server_{h}_{s}" for h in HISTOGRAMS for s in ("p50_s", "p99_s", "mean_s", "count")]
    + [f"server_{h}_p50_bucket_{e}" for h in ("ttft", "itl") for e in ("lo", "hi")]
)


def empty_metrics() -> dict[str, Any]:
    out: dict[str, Any] = {c: np.nan for c in COLUMNS}
    out["scrapes_in_window"] = 0
    out["scrape_gaps"] = 0
    out["counter_resets"] = 0
    return out


def histogram_quantile(q: float, upper: np.ndarray, cumulative: np.ndarray) -> tuple[float, float, float]:
    """Prometheus's estimate of quantile q from cumulative bucket counts; (value, bucket lo, bucket hi).

    `upper` are the bucket bounds ascending, the last one +Inf. A quantile in the +Inf bucket is
    the highest finite bound; the first bucket interpolates from 0 (or from its bound if negative).
    """
    upper = np.asarray(upper, dtype=float)
    cum = np.maximum.accumulate(np.asarray(cumulative, dtype=float))  # as Prometheus: monotone
    if upper.size < 2 or not np.isinf(upper[-1]) or cum[-1] <= 0 or not 0 <= q <= 1:
        return np.nan, np.nan, np.nan
    rank = q * cum[-1]
    i = int(np.searchsorted(cum, rank, side="left"))
    i = min(i, upper.size - 1)
    if i == upper.size - 1:  # +Inf bucket
        return float(upper[-2]), float(upper[-2]), float("inf")
    lo = 0.0 if i == 0 else float(upper[i - 1])
    if i == 0 and upper[0] <= 0:
        return float(upper[0]), float(upper[0]), float(upper[0])
    c_lo = 0.0 if i == 0 else cum[i - 1]
    span = cum[i] - c_lo
    frac = (rank - c_lo) / span if span > 0 else 1.0
    return lo + (float(upper[i]) - lo) * frac, lo, float(upper[i])


def counter_deltas(times: np.ndarray, keys: np.ndarray, values: np.ndarray, reset_times: np.ndarray,
                   first_scrape: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample increase of cumulative series; returns (order, delta) with order sorting by key, time.

    The first sample of a series adds nothing, unless the series first appeared after the step's
    first scrape (then it counted from zero). A drop, or a sample at a reset-marked scrape, adds its
    whole value: the process restarted and counts from zero.
    """
    if times.size < 2 or np.all(times[1:] >= times[:-1]):  # rows come scrape by scrape: already in time order
        order = np.argsort(keys, kind="stable")
    else:
        order = np.lexsort((times, keys))
    t, k, v = times[order], keys[order], values[order]
    n = len(v)
    delta = np.zeros(n)
    if n == 0:
        return order, delta
    new_series = np.ones(n, bool)
    new_series[1:] = k[1:] != k[:-1]
    prev = np.empty(n)
    prev[0] = np.nan
    prev[1:] = v[:-1]
    reset = np.isin(t, reset_times) if len(reset_times) else np.zeros(n, bool)
    cont = ~new_series
    jump = cont & (reset | (v < prev))
    delta = np.where(cont, v - prev, 0.0)
    delta = np.where(jump, v, delta)
    delta = np.where(new_series & (t > first_scrape + 1e-9), v, delta)
    return order, delta


def _window_times(scrapes: np.ndarray, w0: float, w1: float) -> Optional[tuple[float, float]]:
    if scrapes.size == 0 or not (np.isfinite(w0) and np.isfinite(w1)):
        return None
    inside = scrapes[(scrapes >= w0) & (scrapes <= w1)]
    if inside.size >= 2:
        return float(inside[0]), float(inside[-1])
    before = scrapes[scrapes <= w0]
    after = scrapes[scrapes >= w1]
    a = float(before[-1]) if before.size else float(scrapes[0])
    b = float(after[0]) if after.size else float(scrapes[-1])
    return (a, b) if b > a else None


class _Step:
    """One step's scraped rows as numpy arrays, indexed by metric name once."""

    def __init__(self, table: "pa.Table"):
        table = table.unify_dictionaries().combine_chunks() if table.num_rows else table
        metric = dictionary(table.column("metric"))
        labels = dictionary(table.column("labels"))
        metric_codes = np.asarray(metric.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        metric_names = metric.dictionary.to_pylist()
        self.time = np.asarray(table.column("time").to_numpy(), dtype=float)
        self.value = np.asarray(table.column("value").to_numpy(), dtype=float)
        self.label_codes = np.asarray(labels.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        self.label_names = np.asarray(labels.dictionary.to_pylist(), dtype=object)
        order = np.argsort(metric_codes, kind="stable")
        bounds = np.searchsorted(metric_codes[order], np.arange(len(metric_names) + 1))
        self.rows = {str(name): order[bounds[k]:bounds[k + 1]] for k, name in enumerate(metric_names)
                     if bounds[k + 1] > bounds[k]}
        self.present = set(self.rows)
        up = self.time[self.rows.get(UP, [])]
        data = np.ones(len(self.time), bool)
        for marker in (UP, GAP, RESET, "ridgeline:scrape_duration_seconds"):
            data[self.rows.get(marker, [])] = False
        self.scrapes = np.unique(up) if up.size else np.unique(self.time[data])
        self.resets = np.unique(self.time[self.rows.get(RESET, [])])
        self.gaps = np.unique(self.time[self.rows.get(GAP, [])])
        self.first = float(self.scrapes[0]) if self.scrapes.size else np.nan

    def pick(self, names: tuple[str, ...]) -> Optional[str]:
        for n in names:
            if n in self.present:
                return n
        return None

    def gauge(self, names: tuple[str, ...], how: str) -> tuple[np.ndarray, np.ndarray]:
        """(scrape times, the sum or mean of the gauge over its label sets at each)."""
        name = self.pick(names)
        if name is None:
            return np.zeros(0), np.zeros(0)
        idx = self.rows[name]
        times, inv = np.unique(self.time[idx], return_inverse=True)
        total = np.bincount(inv, weights=self.value[idx], minlength=times.size)
        if how == "mean":
            total = total / np.bincount(inv, minlength=times.size)
        return times, total

    def deltas(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(time, label code, delta) of every sample of a cumulative series."""
        idx = self.rows[name]
        t = self.time[idx]
        codes = self.label_codes[idx]
        order, d = counter_deltas(t, codes, self.value[idx], self.resets, self.first)
        return t[order], codes[order], d

    def increase(self, names: tuple[str, ...], a: float, b: float) -> float:
        name = self.pick(names)
        if name is None:
            return np.nan
        t, _, d = self.deltas(name)
        return float(d[(t > a) & (t <= b)].sum())

    def never_counted(self, names: tuple[str, ...]) -> bool:
        """Whether a counter is absent or every sample of it in the step reads zero."""
        name = self.pick(names)
        return name is None or not np.any(self.value[self.rows[name]] != 0.0)

    def increase_per_engine(self, names: tuple[str, ...], a: float, b: float) -> float:
        """The increase of a per-GPU counter: summed within an engine, averaged over engines.

        Engines of a data-parallel server each drive their own GPUs, so adding their counts would
        give the FLOPs of several GPUs, not of one.
        """
        name = self.pick(names)
        if name is None:
            return np.nan
        labels, per_label = self.per_label(name, a, b)
        if labels.size == 0:
            return 0.0
        engine = [_label(x, "engine") or "" for x in labels]
        return float(pd.Series(per_label).groupby(engine).sum().mean())

    def per_label(self, name: str, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
        """(label sets, the increase of each in (a, b]) of a cumulative series."""
        t, codes, d = self.deltas(name)
        m = (t > a) & (t <= b)
        used, inv = np.unique(codes[m], return_inverse=True)
        return self.label_names[used], np.bincount(inv, weights=d[m], minlength=used.size)


def dictionary(col: "pa.ChunkedArray") -> "pa.DictionaryArray":
    """A string column as one dictionary array (as Parquet stores it when read with read_dictionary)."""
    arr = col.chunk(0) if col.num_chunks == 1 else pa.concat_arrays(col.chunks)
    return arr if pa.types.is_dictionary(arr.type) else arr.dictionary_encode()


def scraped(rows: Union[None, pd.DataFrame, "pa.Table"]) -> Optional["_Step"]:
    """One step's scraped rows (a METRIC_SCHEMA table or frame), indexed once (None: no rows)."""
    if rows is None:
        return None
    if isinstance(rows, pd.DataFrame):
        if rows.empty:
            return None
        rows = pa.Table.from_pandas(rows[["time", "metric", "labels", "value"]], preserve_index=False)
    if rows.num_rows == 0:
        return None
    return _Step(rows)


def step_server_metrics(st: Optional["_Step"], w0: float, w1: float) -> dict[str, Any]:
    """The server-side figures of one step's window (NaN where the server exposed nothing)."""
    out = empty_metrics()
    if st is None:
        return out
    win = _window_times(st.scrapes, w0, w1)
    if win is None:
        return out
    a, b = win
    span = b - a
    out["scrapes_in_window"] = int(((st.scrapes >= a) & (st.scrapes <= b)).sum())
    out["scrape_gaps"] = int(((st.gaps > a) & (st.gaps < b)).sum())
    out["counter_resets"] = int(((st.resets > a) & (st.resets <= b)).sum())

    for key, names, how in (("server_running", RUNNING, "sum"), ("server_waiting", WAITING, "sum"),
                            ("kv_cache_usage", KV_USAGE, "mean")):
        times, vals = st.gauge(names, how)
        vals = vals[(times >= a) & (times <= b)]
        if vals.size:
            out[f"{key}_mean"] = float(vals.mean())
            out[f"{key}_max"] = float(vals.max())

    out["preemptions"] = st.increase(PREEMPTIONS, a, b)
    gen = st.increase(GEN_TOKENS, a, b)
    out["server_generation_tokens_per_s"] = gen / span
    out["server_prompt_tokens_per_s"] = st.increase(PROMPT_TOKENS, a, b) / span
    hits, queries = st.increase(PREFIX_HITS, a, b), st.increase(PREFIX_QUERIES, a, b)
    out["prefix_cache_hit_rate"] = hits / queries if queries and queries > 0 else np.nan
    # a counter that never left zero was not filled (vLLM fills these only with --enable-mfu-metrics):
    # missing, not a measurement of zero work
    for key, names in (("achieved_flops_per_s", FLOPS), ("achieved_read_bytes_per_s", READ_BYTES)):
        out[key] = np.nan if st.never_counted(names) else st.increase_per_engine(names, a, b) / span

    for h, bases in HISTOGRAMS.items():
        base = st.pick(tuple(n + "_bucket" for n in bases))
        if base is None:
            continue
        stem = base[: -len("_bucket")]
        upper, cum = bucket_deltas(st, base, a, b)
        if upper.size and cum[-1] > 0:
            for q, tag in ((0.5, "p50_s"), (0.99, "p99_s")):
                val, lo, hi = histogram_quantile(q, upper, cum)
                out[f"server_{h}_{tag}"] = val
                if tag == "p50_s" and h in ("ttft", "itl"):
                    out[f"server_{h}_p50_bucket_lo"], out[f"server_{h}_p50_bucket_hi"] = lo, hi
            out[f"server_{h}_count"] = float(cum[-1])
        total, count = st.increase((stem + "_sum",), a, b), st.increase((stem + "_count",), a, b)
        if count and count > 0:
            out[f"server_{h}_mean_s"] = total / count
    return out


def bucket_deltas(st: "_Step", bucket_name: str, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Bucket bounds (ascending, ending +Inf) and the cumulative count increase of each in (a, b]."""
    labels, per_label = st.per_label(bucket_name, a, b)
    if labels.size == 0:
        return np.zeros(0), np.zeros(0)
    le = np.array([_le(x) for x in labels], dtype=float)
    keep = ~np.isnan(le)
    bounds, inv_le = np.unique(le[keep], return_inverse=True)
    per_le = np.bincount(inv_le, weights=per_label[keep], minlength=bounds.size)
    if bounds.size == 0 or not np.isposinf(bounds[-1]):
        return np.zeros(0), np.zeros(0)
    return bounds, per_le


def _label(labels: str, key: str) -> Optional[str]:
    try:
        v = json.loads(labels).get(key)
    except (ValueError, TypeError, AttributeError):
        return None
    return None if v is None else str(v)


def _le(labels: str) -> float:
    v = _label(labels, "le")
    try:
        return float(v) if v is not None else np.nan
    except ValueError:
        return np.nan


SERIES_COLUMNS = ["time", "running", "waiting", "kv_cache_usage", "generation_tokens_per_s"]


def step_series(st: Optional["_Step"]) -> pd.DataFrame:
    """Per scrape: requests running and waiting, KV-cache usage and generation tokens/s (for charts)."""
    cols = SERIES_COLUMNS
    if st is None:
        return pd.DataFrame(columns=cols)
    parts = {}
    for key, names, how in (("running", RUNNING, "sum"), ("waiting", WAITING, "sum"),
                            ("kv_cache_usage", KV_USAGE, "mean")):
        times, vals = st.gauge(names, how)
        parts[key] = pd.Series(vals, index=times)
    name = st.pick(GEN_TOKENS)
    if name is not None:
        t, _, d = st.deltas(name)
        times, inv = np.unique(t, return_inverse=True)
        per_t = np.bincount(inv, weights=d, minlength=times.size)
        dt = np.diff(times, prepend=np.nan)
        parts["generation_tokens_per_s"] = pd.Series(per_t / dt, index=times)
    out = pd.DataFrame(parts)
    out.index.name = "time"
    out = out.reset_index()
    for c in cols:
        if c not in out:
            out[c] = np.nan
    return out[cols]
