"""What a quality metric receives (a variant's rows beside the baseline's) and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import pandas as pd

from analysis.quality.align import aligned_likelihood
from analysis.quality.rows import VariantRows

Number = Optional[float]


@dataclass
class Pair:
    """A measured variant and the measured baseline it is judged against (the same rows for the baseline)."""

    variant: VariantRows
    baseline: VariantRows
    confidence: float = 0.95
    task_options: dict[str, Any] = field(default_factory=dict)  # the plan's quality.task block

    _aligned: Optional[tuple[pd.DataFrame, int]] = field(default=None, repr=False)

    @property
    def is_baseline(self) -> bool:
        return self.variant.variant == self.baseline.variant

    def aligned(self) -> tuple[pd.DataFrame, int]:
        """The variant's scored positions joined to the baseline's (computed once per pair)."""
        if self._aligned is None:
            self._aligned = aligned_likelihood(self.variant.variant, self.variant.likelihood,
                                               self.baseline.variant, self.baseline.likelihood)
        return self._aligned


@dataclass
class Figures:
    """One metric's output: absolute figures of the variant, deltas against the baseline, intervals."""

    metrics: dict[str, Number] = field(default_factory=dict)
    deltas: dict[str, Number] = field(default_factory=dict)
    intervals: dict[str, list[Number]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def merge(self, other: "Figures") -> None:
        self.metrics.update(other.metrics)
        self.deltas.update(other.deltas)
        self.intervals.update(other.intervals)
        self.counts.update(other.counts)
        self.notes += other.notes


class Metric(Protocol):
    name: str

    def compute(self, pair: Pair) -> Optional[Figures]:
        """The figures, or None when the block this metric needs was not measured."""
        ...


def ival(lo: Number, hi: Number) -> list[Number]:
    return [lo, hi]
