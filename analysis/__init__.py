"""Turning a results directory into answers: steps, curves, speedup and crossover, roofline, reports.

Public entry points (imported lazily so `import analysis` stays cheap):
- `analyze(run_dir) -> Summary`: writes steps.parquet, steps.csv and summary.json;
- `render_reports(run_dir)`: writes report.html, report.md and charts/*.png;
- `compare(run_a, run_b, ...)` and `compare_cli(...)`: differences between two runs, regressions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from analysis.compare import CompareResult
    from analysis.summary import Summary


def analyze(run_dir: Any) -> "Summary":
    """Analyse a results directory; write steps.parquet, steps.csv and summary.json into it."""
    from analysis.summary import analyze as _analyze

    return _analyze(run_dir)


def render_reports(run_dir: Any) -> dict:
    """Write report.html, report.md and charts/*.png into a results directory (analysing it if needed)."""
    from analysis.report import render_reports as _render

    return _render(run_dir)


def compare(run_a: Any, run_b: Any, metric: str = "output_tokens_per_s", threshold: float = 0.05,
            **quality: Any) -> "CompareResult":
    """Per-step differences of a metric between two runs, with significance and regressions; quality_metric
    and quality_threshold gate a quality figure the same way."""
    from analysis.compare import compare as _compare

    return _compare(run_a, run_b, metric=metric, threshold=threshold, **quality)


def compare_cli(run_a: Any, run_b: Any, metric: str = "output_tokens_per_s", threshold: float = 0.05,
                **quality: Any) -> int:
    """Print the comparison as a table; return the exit code (1 on a regression beyond threshold)."""
    from analysis.compare import compare_cli as _cli

    return _cli(run_a, run_b, metric=metric, threshold=threshold, **quality)


__all__ = ["analyze", "render_reports", "compare", "compare_cli"]
