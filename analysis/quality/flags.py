"""The "broken" flag: a variant whose quality collapsed, far beyond what INT4 weight quantization costs.

Well-made INT4 (GPTQ, AWQ) typically raises perplexity by a few percent and moves the next-token
distribution by hundredths of a nat; even naive round-to-nearest on a small model stays well under
a doubling. A variant is flagged broken when, beyond the noise (the lower end of its interval where
there is one), its perplexity at least doubles against the baseline (ppl_change_pct >= 100) or its
mean KL from the baseline reaches a full nat. Either means the variant no longer models the text
like the baseline does: a damaged checkpoint, a wrong dequantization, a kernel bug.
"""

from __future__ import annotations

from typing import Any, Optional

BROKEN_PPL_CHANGE_PCT = 100.0
BROKEN_KL_NATS = 1.0
RULES = {"ppl_change_pct": BROKEN_PPL_CHANGE_PCT, "kl_mean": BROKEN_KL_NATS}


def _conservative(key: str, deltas: dict[str, Any], intervals: dict[str, list]) -> Optional[float]:
    lo = (intervals.get(key) or [None, None])[0]
    return lo if lo is not None else deltas.get(key)


def broken_reasons(deltas: dict[str, Any], intervals: dict[str, list]) -> list[str]:
    """Why the variant counts as broken (empty: it does not)."""
    out = []
    ppl = _conservative("ppl_change_pct", deltas, intervals)
    if ppl is not None and ppl >= BROKEN_PPL_CHANGE_PCT:
        out.append(f"perplexity +{deltas.get('ppl_change_pct'):.0f}% against the baseline "
                   f"(broken from +{BROKEN_PPL_CHANGE_PCT:.0f}%)")
    kl = _conservative("kl_mean", deltas, intervals)
    if kl is not None and kl >= BROKEN_KL_NATS:
        out.append(f"mean KL {deltas.get('kl_mean'):.2f} nats from the baseline (broken from {BROKEN_KL_NATS:g})")
    return out
