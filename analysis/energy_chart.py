"""The energy chart and files: mean power and tokens per joule against load; energy.parquet and .csv.

The figures come from analysis.energy (computed with the rest of the analysis); this module only
draws and writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import pandas as pd
import pyarrow as pa

from analysis.energy import energy_label, energy_table, sources_of
from analysis.fmt import label
from core.results import RunDir, atomic_write_table, atomic_write_text


def plot_energy(table: pd.DataFrame, path: Union[str, Path], colours: Optional[dict[str, str]] = None
                ) -> Optional[Path]:
    """Mean power and output tokens per joule against load, one line per variant; None if no energy.

    `colours` (variant -> colour) keeps each variant's colour of the report's other charts."""
    t = table[table.energy_j.notna()]
    if t.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - used through matplotlib.ticker below

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate_mode = not t.concurrency.notna().any()
    fig, (ax_p, ax_e) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant, g in t.groupby("variant", sort=False):
        g = g.groupby("level")[["mean_power_w", "tokens_per_joule"]].median().sort_index()
        colour = (colours or {}).get(variant)
        ax_p.plot(g.index, g.mean_power_w, marker="o", label=label(variant), color=colour)
        ax_e.plot(g.index, g.tokens_per_joule, marker="o", label=label(variant), color=colour)
        bad = t[(t.variant == variant) & t.throttled.astype(bool)]
        if len(bad):
            ax_e.scatter(bad.level, bad.tokens_per_joule, marker="x", color="red", zorder=3)
    xlabel = "request rate (req/s)" if rate_mode else "concurrency"
    for ax, ylabel in ((ax_p, "mean GPU power (W)"), (ax_e, "output tokens per joule")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if not rate_mode:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.grid(True, alpha=0.3)
    title = "GPU power and energy efficiency" + (" (modelled)" if energy_label(sources_of(t)) == "modelled" else "")
    fig.suptitle(title)
    ax_e.legend(fontsize="small")
    # fixed margins: tight_layout would draw the figure a second time to measure it
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.88, wspace=0.25)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_energy(run_dir: Union[str, Path, RunDir], steps: Optional[pd.DataFrame] = None,
                 table: Optional[pd.DataFrame] = None, colours: Optional[dict[str, str]] = None
                 ) -> dict[str, Optional[Path]]:
    """energy.parquet, energy.csv and charts/energy.png in the run directory (nothing if no telemetry).

    `table` (an energy table already computed, as the analysis keeps one) is written as it is.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if table is None:
        table = energy_table(run, steps)
    if table.empty or not table.energy_j.notna().any():
        return {"table": None, "csv": None, "chart": None}
    pq_path = run.path / "energy.parquet"
    atomic_write_table(pq_path, pa.Table.from_pandas(table, preserve_index=False))
    csv_path = run.path / "energy.csv"
    atomic_write_text(csv_path, table.to_csv(index=False))
    chart = plot_energy(table, run.charts_dir / "energy.png", colours)
    return {"table": pq_path, "csv": csv_path, "chart": chart}
