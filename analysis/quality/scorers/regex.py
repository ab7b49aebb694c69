"""regex: the reference is a regular expression searched for anywhere in the output."""

from __future__ import annotations

import re
from typing import Any

from analysis.quality.rows import QualityError


def score(output: str, reference: str, options: dict[str, Any]) -> bool:
    try:
        pattern = re.compile(str(reference))
    except re.error as exc:
        raise QualityError(f"task reference {reference!r} is not a regular expression ({exc})") from None
    return pattern.search(str(output)) is not None
