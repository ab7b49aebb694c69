"""The cross-check over rounds: each of ridgeline's repeats against the bench round run right after it.

One reading of each client differs from the other by the server's own step-to-step noise (3-8% sd on
a 2-core CPU engine, docs/analysis.md), so one pair of readings decides little. With
`crosscheck.interleave` and `sweep.repeats: k`, every repeat's step is followed seconds later by a
bench round of its own (new prompts, its own result file); each round gives a paired ratio
ridgeline / bench, and drift between rounds cancels within each pair. A level's difference is the
geometric mean of its rounds' ratios, with a Student t interval on their logarithms (k - 1 degrees
of freedom) from two rounds on; the level agrees when that mean is within CROSSCHECK_PCT. With one
round the level's row is that round's row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis.crosscheck import CROSSCHECK_PCT, LABELS, PAIRS, verdict_word

CONFIDENCE = 0.95
COLUMNS = (["variant", "concurrency", "rounds", "status", "note"]
           + [f"{side}_{col}" for key, col, _, _ in PAIRS for side in ("ridgeline", "bench")]
           + [f"{key}_{x}" for key, *_ in PAIRS for x in ("diff_pct", "diff_lo_pct", "diff_hi_pct", "flagged")]
           + ["bench_prefix_cache_hit_rate", "prefix_cache_flagged"])


def paired_diff(ridgeline: Sequence[float], bench: Sequence[float]) -> tuple[float, float, float]:
    """(difference, low, high) in percent: the geometric mean of ridgeline/bench over paired rounds and its
    t interval; the interval is NaN with fewer than two pairs."""
    a, b = np.asarray(ridgeline, dtype=float), np.asarray(bench, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    logs = np.log(a[ok] / b[ok])
    if logs.size == 0:
        return math.nan, math.nan, math.nan
    m = float(logs.mean())
    if logs.size < 2:
        return (math.exp(m) - 1) * 100, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, logs.size - 1)) * float(logs.std(ddof=1)) / math.sqrt(logs.size)
    return tuple((math.exp(x) - 1) * 100 for x in (m, m - half, m + half))  # type: ignore[return-value]


def _level(variant: Any, concurrency: Any, rows: pd.DataFrame) -> dict[str, Any]:
    ok = rows[rows.status == "ok"]
    out: dict[str, Any] = {c: np.nan for c in COLUMNS}
    out.update(variant=variant, concurrency=concurrency, rounds=len(ok),
               status="ok" if len(ok) else str(rows.status.iloc[0]))
    notes = [f"round {int(r['round'])}: {r['note']}" for _, r in rows.iterrows() if r["note"]]
    if len(ok) < len(rows):
        notes.insert(0, f"{len(rows) - len(ok)} of {len(rows)} rounds not compared")
    out["note"] = "; ".join(notes)
    for key, col, _, _ in PAIRS:
        a, b = ok[f"ridgeline_{col}"].astype(float).to_numpy(), ok[f"bench_{col}"].astype(float).to_numpy()
        out[f"ridgeline_{col}"] = float(np.nanmean(a)) if np.isfinite(a).any() else math.nan
        out[f"bench_{col}"] = float(np.nanmean(b)) if np.isfinite(b).any() else math.nan
        d, lo, hi = paired_diff(a, b)
        out.update({f"{key}_diff_pct": d, f"{key}_diff_lo_pct": lo, f"{key}_diff_hi_pct": hi,
                    f"{key}_flagged": bool(math.isfinite(d) and abs(d) > CROSSCHECK_PCT)})
    rates = rows.bench_prefix_cache_hit_rate.astype(float)
    out["bench_prefix_cache_hit_rate"] = float(rates.max()) if rates.notna().any() else math.nan
    out["prefix_cache_flagged"] = bool(rows.prefix_cache_flagged.astype(bool).any())
    return out


def rounds_table(cc: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, concurrency) of the per-round cross-check table (COLUMNS), in its order."""
    if cc.empty:
        return pd.DataFrame(columns=COLUMNS)
    groups = cc.groupby(["variant", "concurrency"], sort=False, dropna=False)
    rows = [_level(v, c, g.sort_values("round", kind="stable")) for (v, c), g in groups]
    return pd.DataFrame(rows, columns=COLUMNS)


def has_rounds(levels: pd.DataFrame) -> bool:
    """Whether any level was read in more than one round (the reports then show the level table too)."""
    return bool((levels.rounds > 1).any()) if not levels.empty else False


def unresolved(row: Any, key: str = "output_tokens") -> bool:
    """Whether a level's difference beyond CROSSCHECK_PCT has an interval that still reaches inside it: the
    rounds' spread leaves open whether the clients differ by that much."""
    d, lo, hi = (getattr(row, f"{key}_diff{x}_pct", math.nan) for x in ("", "_lo", "_hi"))
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (d, lo, hi)):
        return False
    return abs(d) > CROSSCHECK_PCT and lo <= CROSSCHECK_PCT and hi >= -CROSSCHECK_PCT


def level_verdict(row: Any) -> str:
    """The per-round verdict for a level, except that a difference beyond the limit whose interval reaches
    back inside it is called unresolved, not a difference."""
    open_keys = [key for key, *_ in PAIRS if unresolved(row, key)]
    if not open_keys or row.status != "ok":
        return verdict_word(row)
    resolved = [LABELS[key] for key, *_ in PAIRS if getattr(row, f"{key}_flagged") and key not in open_keys]
    word = f"differs beyond {CROSSCHECK_PCT:g}%: " + ", ".join(resolved) + "; " if resolved else ""
    return word + f"not resolved within {CROSSCHECK_PCT:g}% by {row.rounds} rounds: " + \
        ", ".join(LABELS[k] for k in open_keys)
