"""render_reports: charts/*.png and every report output (report.html, report.md) for a results directory.

A report output is a row of OUTPUTS: a name, the file it writes and a function from the analysis,
the charts and the energy section to the file's text. Adding one (say report.txt) is a new module
with that function and a line in OUTPUTS; the tables it shows come from analysis.report_tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from analysis import energy_chart, energy_text
from analysis.charts import colours, write_charts
from analysis.pipeline import Analysis, compute
from analysis.quality.chart import speed_quality_chart
from analysis.report_html import render_html
from analysis.report_md import render_md
from core.backends import is_modelled
from core.results import RunDir, atomic_write_text


@dataclass(frozen=True)
class ReportOutput:
    name: str  # its key in render_reports' result
    file: str  # the file it writes in the results directory
    render: Callable[[Analysis, dict[str, Path], Path, dict[str, Any]], str]  # (analysis, charts, run dir, energy)


OUTPUTS: list[ReportOutput] = [
    ReportOutput("html", "report.html", lambda a, charts, run_dir, energy: render_html(a, charts, energy)),
    ReportOutput("md", "report.md", lambda a, charts, run_dir, energy: render_md(a, charts, run_dir)),
]


def _energy(run: RunDir, a: Analysis) -> dict[str, Any]:
    """energy.parquet, energy.csv, the energy chart and sentences when the run recorded GPU telemetry.

    The table is the analysis' own (computed step by step with the rest), so nothing is read again.
    """
    if a.energy.empty:
        return {}
    try:
        written = energy_chart.write_energy(run, table=a.energy, colours=colours(a))
    except (OSError, ValueError, RuntimeError) as exc:
        a.warnings.append(f"energy chart and files left out: {type(exc).__name__}: {exc}")
        written = {}
    return {"chart": written.get("chart"), "sentences": energy_text.energy_sentences(a.energy, a.baseline)}


def render_reports(run_dir: Union[str, Path, RunDir]) -> dict[str, Path]:
    """Write charts/*.png, report.html and report.md; returns what was written, by name."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    a = compute(run)
    charts = write_charts(a, run.charts_dir)
    quality = speed_quality_chart(a.quality, a.speedups, a.info.mode, colours(a), run.charts_dir / "quality.png",
                                  emulator=is_modelled(a.info.backend))
    if quality is not None:
        charts["quality"] = quality
    energy = _energy(run, a)
    if energy.get("chart"):
        charts["energy"] = Path(energy["chart"])
    written = {}
    for out in OUTPUTS:
        atomic_write_text(run.path / out.file, out.render(a, charts, run.path, energy))
        written[out.name] = run.path / out.file
    return {**written, **{f"chart:{k}": p for k, p in charts.items()}}
