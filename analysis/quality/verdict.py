"""The verdict line per variant: its speed and its quality in one sentence.

"awq: 1.57x at concurrency 1, 1.16x at 64; perplexity +3.1% (+2.4 to +3.9%), KL 0.021 nats,
greedy agreement 91% first token / 44% exact, task accuracy -2.0 points (-5.1 to +1.2)"; gates and
the broken flag follow; a variant without figures says why ("quality not measured: dummy weights").
"""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from analysis import fmt
from analysis.quality.gates import describe

ORDER = ("ppl", "kl", "greedy", "task")


def _signed(x: Optional[float], digits: int = 1) -> str:
    return "?" if x is None else f"{x:+.{digits}f}"


def _range(lo: Optional[float], hi: Optional[float], unit: str = "", digits: int = 1) -> str:
    if lo is None or hi is None:
        return ""
    return f" ({_signed(lo, digits)} to {_signed(hi, digits)}{unit})"


def speed_text(speedups: pd.DataFrame, variant: str, mode: str) -> Optional[str]:
    """'1.57x at concurrency 1, 1.16x at 64' (lowest and highest level with a speedup)."""
    if speedups is None or speedups.empty:
        return None
    g = speedups[(speedups.variant == variant) & speedups.speedup.notna()].sort_values("level")
    if g.empty:
        return None
    word = "concurrency" if mode == "concurrency" else "rate"
    first, last = g.iloc[0], g.iloc[-1]
    text = f"{fmt.ratio(first.speedup)} at {word} {fmt.level(first.level, mode)}"
    if len(g) > 1:
        text += f", {fmt.ratio(last.speedup)} at {fmt.level(last.level, mode)}"
    return text


def quality_parts(entry: dict[str, Any], is_baseline: bool) -> list[str]:
    """The quality clauses of one variant's line, in a fixed order."""
    if entry.get("message"):
        return [str(entry["message"])]
    m, d, iv = entry.get("metrics") or {}, entry.get("deltas") or {}, entry.get("intervals") or {}
    parts = []
    if is_baseline:
        if m.get("ppl") is not None:
            parts.append(f"perplexity {fmt.num(m['ppl'])} (quality baseline)")
    elif d.get("ppl_change_pct") is not None:
        parts.append(f"perplexity {_signed(d['ppl_change_pct'])}%{_range(*iv.get('ppl_change_pct', [None, None]), '%')}")
    if not is_baseline and d.get("kl_mean") is not None:
        parts.append(f"KL {d['kl_mean']:.3g} nats")
    if not is_baseline and d.get("first_token_agreement") is not None:
        parts.append(f"greedy agreement {fmt.pct(d['first_token_agreement'])} first token / "
                     f"{fmt.pct(d.get('exact_match_rate'))} exact")
    if not is_baseline and d.get("accuracy_delta_points") is not None:
        parts.append(f"task accuracy {_signed(d['accuracy_delta_points'])} points"
                     f"{_range(*iv.get('accuracy_delta_points', [None, None]))}")
    elif m.get("accuracy") is not None:
        lo, hi = iv.get("accuracy", [None, None])
        parts.append(f"task accuracy {fmt.pct(m['accuracy'])}"
                     + (f" ({fmt.pct(lo)} to {fmt.pct(hi)})" if lo is not None and hi is not None else ""))
    if entry.get("status") == "failed":
        parts.append(f"some quality blocks failed ({entry.get('reason')})")
    parts += [describe(g) for g in entry.get("gates") or []]
    if "broken" in (entry.get("flags") or []):
        parts.append("BROKEN: " + "; ".join(entry.get("broken_reasons") or []))
    if not parts:
        parts.append("no quality figure measured")
    return parts


def verdict_lines(section: Optional[dict[str, Any]], speedups: pd.DataFrame, speed_baseline: str, mode: str
                  ) -> dict[str, str]:
    """variant -> its line; empty when the run has no quality section."""
    if not section:
        return {}
    out = {}
    for v, entry in section.get("variants", {}).items():
        speed = speed_text(speedups, v, mode)
        head = f"{v}: {speed}; " if speed else (f"{v} (speed baseline): " if v == speed_baseline else f"{v}: ")
        out[v] = head + ", ".join(quality_parts(entry, v == section.get("baseline")))
    return out
