"""Task scorers by name: does a model's output answer an item's reference? One file per scorer.

A scorer is `score(output, reference, options) -> bool`; options come from the plan's
`quality.task` block (e.g. `tolerance` for numeric). A new scorer is a new file here plus a line in
SCORERS.
"""

from __future__ import annotations

from typing import Any, Callable

from analysis.quality.rows import QualityError
from analysis.quality.scorers import contains, exact, numeric, regex

Scorer = Callable[[str, str, dict[str, Any]], bool]

SCORERS: dict[str, Scorer] = {
    "exact": exact.score,
    "contains": contains.score,
    "regex": regex.score,
    "numeric": numeric.score,
}


def scorer(name: str) -> Scorer:
    """The scorer called `name`; an unknown name is an error listing the known ones."""
    try:
        return SCORERS[name]
    except KeyError:
        raise QualityError(f"unknown task scorer {name!r}; known: {', '.join(SCORERS)}") from None
