"""Matplotlib set-up shared by every chart (the run's charts, energy, quality).

Kept apart from the charts themselves so a chart module anywhere in analysis/ can draw without
importing the run-level chart code (which reads the whole analysis).
"""

from __future__ import annotations

from pathlib import Path

DPI = 110


def pyplot():  # noqa: ANN201 - matplotlib.pyplot, imported on first use with the Agg backend
    """matplotlib.pyplot on the Agg backend (no display), imported only when a chart is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, **margins: float) -> Path:  # noqa: ANN001
    """Fixed margins instead of tight_layout, which draws the figure a second time to measure it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.subplots_adjust(**{"left": 0.1, "right": 0.96, "bottom": 0.12, "top": 0.91, **margins})
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path
