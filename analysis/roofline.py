"""Each measured step against its roofline bound: the batch it ran, the bound, the regime, the share.

The batch of a step is the mean number of requests running (the server's own gauge; without
scrapes, the client's mean requests in flight). Its context is the mean prompt plus half the mean
output (a decoding sequence is on average half way through). The measured time of a decode step
is the mean of the inter-token gaps that ended inside the window (any request's).
core.hardware.roofline gives the lower bound of a decode step of that batch and context for the variant's weights and KV-cache dtype on the plan's GPU, and whether it is
limited by memory bandwidth or by compute; the ridge batch is where the two limits meet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from analysis.data import RunInfo
from core.hardware.catalog import CatalogError, get_gpu, load_model
from core.hardware.roofline import bound, compute_dtype, decode_step_cost, ridge_batch

COLUMNS = ["variant", "step", "level", "batch", "batch_source", "context_tokens", "bound_s", "memory_s",
           "compute_s", "regime", "measured_s", "bound_share", "weight_byte_share", "bound_tokens_per_s",
           "measured_tokens_per_s", "achieved_flops_per_s", "achieved_read_bytes_per_s", "achieved_flops_share",
           "achieved_bandwidth_share"]


@dataclass
class Roofline:
    """Per-step bounds, each variant's ridge batch, and why the roofline could not be drawn if not."""

    steps: pd.DataFrame
    ridge: dict[str, float] = field(default_factory=dict)
    context_tokens: Optional[float] = None
    gpu: Optional[Any] = None
    model: Optional[Any] = None
    kinds: dict[str, tuple[str, str]] = field(default_factory=dict)  # variant -> (weights, kv dtype)
    unavailable: Optional[str] = None

    def curve(self, variant: str, batches: np.ndarray) -> np.ndarray:
        """Bound tokens/s of a decode step at each batch (for the chart)."""
        weights, kv = self.kinds[variant]
        ctx = self.context_tokens or 0.0
        return np.array([b / bound(decode_step_cost(self.model, weights, kv, float(b), ctx), self.gpu, weights).time_s
                         for b in batches])


def _context(row: pd.Series, info: RunInfo) -> float:
    prompt = row.get("prompt_tokens_mean")
    if not (isinstance(prompt, float) and math.isfinite(prompt)):
        prompt = info.prompt_tokens_hint or 0.0
    out = row.get("output_tokens_mean")
    if not (isinstance(out, float) and math.isfinite(out)):
        out = info.output_tokens_hint or 0.0
    return float(prompt) + float(out) / 2.0


def analyse_roofline(info: RunInfo, steps: pd.DataFrame) -> Roofline:
    """Bounds for every step; a Roofline with `unavailable` set when the model or GPU is unknown."""
    try:
        gpu = get_gpu(info.gpu, info.gpu_overrides or None)
        model = load_model(info.model)
    except (CatalogError, OSError, ValueError) as exc:
        return Roofline(pd.DataFrame(columns=COLUMNS), unavailable=str(exc))

    kinds = {v: (vi.weights, vi.kv_cache_dtype) for v, vi in info.variant_info.items()}
    rows = []
    contexts = []
    for r in steps.itertuples(index=False):
        row = r._asdict()
        if r.variant not in kinds:
            continue
        weights, kv = kinds[r.variant]
        batch, source = row.get("server_running_mean"), "server"
        if not (isinstance(batch, float) and math.isfinite(batch) and batch > 0):
            batch, source = row.get("client_in_flight_mean"), "client"
        measured = row.get("window_itl_mean_s")
        if not (isinstance(measured, float) and math.isfinite(measured)):
            measured = row.get("itl_mean_s")
        ctx = _context(pd.Series(row), info)
        contexts.append(ctx)
        out = {c: np.nan for c in COLUMNS}
        out.update(variant=r.variant, step=r.step, level=row.get("level"), context_tokens=ctx, batch_source=source,
                   regime=None)
        if isinstance(batch, float) and math.isfinite(batch) and batch > 0:
            try:
                cost = decode_step_cost(model, weights, kv, batch, ctx)
                b = bound(cost, gpu, weights)
            except (ValueError, KeyError) as exc:
                return Roofline(pd.DataFrame(columns=COLUMNS), unavailable=f"variant {r.variant}: {exc}")
            out.update(batch=batch, bound_s=b.time_s, memory_s=b.memory_s, compute_s=b.compute_s, regime=b.regime,
                       weight_byte_share=cost.weight_bytes / cost.total_bytes, bound_tokens_per_s=batch / b.time_s)
            if isinstance(measured, float) and math.isfinite(measured) and measured > 0:
                out.update(measured_s=measured, bound_share=b.time_s / measured,
                           measured_tokens_per_s=batch / measured)
        flops, read = row.get("achieved_flops_per_s"), row.get("achieved_read_bytes_per_s")

        peak_flops = gpu.flops(compute_dtype(weights, gpu), False)
        if isinstance(flops, float) and math.isfinite(flops):
            out["achieved_flops_per_s"] = flops
            if peak_flops:
                out["achieved_flops_share"] = flops / peak_flops
        if isinstance(read, float) and math.isfinite(read):
            out["achieved_read_bytes_per_s"] = read
            out["achieved_bandwidth_share"] = read / gpu.bandwidth(False)
        rows.append(out)
    ctx_all = float(np.nanmean(contexts)) if contexts else (info.prompt_tokens_hint or 0.0)
    ridge = {}
    for v, (weights, kv) in kinds.items():
        try:
            ridge[v] = ridge_batch(model, gpu, weights, kv, ctx_all)
        except (ValueError, KeyError):
            ridge[v] = math.nan
    return Roofline(pd.DataFrame(rows, columns=COLUMNS), ridge=ridge, context_tokens=ctx_all, gpu=gpu, model=model,
                    kinds=kinds)


