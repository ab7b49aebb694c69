"""Results directories built from a model instead of a load test, for tests and the scale benchmark.

A closed-loop step is modelled as `concurrency` users sending requests back to back: each request
waits `ttft_s` for its first token, then streams its other tokens `gap_s` apart (with optional
jitter). Because the answer is known in advance (about concurrency / gap_s tokens per second when
ttft_s equals gap_s), the analysis can be checked against it. The files are written through
RunDir exactly as the load generator writes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pyarrow as pa

from core.records import METRIC_SCHEMA, REQUEST_SCHEMA, StepInfo
from core.results import RunDir

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)


@dataclass
class StepModel:
    """One closed-loop step: users, per-token gap, first-token time, output and prompt lengths."""

    concurrency: int
    gap_s: float
    ttft_s: float
    output_tokens: Union[int, tuple[int, int]] = 128  # fixed, or (min, max) uniform
    prompt_tokens: int = 512
    jitter: float = 0.0  # relative spread of each gap (uniform in +-jitter)
    warmup_s: float = 1.0
    duration_s: float = 10.0
    errors: int = 0  # measured requests to turn into errors (error_kind "http")
    error_message: str = "HTTP 500: internal error"
    power_w: Optional[float] = None  # constant power per GPU during the step (telemetry); None: no telemetry
    clock_reasons: int = 0  # NVML clocks-event reason bitmask reported at every sample
    repeat: int = 0  # which repeat of its level (sweep.repeats) the step is


def _lengths(spec: Union[int, tuple[int, int]], n: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(spec, tuple):
        return rng.integers(spec[0], spec[1] + 1, size=n)
    return np.full(n, int(spec))


def closed_loop(variant: str, step: int, m: StepModel, t_start: float, rng: np.random.Generator
                ) -> tuple[pa.Table, StepInfo, dict[str, np.ndarray]]:
    """The request rows of one modelled step, its StepInfo, and what metrics_for needs."""
    w0 = t_start + m.warmup_s
    w1 = w0 + m.duration_s
    min_dur = m.ttft_s + (max(1, (min(m.output_tokens) if isinstance(m.output_tokens, tuple) else m.output_tokens)) - 1) * m.gap_s * (1 - m.jitter)
    per_user = int((w1 - t_start) / max(min_dur, 1e-6)) + 2
    n = per_user * m.concurrency
    L = _lengths(m.output_tokens, n, rng)
    counts = np.maximum(L - 1, 0)
    total = int(counts.sum())
    gaps = np.full(total, m.gap_s, dtype=np.float64)
    if m.jitter:
        gaps *= 1.0 + rng.uniform(-m.jitter, m.jitter, size=total)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    sums = np.zeros(n)
    nz = counts > 0
    sums[nz] = np.add.reduceat(gaps, offsets[:-1][nz]) if total else 0.0
    dur = m.ttft_s + sums
    # users start a little apart; each sends its next request when the last one ends
    dur_u = dur.reshape(m.concurrency, per_user)
    starts = t_start + np.linspace(0, min(0.05, m.warmup_s / 2), m.concurrency)[:, None]
    send = starts + np.concatenate((np.zeros((m.concurrency, 1)), np.cumsum(dur_u, axis=1)[:, :-1]), axis=1)
    send = send.reshape(-1)
    keep = send < w1  # the driver stops sending at the window's end; what was sent finishes (drain)
    idx = np.nonzero(keep)[0]
    send = send[idx]
    L, dur, counts = L[idx], dur[idx], counts[idx]
    gap_idx = _ranges(offsets[idx], counts)
    kept_gaps = gaps[gap_idx].astype(np.float32)
    new_off = np.concatenate(([0], np.cumsum(counts))).astype(np.int32)
    phase = np.where(send < w0, "warmup", "measure")
    status = np.full(idx.size, "ok", dtype=object)
    error_kind = np.full(idx.size, None, dtype=object)
    error = np.full(idx.size, None, dtype=object)
    ttft = np.full(idx.size, m.ttft_s)
    e2e = dur.copy()
    out_tok = L.astype(np.float64)
    if m.errors:
        bad = np.nonzero(phase == "measure")[0][: m.errors]
        status[bad] = "error"
        error_kind[bad] = "http"
        error[bad] = m.error_message
        ttft[bad] = np.nan
        e2e[bad] = 0.001
        out_tok[bad] = np.nan
    itl = pa.ListArray.from_arrays(pa.array(new_off), pa.array(kept_gaps, pa.float32()))
    if m.errors:  # failed requests streamed nothing
        mask = np.zeros(idx.size, bool)
        mask[bad] = True
        itl = pa.ListArray.from_arrays(pa.array(new_off), pa.array(kept_gaps, pa.float32()),
                                       mask=pa.array(mask))
    k = idx.size
    table = pa.table({
        "variant": pa.array([variant] * k, pa.string()),
        "step": pa.array(np.full(k, step, np.int32)),
        "concurrency": pa.array(np.full(k, m.concurrency, np.int32)),
        "rate": pa.nulls(k, pa.float64()),
        "request_id": pa.array([f"{variant}-{step}-{i}" for i in range(k)], pa.string()),
        "phase": pa.array(phase.tolist(), pa.string()),
        "send_time": pa.array(send),
        "scheduled_time": pa.nulls(k, pa.float64()),
        "ttft_s": pa.array(ttft, pa.float64(), from_pandas=True),
        "itl_s": itl,
        "e2e_s": pa.array(e2e),
        "prompt_tokens": pa.array(np.full(k, m.prompt_tokens, np.int32)),
        "output_tokens": pa.array(out_tok, pa.float64(), from_pandas=True).cast(pa.int32()),
        "token_events": pa.array(np.where(status == "ok", L, 0).astype(np.int32)),
        "status": pa.array(status.tolist(), pa.string()),
        "error_kind": pa.array(error_kind.tolist(), pa.string()),
        "error": pa.array(error.tolist(), pa.string()),
        "http_status": pa.array(np.where(status == "ok", 200, 500).astype(np.int32)),
        "worker": pa.array([""] * k, pa.string()),
    }, schema=REQUEST_SCHEMA)
    end = float(np.max(send + e2e)) if k else w1
    info = StepInfo(variant=variant, step=step, concurrency=m.concurrency, rate=None, status="complete",
                    started=t_start, ended=end, window_start=w0, window_end=w1, sent=k, recorded=k,
                    repeat=m.repeat)
    extra = {"send": send, "ttft": ttft, "e2e": e2e, "L": L, "gaps": kept_gaps, "counts": counts, "ok": status == "ok"}
    return table, info, extra


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [s, s + l) without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    block_start = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(np.asarray(starts, np.int64) - block_start, lengths)


def metrics_for(variant: str, step: int, info: StepInfo, extra: dict[str, np.ndarray], concurrency: int,
                interval_s: float = 1.0, model_name: str = "m", padding: int = 0, flops_per_token: float = 0.0,
                read_bytes_per_token: float = 0.0) -> pa.Table:
    """Scrapes of a vLLM-like /metrics page over the step: gauges, token counters, TTFT and ITL histograms.

    `padding` adds that many rows per scrape of series the analysis does not use, so a page has the
    size of a real vLLM one (several hundred samples). `flops_per_token` and `read_bytes_per_token`
    (when positive) add vLLM's estimated FLOP and read-byte counters, proportional to the generation
    tokens, so the achieved rates are known: those per token times the generation tokens/s.
    """
    t0, t1 = info.started, (info.ended or info.window_end or info.started) + interval_s
    times = np.arange(t0, t1 + 1e-9, interval_s)
    send, ttft, e2e, L, ok = extra["send"], extra["ttft"], extra["e2e"], extra["L"], extra["ok"]
    first = send + np.nan_to_num(ttft, nan=0.0)
    end = send + e2e
    rows: dict[str, list] = {k: [] for k in ("time", "metric", "labels", "value")}
    base = f'"engine":"0","model_name":"{model_name}"'

    def add(metric: str, labels: str, values: np.ndarray) -> None:
        rows["time"].append(times)
        rows["metric"].append(np.full(times.size, metric, dtype=object))
        rows["labels"].append(np.full(times.size, labels, dtype=object))
        rows["value"].append(np.asarray(values, dtype=float))

    running = ((send[None, :] <= times[:, None]) & (end[None, :] > times[:, None])).sum(axis=1)
    add("ridgeline:scrape_up", "{}", np.ones(times.size))
    add("vllm:num_requests_running", "{" + base + "}", running)
    add("vllm:num_requests_waiting", "{" + base + "}", np.zeros(times.size))
    add("vllm:kv_cache_usage_perc", "{" + base + "}", running / 1024.0)
    # generation tokens: each finished request counts its tokens when it ends (a coarse but monotone model)
    order = np.argsort(end)
    done_tokens = np.concatenate(([0.0], np.cumsum(np.where(ok, L, 0)[order])))
    gen = done_tokens[np.searchsorted(end[order], times, side="right")]
    add("vllm:generation_tokens_total", "{" + base + "}", gen)
    add("vllm:num_preemptions_total", "{" + base + "}", np.zeros(times.size))
    if flops_per_token > 0:
        add("vllm:estimated_flops_per_gpu_total", "{" + base + "}", gen * flops_per_token)
    if read_bytes_per_token > 0:
        add("vllm:estimated_read_bytes_per_gpu_total", "{" + base + "}", gen * read_bytes_per_token)
    for le in TTFT_BUCKETS + (np.inf,):
        sel = np.sort(first[ok & (ttft <= le)])
        lab = "{" + base + f',"le":"{"+Inf" if np.isinf(le) else le}"' + "}"
        add("vllm:time_to_first_token_seconds_bucket", lab, np.searchsorted(sel, times, side="right"))
    counts = extra["counts"]
    parent = np.repeat(np.arange(send.size), counts)
    bidx = np.searchsorted(np.asarray(ITL_BUCKETS), extra["gaps"], side="left")
    nb = len(ITL_BUCKETS) + 1
    per_req = np.bincount(parent * nb + bidx, minlength=send.size * nb).reshape(send.size, nb).cumsum(axis=1)
    cum_req = np.vstack((np.zeros((1, nb)), np.cumsum(per_req[order], axis=0)))
    at = cum_req[np.searchsorted(end[order], times, side="right")]
    for j, le in enumerate(ITL_BUCKETS + (np.inf,)):
        lab = "{" + base + f',"le":"{"+Inf" if np.isinf(le) else le}"' + "}"
        add("vllm:inter_token_latency_seconds_bucket", lab, at[:, j])
    for j in range(padding):
        add("vllm:request_params_max_tokens_bucket", "{" + base + f',"le":"{j}"' + "}", np.arange(times.size, dtype=float))
    return _metric_table(variant, step, rows)


def _metric_table(variant: str, step: int, rows: dict[str, list]) -> pa.Table:
    n = sum(len(x) for x in rows["time"])
    return pa.table({
        "time": pa.array(np.concatenate(rows["time"])),
        "variant": pa.array([variant] * n, pa.string()),
        "step": pa.array(np.full(n, step, np.int32)),
        "metric": pa.array(np.concatenate(rows["metric"]).tolist(), pa.string()),
        "labels": pa.array(np.concatenate(rows["labels"]).tolist(), pa.string()),
        "value": pa.array(np.concatenate(rows["value"])),
    }, schema=METRIC_SCHEMA)


def telemetry_for(variant: str, step: int, info: StepInfo, m: StepModel, gpus: int = 1, source: str = "modelled",
                  interval_s: float = 1.0) -> pa.Table:
    """GPU samples over the step: each GPU draws `m.power_w` throughout, so a window's energy is
    power x GPUs x its length; the cumulative energy counter and the power readings agree."""
    from core import telemetry as tm

    t0 = info.started - interval_s
    times = np.arange(t0, (info.ended or info.window_end or info.started) + 2 * interval_s, interval_s)
    rows: dict[str, list] = {k: [] for k in ("time", "metric", "labels", "value")}
    watts = float(m.power_w or 0.0)
    for g in range(gpus):
        lab = tm.labels_json({"gpu": str(g), "source": source})
        for metric, values in ((tm.POWER, np.full(times.size, watts)), (tm.ENERGY, 1e6 + watts * (times - t0)),
                               (tm.CLOCK_REASONS, np.full(times.size, float(m.clock_reasons))),
                               (tm.SM_CLOCK, np.full(times.size, 1980.0)), (tm.UTIL, np.full(times.size, 97.0))):
            rows["time"].append(times)
            rows["metric"].append(np.full(times.size, metric, dtype=object))
            rows["labels"].append(np.full(times.size, lab, dtype=object))
            rows["value"].append(values)
    return _metric_table(variant, step, rows)


def as_rate_step(table: pa.Table, info: StepInfo, rate: float, lateness_s: Union[float, np.ndarray] = 0.0
                 ) -> tuple[pa.Table, StepInfo]:
    """A modelled step relabelled as an open-loop step at `rate`: each request was due
    `lateness_s` (one value, or one per row) before it was sent."""
    k = table.num_rows
    late = np.broadcast_to(np.asarray(lateness_s, dtype=float), (k,))
    send = table.column("send_time").to_numpy()
    for name, col in (("concurrency", pa.nulls(k, pa.int32())), ("rate", pa.array(np.full(k, rate))),
                      ("scheduled_time", pa.array(send - late))):
        table = table.set_column(table.schema.get_field_index(name), name, col)
    info.concurrency, info.rate = None, rate
    return table, info


def manifest(plan: dict[str, Any], steps: list[StepInfo], servers: Optional[dict[str, Any]] = None,
             backend: str = "emulator", warnings: Optional[list[str]] = None, **extra: Any) -> dict[str, Any]:
    """A manifest in the shape loadtest.manifest writes."""
    now = time.time()
    m = {"format": 1, "tool": "ridgeline", "ridgeline_version": "0.0.0+test", "backend": backend, "plan": plan,
         "plan_source": None, "host": {"hostname": "test", "python": "3.11", "cpus": 2}, "versions": {},
         "gpu": None, "servers": servers or {}, "scenario": {}, "started": now, "started_iso": "", "ended": now,
         "status": "complete", "steps": [s.to_dict() for s in steps], "warnings": warnings or []}
    m.update(extra)
    return m


def plan_dict(variants: list[str], baseline: Optional[str] = None, **overrides: Any) -> dict[str, Any]:
    """A plan (as the manifest stores it) for the named variants, validated by the real schema."""
    from core.plan import Plan

    data: dict[str, Any] = {"name": "synthetic", "variants": [{"name": v} for v in variants]}
    if baseline:
        data["baseline"] = baseline
    data.update(overrides)
    return Plan.model_validate(data).model_dump(mode="json")


@dataclass
class RunModel:
    """A whole modelled run: per variant, per concurrency, a StepModel."""

    steps: dict[str, list[StepModel]]
    backend: str = "emulator"
    plan: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, Any] = field(default_factory=dict)
    with_metrics: bool = True
    metric_padding: int = 0  # extra rows per scrape (see metrics_for)
    flops_per_token: float = 0.0  # vLLM's estimated FLOP counter (see metrics_for)
    read_bytes_per_token: float = 0.0
    gpus: int = 1  # GPUs sampled per step where a StepModel sets power_w
    telemetry_source: str = "modelled"
    seed: int = 0


def build_run(path: Union[str, Path], model: RunModel) -> RunDir:
    """Write a modelled run as a results directory (requests, metrics, manifest)."""
    run = RunDir(path).create()
    rng = np.random.default_rng(model.seed)
    infos = []
    t = 1.8e9
    for variant, steps in model.steps.items():
        for i, m in enumerate(steps):
            table, info, extra = closed_loop(variant, i, m, t, rng)
            _write(run, variant, i, table)
            if model.with_metrics:
                run.write_metrics(variant, i, metrics_for(variant, i, info, extra, m.concurrency,
                                                          padding=model.metric_padding,
                                                          flops_per_token=model.flops_per_token,
                                                          read_bytes_per_token=model.read_bytes_per_token))
            if m.power_w is not None:
                from core.telemetry import write_telemetry

                write_telemetry(run, variant, i, telemetry_for(variant, i, info, m, model.gpus, model.telemetry_source))
            infos.append(info)
            t = (info.ended or t) + 1.0
    plan = model.plan or plan_dict(list(model.steps))
    run.write_manifest(manifest(plan, infos, model.servers, model.backend))
    return run


def _write(run: RunDir, variant: str, step: int, table: pa.Table) -> None:
    from core.results import atomic_write_table

    atomic_write_table(run.requests_path(variant, step), table)
