"""Speed against quality: each variant's speedup at the lowest and highest load, against its quality change.

One point per variant and load level, joined by a line per variant; horizontal bars are the
quality figure's interval. The x axis is the perplexity change where the run measured likelihood,
else the KL, else the task accuracy change; the baseline sits at (0, 1). Up and to the left is
better: faster and closer to the baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pandas as pd
from matplotlib.ticker import FuncFormatter

from analysis import fmt
from analysis.fmt import label
from analysis.plotting import pyplot as _plt
from analysis.plotting import save as _save

AXES = [("ppl_change_pct", "perplexity change against {b} (%)"), ("kl_mean", "mean KL from {b} (nats, lower bound)"),
        ("accuracy_delta_points", "task accuracy change against {b} (points)")]


def chosen_axis(section: dict[str, Any]) -> Optional[tuple[str, str]]:
    """The first quality figure that some variant has against the baseline."""
    for key, title in AXES:
        if any((e.get("deltas") or {}).get(key) is not None for e in section.get("variants", {}).values()):
            return key, title.format(b=section.get("baseline"))
    return None


def speed_quality_chart(section: Optional[dict[str, Any]], speedups: pd.DataFrame, mode: str,
                        colours: dict[str, str], path: Path, emulator: bool = False) -> Optional[Path]:
    """Write the chart; None when there is no variant with both a speedup and a quality delta."""
    if not section or speedups is None or speedups.empty:
        return None
    axis = chosen_axis(section)
    if axis is None:
        return None
    key, xtitle = axis
    points = []
    for v, e in section["variants"].items():
        x = (e.get("deltas") or {}).get(key)
        g = speedups[(speedups.variant == v) & speedups.speedup.notna()].sort_values("level")
        if x is None or g.empty:
            continue
        lo, hi = ((e.get("intervals") or {}).get(key) or [None, None])[:2]
        ends = g.iloc[[0, -1]] if len(g) > 1 else g
        points.append((v, float(x), lo, hi, ends))
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    word = "concurrency" if mode == "concurrency" else "rate"
    for v, x, lo, hi, ends in points:
        c = colours.get(v, "#333333")
        ys = ends.speedup.to_numpy(float)
        ax.plot([x] * len(ys), ys, color=c, linewidth=1.2)
        xerr = [[max(x - lo, 0)], [max(hi - x, 0)]] if lo is not None and hi is not None else None
        for (_, r), marker in zip(ends.iterrows(), ("o", "s")):
            ax.errorbar([x], [r.speedup], xerr=xerr, fmt=marker, ms=6, color=c, capsize=3)
            ax.annotate(f"{label(v, 20)} @ {fmt.level(r.level, mode)}", (x, r.speedup), textcoords="offset points",
                        xytext=(6, 4), fontsize=8, color=c)
    ax.scatter([0], [1], marker="*", s=160, color="black", zorder=5)
    ax.annotate(f"{label(section.get('baseline'), 20)} (baseline)", (0, 1), textcoords="offset points",
                xytext=(6, -12), fontsize=8)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.axvline(0.0, color="grey", linestyle=":", linewidth=0.8)
    xs = [abs(p[1]) for p in points if p[1] != 0]
    if xs and max(xs) / min(xs) > 50:  # a broken variant would squash the others against the axis
        ax.set_xscale("symlog", linthresh=min(xs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        lows = [p[2] if p[2] is not None else p[1] for p in points]
        highs = [p[3] if p[3] is not None else p[1] for p in points]
        left = -min(xs) if min(lows) >= 0 else min(lows) * 3
        ax.set_xlim(left, max(highs) * 3 if max(highs) > 0 else min(xs))
        xtitle += " (symmetric log scale)"
    ax.set_xlabel(label(xtitle, 80))
    ax.set_ylabel(f"speedup over {label(section.get('baseline'), 20)} (output tokens/s)")
    ax.grid(True, alpha=0.3)
    title = "Speed against quality" + (" (emulator: modelled speed)" if emulator else "")
    ax.set_title(f"{title}\ncircle: lowest {word}, square: highest; bars: 95% interval of the quality change",
                 fontsize=9)
    missing = [v for v, e in section["variants"].items() if e.get("message")]
    if missing:
        fig.text(0.11, 0.015, label("no quality figures: " + ", ".join(missing), 110), fontsize=8, color="grey")
    return _save(fig, path, left=0.11, bottom=0.15, top=0.88)