def predicted_speedup(roof: Roofline, variant: str, baseline: str, batch: float) -> Optional[float]:
    """The speedup the bound alone predicts at a batch: baseline bound time / variant bound time."""
    if roof.unavailable or variant not in roof.kinds or baseline not in roof.kinds:
        return None

    ctx = roof.context_tokens or 0.0
    t = {}
    for v in (variant, baseline):
        w, kv = roof.kinds[v]
        t[v] = bound(decode_step_cost(roof.model, w, kv, batch, ctx), roof.gpu, w)
    return t[baseline].time_s / t[variant].time_s


def batch_at(roof: Roofline, variant: str, level: float) -> Optional[float]:
    """The batch a variant ran at a load level, interpolated in log2 between its steps."""
    s = roof.steps[(roof.steps.variant == variant) & roof.steps.batch.notna() & roof.steps.level.notna()]
    if s.empty:
        return None
    g = s.groupby("level").batch.mean().sort_index()
    x = np.log2(g.index.to_numpy(dtype=float))
    return float(np.interp(math.log2(level), x, g.to_numpy(dtype=float)))


def explain(roof: Roofline, baseline: str, variant: str, level: Optional[float], threshold: float,
            level_word: str) -> Optional[str]:
    """One sentence on why a variant's speedup fell below a threshold, in roofline terms."""
    if roof.unavailable or level is None or baseline not in roof.kinds:
        return None
    ridge_b = roof.ridge.get(baseline)
    batch = batch_at(roof, baseline, level)
    if batch is None or ridge_b is None:
        return None

    w, kv = roof.kinds[baseline]
    cost = decode_step_cost(roof.model, w, kv, batch, roof.context_tokens or 0.0)
    regime = bound(cost, roof.gpu, w).regime
    share = cost.weight_bytes / cost.total_bytes
    pred = predicted_speedup(roof, variant, baseline, batch)
    ridge_txt = (f"ridge batch about {ridge_b:.0f}" if math.isfinite(ridge_b)
                 else "no ridge: its KV-cache reads grow faster than its FLOPs")
    head = (f"{variant} fell below {threshold:g}x at {level_word} {level:.0f}, where {baseline} ran batches of "
            f"about {batch:.0f} ({ridge_txt}, context {roof.context_tokens or 0:.0f} tokens)")
    if regime == "compute":
        why = "the decode step was compute-bound there, so fewer bytes no longer shorten it"
    elif share < 0.5:
        why = (f"the step was still memory-bound, but the weights were only {share:.0%} of the bytes read "
               f"(the KV cache and activations the rest), so smaller weights save less")
    else:
        why = (f"the step was still memory-bound with the weights {share:.0%} of the bytes read, so the gap to "
               f"the bound is overhead the bound does not count (kernels, scheduling, dequantization)")
    pred_txt = f"; the bound alone predicts {pred:.2f}x at that batch" if pred is not None else ""
    return f"{head}: {why}{pred_txt}."
