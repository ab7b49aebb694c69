"""Greedy agreement: the same prompts at temperature 0, the variant's tokens against the baseline's.

Per prompt (paired by prompt_id): whether the first generated token is the same, how many leading
tokens are the same (the matched prefix), and whether the whole output is the same token for
token. Prompts are the independent unit: the rates get Wilson intervals, the mean prefix a
bootstrap over prompts.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from analysis.quality.intervals import mean_draws, percentile_interval, wilson
from analysis.quality.metrics.base import Figures, Pair


def _tokens(x: Any) -> list[str]:
    return [str(t) for t in x] if x is not None else []


def matched_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Greedy:
    name = "greedy"

    def compute(self, pair: Pair) -> Optional[Figures]:
        rows, base = pair.variant.greedy, pair.baseline.greedy
        if rows is None or rows.empty or base is None or base.empty:
            return None
        if pair.is_baseline:  # agreement is with the baseline: nothing to say about the baseline itself
            return Figures(counts={"prompts": int(len(rows))})
        m = rows.merge(base, on="prompt_id", suffixes=("_v", "_b"))
        out = Figures(counts={"prompts": int(len(m))})
        if m.empty:
            out.notes.append(f"no prompt answered by both {pair.variant.variant} and {pair.baseline.variant}")
            return out
        first, prefix, exact = [], [], []
        for tv, tb in zip(m.tokens_v, m.tokens_b):
            a, b = _tokens(tv), _tokens(tb)
            first.append(a[:1] == b[:1])
            prefix.append(matched_prefix(a, b))
            exact.append(a == b)
        n = len(m)
        seed = pair.variant.variant
        for key, hits in (("first_token_agreement", first), ("exact_match_rate", exact)):
            out.deltas[key] = float(np.mean(hits))
            out.intervals[key] = list(wilson(int(np.sum(hits)), n, pair.confidence))
        out.deltas["mean_matched_prefix"] = float(np.mean(prefix))
        out.intervals["mean_matched_prefix"] = list(percentile_interval(mean_draws(np.array(prefix), seed, "prefix"),
                                                                        pair.confidence))
        return out


METRIC = Greedy()
