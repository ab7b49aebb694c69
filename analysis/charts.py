"""The report's charts as PNG files (matplotlib, no display): one function per chart.

Every function takes an Analysis and a path, writes the PNG and returns the path, or None when
there is nothing to draw. Load levels are on a log2 axis (concurrency doubles from step to step);
each variant keeps one colour in every chart.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from analysis.fmt import label
from analysis.plotting import pyplot as _plt
from analysis.plotting import save as _save
from core.backends import is_modelled
from analysis.pipeline import Analysis
from analysis.speedup import SLO_ATTAINMENT
from analysis.summary import threshold_key



def colours(a: Analysis) -> dict[str, str]:
    cycle = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
             "#bcbd22"]
    return {v: cycle[i % len(cycle)] for i, v in enumerate(a.info.variants)}


def _xaxis(ax, a: Analysis, levels: pd.Series) -> None:
    lv = levels.dropna()
    lv = lv[lv > 0]
    ax.set_xlabel(a.info.profile.axis)
    if len(lv) and lv.max() / lv.min() >= 4:
        ax.set_xscale("log", base=2)
        ticks = sorted(set(lv.tolist()))
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.grid(True, alpha=0.3)


def _plain_log(ax, axis: str = "y") -> None:
    """Log scale with plain-number tick labels (mathtext labels are slow to lay out)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def _finite(values: object, positive: bool = False) -> np.ndarray:
    x = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(float)
    x = x[np.isfinite(x)]
    return x[x > 0] if positive else x


def why_empty(a: Analysis) -> str:
    """Why a run's curves have no point, in the words a reader can act on."""
    st = a.steps
    if not (st.status == "complete").any():
        return "no step completed (see the warnings)"
    done = st[st.status == "complete"]
    if done.requests.fillna(0).sum() == 0:
        return ("no request finished inside a measured window: the window is shorter than one request "
                "(lengthen sweep.duration_s or use sweep.requests)")
    return ("no measured request finished inside its window (a window shorter than one request leaves only "
            "cancelled ones: lengthen sweep.duration_s or use sweep.requests)")


def _note(ax, text: str) -> None:
    """An empty panel that says why it is empty, instead of axes with nothing on them."""
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(label(text, 400), 48)), transform=ax.transAxes, ha="center",
            va="center", fontsize=9, color="dimgrey")
    ax.set_xticks([])
    ax.set_yticks([])


def _title(a: Analysis, text: str) -> str:
    return text + (f" ({a.info.backend}: modelled)" if is_modelled(a.info.backend) else "")


def throughput_chart(a: Analysis, path: Path) -> Optional[Path]:
    lv = a.levels
    plt = _plt()
    col = colours(a)
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    if lv.empty or not len(_finite(lv.output_tokens_per_s)):
        _note(ax, f"No throughput to plot: {why_empty(a)}.")
        ax.set_title(_title(a, "Throughput against load"), fontsize=10)
        return _save(fig, path, left=0.11)
    for v in a.info.variants:
        g = lv[lv.variant == v].sort_values("level")
        if g.empty:
            continue
        y = g.output_tokens_per_s.to_numpy(float)
        err = np.vstack([y - g.output_tokens_per_s_lo.to_numpy(float), g.output_tokens_per_s_hi.to_numpy(float) - y])
        err = np.where(np.isfinite(err), np.clip(err, 0, None), 0)
        ax.errorbar(g.level, y, yerr=err, marker="o", ms=4, capsize=3, color=col[v],
                    label=label(v) + (" (baseline)" if v == a.baseline else ""))
        cap = a.capacity.get(v)
        if cap is not None and cap.knee is not None:
            k = g[g.level == cap.knee]
            if len(k):
                ax.scatter(k.level, k.output_tokens_per_s, s=140, facecolors="none", edgecolors=col[v], linewidths=1.5)
    _xaxis(ax, a, lv.level)
    ax.set_ylabel("output tokens/s (in the measured window)")
    ax.set_title(_title(a, "Throughput against load (circles: knee; bars: 95% interval)"), fontsize=10)
    ax.legend(fontsize="small")
    return _save(fig, path, left=0.11)


