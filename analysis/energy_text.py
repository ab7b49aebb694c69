"""The energy comparison in words: what a variant's tokens cost against the baseline's, per level.

Reads the energy table analysis.energy computes; summary.json, report.html and report.md all
take their energy sentences from here.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd

from analysis.energy import sources_of


def _by_level(table: pd.DataFrame, variant: str) -> pd.DataFrame:
    t = table[(table.variant == variant) & table.comparable.astype(bool)]
    t = t[t.joules_per_token.notna() & t.tokens_per_s.notna()]
    if t.empty:
        return t
    return t.groupby("level")[["tokens_per_s", "joules_per_token", "mean_power_w"]].median()


def _level_text(table: pd.DataFrame, level: float) -> str:
    rates = table.rate.notna() & table.concurrency.isna()
    if rates.any() and not table.concurrency.notna().any():
        return f"at {level:g} req/s"
    return f"at concurrency {int(level)}"


def energy_sentence(table: pd.DataFrame, variant: str, baseline: str, level: Optional[float] = None) -> Optional[str]:
    """e.g. 'awq at concurrency 64 gives 1.16x the tokens of fp16 for 18% less energy per token ...'.

    Uses comparable steps only (complete, not throttled, covered); `level` defaults to the highest
    level both variants reached. None when there is nothing comparable to say.
    """
    v, b = _by_level(table, variant), _by_level(table, baseline)
    common = sorted(set(v.index) & set(b.index))
    if not common:
        return None
    if level is None:
        level = common[-1]
    elif level not in common:
        return None
    tv, tb = v.loc[level], b.loc[level]
    speed = tv.tokens_per_s / tb.tokens_per_s
    change = tv.joules_per_token / tb.joules_per_token - 1.0
    pct = round(abs(change) * 100)
    if pct == 0:
        energy = "the same energy per token"
    else:
        energy = f"{pct}% {'less' if change < 0 else 'more'} energy per token"
    sources = sources_of(table[table.variant.isin([variant, baseline])])
    how = "modelled power, not measured" if sources == ["modelled"] else ("measured by " + "+".join(sources))
    return (f"{variant} {_level_text(table, level)} gives {speed:.2f}x the tokens of {baseline} for {energy} "
            f"({tv.joules_per_token:.3g} vs {tb.joules_per_token:.3g} J/token; {how})")


def energy_sentences(table: pd.DataFrame, baseline: str) -> list[str]:
    """One sentence per non-baseline variant with comparable steps, plus a note on throttled steps."""
    out = []
    for variant in dict.fromkeys(table.variant):
        if variant == baseline:
            continue
        s = energy_sentence(table, variant, baseline)
        if s:
            out.append(s)
    throttled = table[table.throttled.astype(bool)]
    if len(throttled):
        which = ", ".join(f"{r.variant} step {r.step}" for r in throttled.itertuples())
        out.append(f"clocks were throttled in {which}: those steps are left out of the energy comparison")
    return out
