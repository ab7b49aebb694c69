"""The user's task: accuracy of the outputs against the references, and the paired change in points.

Each item is scored by the plan's scorer (analysis.quality.scorers). Accuracy gets Wilson's
interval; the difference to the baseline is over the items both answered, in percentage points,
with Agresti and Min's paired interval (only items one got right and the other wrong move it).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from analysis.quality.intervals import paired_proportion_difference, wilson
from analysis.quality.metrics.base import Figures, Pair
from analysis.quality.rows import QualityError
from analysis.quality.scorers import scorer

DEFAULT_SCORER = "contains"


def scored(rows: pd.DataFrame, options: dict, variant: str) -> pd.Series:
    """item_id -> correct (bool)."""
    fn = scorer(str(options.get("scorer") or DEFAULT_SCORER))
    out = []
    for r in rows.itertuples(index=False):
        try:
            out.append(bool(fn(r.output if isinstance(r.output, str) else "", str(r.reference), options)))
        except QualityError as exc:
            raise QualityError(f"{variant}: task item {r.item_id!r}: {exc}") from None
    return pd.Series(out, index=rows.item_id.to_numpy(), dtype=bool)


def _points(x: Optional[float]) -> Optional[float]:
    return None if x is None else 100.0 * x


class Task:
    name = "task"

    def compute(self, pair: Pair) -> Optional[Figures]:
        rows = pair.variant.task
        if rows is None or rows.empty:
            return None
        v = pair.variant.variant
        ok = scored(rows, pair.task_options, v)
        n = int(ok.size)
        out = Figures(counts={"items": n})
        out.metrics["accuracy"] = float(ok.mean())
        out.intervals["accuracy"] = list(wilson(int(ok.sum()), n, pair.confidence))
        base = pair.baseline.task
        if pair.is_baseline or base is None or base.empty:
            return out
        ok_b = scored(base, pair.task_options, pair.baseline.variant)
        common = ok.index.intersection(ok_b.index)
        if len(common) == 0:
            out.notes.append(f"no task item answered by both {v} and {pair.baseline.variant}")
            return out
        diff, (lo, hi) = paired_proportion_difference(ok.loc[common].to_numpy(), ok_b.loc[common].to_numpy(),
                                                      pair.confidence)
        out.deltas["accuracy_delta_points"] = _points(diff)
        out.intervals["accuracy_delta_points"] = [_points(lo), _points(hi)]
        out.counts["paired_items"] = int(len(common))
        return out


METRIC = Task()