def speedup_chart(a: Analysis, path: Path) -> Optional[Path]:
    sp = a.speedups
    if not [v for v in a.info.variants if v != a.baseline]:
        return None  # one variant: the report says there is nothing to compare
    plt = _plt()
    col = colours(a)
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    if sp.empty or not len(_finite(sp.speedup)):
        _note(ax, f"No speedup to plot: no load level has a throughput for both {a.baseline} and another variant.")
        ax.set_title(_title(a, f"Speedup over {label(a.baseline)}"), fontsize=10)
        return _save(fig, path, right=0.92)
    for v in a.info.variants:
        g = sp[sp.variant == v].sort_values("level")
        if g.empty:
            continue
        ax.plot(g.level, g.speedup, marker="o", ms=4, color=col[v], label=label(v))
        ax.fill_between(g.level.to_numpy(float), g.speedup_lo.to_numpy(float), g.speedup_hi.to_numpy(float),
                        color=col[v], alpha=0.15, linewidth=0)
        for t, c in a.crossings.get(v, {}).items():
            if c.level is None or c.below_from_start:
                continue
            lo = c.low if c.low is not None else c.level
            hi = c.high if c.high is not None else float(g.level.max())
            ax.errorbar([c.level], [t], xerr=[[max(c.level - lo, 0)], [max(hi - c.level, 0)]], fmt="D", ms=6,
                        color=col[v], capsize=4, markeredgecolor="black", zorder=5)
    for t in a.info.thresholds:
        ax.axhline(t, color="grey", linestyle="--", linewidth=0.9)
        ax.annotate(f"{threshold_key(t)}x", xy=(1.0, t), xycoords=("axes fraction", "data"), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=8, color="grey")
    _xaxis(ax, a, sp.level)
    ax.set_ylabel(f"speedup over {label(a.baseline)} (output tokens/s)")
    ax.set_title(_title(a, "Speedup; diamonds: threshold crossings with their interval"), fontsize=10)
    ax.legend(fontsize="small")
    return _save(fig, path, right=0.92)


def latency_chart(a: Analysis, path: Path) -> Optional[Path]:
    lv = a.levels
    plt = _plt()
    col = colours(a)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    slo = {"ttft": a.info.slo.ttft_s, "itl": a.info.slo.itl_s, "e2e": a.info.slo.e2e_s}
    for ax, (key, name) in zip(axes, (("ttft", "time to first token"), ("itl", "inter-token gap"),
                                      ("e2e", "end-to-end latency"))):
        ax.set_title(name, fontsize=10)
        cols = [f"{key}_p50_s", f"{key}_p99_s"]
        if lv.empty or not len(_finite(lv[cols].to_numpy().ravel(), positive=True)):
            _note(ax, f"No {name} to plot: {why_empty(a)}.")
            continue
        for v in a.info.variants:
            g = lv[lv.variant == v].sort_values("level")
            if g.empty:
                continue
            ax.plot(g.level, g[f"{key}_p50_s"], marker="o", ms=3, color=col[v], label=f"{label(v)} p50")
            ax.plot(g.level, g[f"{key}_p99_s"], marker="^", ms=3, linestyle="--", color=col[v], label=f"{label(v)} p99")
        if slo.get(key):
            ax.axhline(slo[key], color="black", linestyle=":", linewidth=1)
            ax.annotate("SLO", xy=(0.01, slo[key]), xycoords=("axes fraction", "data"), fontsize=8, va="bottom")
        _xaxis(ax, a, lv.level)
        _plain_log(ax)
        ax.set_ylabel("seconds")
    drawn = [ax for ax in axes if ax.get_lines()]
    if drawn:
        drawn[0].legend(fontsize="x-small", ncol=2)
    fig.suptitle(_title(a, "Latency percentiles of measured requests"), fontsize=10)
    return _save(fig, path, left=0.06, right=0.99, bottom=0.14, top=0.85, wspace=0.28)


def goodput_chart(a: Analysis, path: Path) -> Optional[Path]:
    lv = a.levels
    plt = _plt()
    col = colours(a)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    if lv.empty or not len(_finite(lv.output_tokens_per_s)):
        for ax in (ax1, ax2):
            _note(ax, f"No goodput to plot: {why_empty(a)}.")
        ax1.set_title("Goodput", fontsize=10)
        ax2.set_title(label(f"SLO: {a.info.slo.describe()}", 90), fontsize=10)
        return _save(fig, path, left=0.07, right=0.99, bottom=0.14, top=0.9, wspace=0.22)
    for v in a.info.variants:
        g = lv[lv.variant == v].sort_values("level")
        if g.empty:
            continue
        ax1.plot(g.level, g.goodput_tokens_per_s, marker="o", ms=4, color=col[v], label=label(v))
        ax1.plot(g.level, g.output_tokens_per_s, linestyle=":", color=col[v], alpha=0.6)
        ax2.plot(g.level, g.slo_attainment * 100, marker="o", ms=4, color=col[v], label=label(v))

    ax2.axhline(SLO_ATTAINMENT * 100, color="black", linestyle=":", linewidth=1)
    for ax in (ax1, ax2):
        _xaxis(ax, a, lv.level)
    ax1.set_ylabel("tokens/s of requests meeting the SLO")
    ax1.set_title("Goodput (dotted: all output tokens/s)", fontsize=10)
    ax2.set_ylabel("% of measured requests meeting the SLO")
    ax2.set_ylim(-3, 103)
    ax2.set_title(label(f"SLO: {a.info.slo.describe()}", 90), fontsize=10)
    ax1.legend(fontsize="small")
    return _save(fig, path, left=0.07, right=0.99, bottom=0.14, top=0.9, wspace=0.22)


