"""numeric: the first number in the output equals the reference number within `tolerance` (absolute).

Thousands separators ("1,024") are read as one number; a reference that is not a number is an
error naming it, since no output could ever match it.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from analysis.quality.rows import QualityError

NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?")


def first_number(text: str) -> Optional[float]:
    m = NUMBER.search(str(text))
    return float(m.group(0).replace(",", "")) if m else None


def score(output: str, reference: str, options: dict[str, Any]) -> bool:
    ref = first_number(reference)
    if ref is None or NUMBER.fullmatch(str(reference).strip()) is None:
        raise QualityError(f"numeric scorer: reference {reference!r} is not a number")
    got = first_number(output)
    if got is None:
        return False
    tol = float(options.get("tolerance") or 0.0)
    return abs(got - ref) <= tol + 1e-12 * max(1.0, abs(ref))
