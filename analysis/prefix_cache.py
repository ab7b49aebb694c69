"""Prefix-cache hits where the traffic should have none: a leak that makes a server look faster.

A step's hit rate is the increase of vLLM's `prefix_cache_hits_total` over that of
`prefix_cache_queries_total` (tokens) inside the window (analysis/server_metrics.py); a cross-check
level's is the same two counters read by the bench script right before and after the level. Unless
the scenario reuses prefixes on purpose (shared system prompts, multi-turn history), every hit means
a prompt, or its first blocks, was served before: shorter prefill, lower TTFT, more tokens/s than the
traffic costs. A step or level over LEAK_PCT is flagged in the tables, the warnings and the verdict.
The bench's random prompts never share prefixes on purpose, so its levels are always held to it.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import pandas as pd

LEAK_PCT = 1.0


def hit_rate(queries: Any, hits: Any) -> float:
    """hits / queries, NaN when nothing was queried or a count is missing."""
    try:
        q, h = float(queries), float(hits)
    except (TypeError, ValueError):
        return math.nan
    return h / q if math.isfinite(q) and math.isfinite(h) and q > 0 else math.nan


def leaked(rate: Any) -> bool:
    """Whether a hit rate (a fraction) is over LEAK_PCT percent."""
    try:
        r = float(rate)
    except (TypeError, ValueError):
        return False
    return math.isfinite(r) and r * 100.0 > LEAK_PCT


def expects_hits(plan: Optional[Any]) -> bool:
    """Whether the run's traffic reuses prefixes on purpose (then step hits are the point, not a leak)."""
    return bool(plan is not None and plan.scenario.expects_prefix_hits)


def step_leaks(steps: pd.DataFrame, plan: Optional[Any]) -> list[tuple[str, int, Any, float]]:
    """(variant, step, level, hit rate) of every step over LEAK_PCT whose traffic should not hit."""
    if expects_hits(plan) or "prefix_cache_hit_rate" not in steps:
        return []
    return [(r.variant, int(r.step), r.level, float(r.prefix_cache_hit_rate))
            for r in steps.itertuples(index=False) if leaked(r.prefix_cache_hit_rate)]


def crosscheck_leaks(cc: pd.DataFrame) -> list[tuple[str, Any, float]]:
    """(variant, concurrency, bench hit rate) of every cross-check level over LEAK_PCT."""
    if "bench_prefix_cache_hit_rate" not in cc:
        return []
    return [(r.variant, r.concurrency, float(r.bench_prefix_cache_hit_rate))
            for r in cc.itertuples(index=False) if leaked(r.bench_prefix_cache_hit_rate)]


def leak_warnings(steps: pd.DataFrame, cc: pd.DataFrame, plan: Optional[Any], level: Any) -> list[str]:
    """One warning per leaking step and cross-check level, each naming its hit rate."""
    out = [f"{v} step {s} ({level(lv)}): {rate:.1%} of prompt tokens were prefix-cache hits where the traffic "
           f"shares no prefix; its throughput and TTFT are flattered" for v, s, lv, rate in step_leaks(steps, plan)]
    out += [f"{v}: vllm bench serve at concurrency {c:g} hit the prefix cache for {rate:.1%} of its prompt tokens; "
            f"that level reads faster than fresh traffic" for v, c, rate in crosscheck_leaks(cc)]
    return out


def leak_sentence(steps: pd.DataFrame, cc: pd.DataFrame, plan: Optional[Any]) -> Optional[str]:
    """The verdict's sentence about leaks, None when there is none."""
    s, c = step_leaks(steps, plan), crosscheck_leaks(cc)
    if not s and not c:
        return None
    parts = []
    if s:
        worst = max(s, key=lambda x: x[3])
        parts.append(f"{len(s)} step(s) hit the prefix cache beyond {LEAK_PCT:g}% (up to {worst[3]:.1%}, "
                     f"{worst[0]} step {worst[1]})")
    if c:
        worst_c = max(c, key=lambda x: x[2])
        parts.append(f"{len(c)} cross-check level(s) did (up to {worst_c[2]:.1%}, {worst_c[0]} at "
                     f"{worst_c[1]:g})")
    return ("Prefix-cache leak: " + "; ".join(parts) + "; those figures are faster than fresh traffic "
            "would be.")
