"""The quality metrics, in the order the summary lists them. A new metric is a new file here
(a class with `name` and `compute(pair) -> Figures | None`) plus a line in METRICS."""

from __future__ import annotations

from analysis.quality.metrics import greedy, kl, likelihood, task
from analysis.quality.metrics.base import Figures, Metric, Pair

METRICS: list[Metric] = [
    likelihood.METRIC,
    kl.METRIC,
    greedy.METRIC,
    task.METRIC,
]

__all__ = ["METRICS", "Figures", "Metric", "Pair"]
