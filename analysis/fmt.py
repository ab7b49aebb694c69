"""Numbers as the reports print them: missing values as a dash, latencies in ms below a second."""

from __future__ import annotations

import math
from typing import Any, Optional


def is_num(x: Any) -> bool:
    try:
        return x is not None and not isinstance(x, bool) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def num(x: Any, digits: int = 3) -> str:
    """Significant digits, thousands kept whole: 7976.5 -> '7,976', 1.5897 -> '1.59'."""
    if not is_num(x):
        return "–"
    v = float(x)
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def tera(x: Any) -> str:
    """A rate in units of 10^12 (TFLOP/s, TB/s): 3.35e12 -> '3.35'."""
    return num(float(x) / 1e12) if is_num(x) else "–"


def ratio(x: Any) -> str:
    return f"{float(x):.2f}x" if is_num(x) else "–"


def seconds(x: Any) -> str:
    """0.0063 -> '6.30 ms', 1.53 -> '1.53 s'."""
    if not is_num(x):
        return "–"
    v = float(x)
    if abs(v) < 1:
        return f"{v * 1000:.3g} ms"
    return f"{v:.3g} s"


def pct(x: Any, digits: int = 0) -> str:
    """A fraction as a percentage: 0.93 -> '93%'."""
    return f"{float(x) * 100:.{digits}f}%" if is_num(x) else "–"


def signed_pct(x: Any) -> str:
    """A percentage already in percent: 4.2 -> '+4.2%'."""
    return f"{float(x):+.1f}%" if is_num(x) else "–"


def level(x: Any, mode: str = "concurrency") -> str:
    if not is_num(x):
        return "–"
    v = float(x)
    if mode == "concurrency":
        return f"{v:.0f}" if v >= 10 or v.is_integer() else f"{v:.1f}"
    return f"{v:.3g}"


def interval(lo: Any, hi: Any, fmt=num, open_high: Optional[str] = None) -> str:
    """'lo–hi'; an upper bound of None reads as `open_high` (e.g. '> 256')."""
    a = fmt(lo) if is_num(lo) else "?"
    if is_num(hi):
        b = fmt(hi)
    elif open_high is not None:
        b = open_high
    else:
        b = "?"
    return f"{a}–{b}"


def label(text: object, limit: int = 40) -> str:
    """Text safe for a matplotlib label: no mathtext from a stray '$', not too long."""
    s = str(text).replace("\\", "\\\\").replace("$", r"\$")
    return s if len(s) <= limit else s[: limit - 1] + "…"