def roofline_chart(a: Analysis, path: Path) -> Optional[Path]:
    roof = a.roofline
    if roof.unavailable or roof.steps.empty or roof.steps.batch.notna().sum() == 0:
        return None
    plt = _plt()
    col = colours(a)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    top = max(1024.0, float(np.nanmax(roof.steps.batch)) * 2)
    batches = np.unique(np.round(np.logspace(0, math.log10(top), 60)))
    for v in a.info.variants:
        if v not in roof.kinds:
            continue
        ax.plot(batches, roof.curve(v, batches), color=col[v], linewidth=1.2,
                label=f"{label(v)} bound ({roof.kinds[v][0]}, kv {roof.kinds[v][1]})")
        pts = roof.steps[(roof.steps.variant == v) & roof.steps.measured_tokens_per_s.notna()]
        ax.scatter(pts.batch, pts.measured_tokens_per_s, color=col[v], s=22, zorder=3)
        r = roof.ridge.get(v)
        if r is not None and math.isfinite(r) and r <= top:
            ax.axvline(r, color=col[v], linestyle=":", linewidth=0.9)
    ax.set_xscale("log", base=2)
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    _plain_log(ax)
    ax.set_xlabel("batch (requests running)")
    ax.set_ylabel("decode tokens/s")
    ax.grid(True, alpha=0.3, which="both")
    gpu = getattr(roof.gpu, "name", a.info.gpu)
    model = getattr(roof.model, "name", a.info.model)
    ax.set_title(label(f"Roofline: {model} on {gpu}, context {roof.context_tokens or 0:.0f} tokens "
                       f"(lines: bound; dots: measured; dotted: ridge)", 120), fontsize=9)
    ax.legend(fontsize="x-small")
    return _save(fig, path, left=0.11, top=0.92)


def server_series_chart(a: Analysis, path: Path) -> Optional[Path]:
    """Running, waiting, KV-cache usage and generation tokens/s over each variant's sweep, overlaid.

    Time is counted from each variant's first scrape, so the variants' sweeps line up; the shaded
    spans are the baseline's measured windows, labelled with their load level.
    """
    s = a.series
    if s.empty:
        return None
    plt = _plt()
    col = colours(a)
    variants = [v for v in a.info.variants if (s.variant == v).any()]
    rows = [("running", "requests running"), ("waiting", "requests waiting"),
            ("kv_cache_usage", "KV-cache usage (%)"), ("generation_tokens_per_s", "generation tokens/s")]
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 8), sharex=True)
    t0s = {}
    for v in variants:
        g = s[s.variant == v].sort_values("time")
        t0s[v] = float(g.time.min())
        x = (g.time - t0s[v]).to_numpy(float)
        for ax, (key, _) in zip(axes, rows):
            y = g[key].to_numpy(float) * (100 if key == "kv_cache_usage" else 1)
            ax.plot(x, y, color=col[v], linewidth=0.9, label=label(v))
    ref = a.baseline if a.baseline in t0s else (variants[0] if variants else None)
    st = a.steps[(a.steps.variant == ref) & a.steps.window_start.notna() & a.steps.window_end.notna()]
    for k, r in enumerate(st.itertuples(index=False)):
        w0, w1 = r.window_start - t0s[ref], r.window_end - t0s[ref]
        for ax in axes:
            ax.axvspan(w0, w1, color="grey", alpha=0.12 if k % 2 == 0 else 0.06, linewidth=0)
        if np.isfinite(r.level):
            axes[0].annotate(f"{r.level:g}", xy=((w0 + w1) / 2, 1.0), xycoords=("data", "axes fraction"),
                             fontsize=7, ha="center", va="bottom")
    for ax, (_, name) in zip(axes, rows):
        ax.set_ylabel(name, fontsize=8)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("seconds since the variant's first scrape")
    axes[0].legend(fontsize="x-small", loc="upper left")
    fig.suptitle(_title(a, f"Server series; shaded: {label(ref)}'s measured windows, labelled with the load"),
                 fontsize=10)
    return _save(fig, path, left=0.08, right=0.98, bottom=0.07, top=0.93, hspace=0.12)


CHARTS = {
    "throughput": throughput_chart,
    "speedup": speedup_chart,
    "latency": latency_chart,
    "goodput": goodput_chart,
    "roofline": roofline_chart,
    "server_series": server_series_chart,
}


def write_charts(a: Analysis, charts_dir: Path) -> dict[str, Path]:
    """Every chart that has data, as charts/<name>.png; returns name -> path."""
    out = {}
    for name, fn in CHARTS.items():
        p = fn(a, charts_dir / f"{name}.png")
        if p is not None:
            out[name] = p
    return out
