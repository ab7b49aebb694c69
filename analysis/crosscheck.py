"""ridgeline against `vllm bench serve` on the same live server, level by level.

After a variant's sweep the runner can run `vllm bench serve` against the server still up, at a
few concurrencies, and keep each result (`--save-result`) under `crosscheck/<variant>/c<C>.json`,
with what it ran in the manifest's `crosscheck` key. A second, independent client measuring the
same server: where its output throughput and medians agree with ridgeline's step at the same
concurrency, the figures belong to the server, not to either client. A difference over
CROSSCHECK_PCT is flagged. A level that failed, or whose file is missing or unreadable, is a row
that says so (and a warning naming the file), never an exception.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from analysis.agreement import AGREEMENT_PCT
from analysis.prefix_cache import hit_rate, leaked
from core.results import ResultsError, safe_child

CROSSCHECK_PCT = AGREEMENT_PCT
# (key, ridgeline step column, bench result key, factor from the bench unit to ridgeline's)
PAIRS = (("output_tokens", "output_tokens_per_s", "output_throughput", 1.0),
         ("ttft", "ttft_p50_s", "median_ttft_ms", 1e-3),
         ("itl", "itl_p50_s", "median_itl_ms", 1e-3))
# further bench figures kept beside the compared ones (bench key -> column, factor)
EXTRA = {"completed": ("bench_completed", 1.0), "failed": ("bench_failed", 1.0),
         "duration": ("bench_duration_s", 1.0), "request_throughput": ("bench_requests_per_s", 1.0),
         "total_token_throughput": ("bench_total_tokens_per_s", 1.0), "p99_ttft_ms": ("bench_ttft_p99_s", 1e-3),
         "median_tpot_ms": ("bench_tpot_p50_s", 1e-3)}
COLUMNS = (["variant", "concurrency", "round", "num_prompts", "status", "note", "file", "step", "repeat"]
           + [f"{side}_{col}" for key, col, _, _ in PAIRS for side in ("ridgeline", "bench")]
           + [f"{key}_diff_pct" for key, *_ in PAIRS] + [f"{key}_flagged" for key, *_ in PAIRS]
           + [col for col, _ in EXTRA.values()]
           + ["ridgeline_prefix_cache_hit_rate", "bench_prefix_cache_hit_rate", "prefix_cache_flagged"])
LABELS = {"output_tokens": "output tokens/s", "ttft": "TTFT p50", "itl": "ITL p50"}


def _num(x: Any) -> float:
    if isinstance(x, bool):
        return math.nan
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _read_result(root: Path, rel: str) -> tuple[Optional[dict], Optional[str]]:
    """The bench result at `rel` (inside the results directory), or why it cannot be used."""
    try:
        path = safe_child(root, rel)
    except ResultsError:
        return None, f"{rel}: outside the results directory, not read"
    if not path.is_file():
        return None, f"{rel}: no such file"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        return None, f"{rel}: not a vllm bench serve result ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    if not isinstance(data, dict):
        return None, f"{rel}: not a vllm bench serve result (a JSON {type(data).__name__}, not an object)"
    return data, None


def _ridgeline_step(steps: pd.DataFrame, variant: str, concurrency: float, round_: int) -> Optional[pd.Series]:
    """ridgeline's step of that variant at that concurrency: the repeat the bench's round followed
    (crosscheck.interleave with sweep.repeats), else the first repeat."""
    s = steps[(steps.variant == variant) & (steps.concurrency.astype(float) == concurrency)]
    if s.empty:
        return None
    same = s[s.repeat.fillna(0).astype(int) == round_]
    return (same if not same.empty else s).sort_values(["repeat", "step"], kind="stable").iloc[0]


def _round_of(level: dict) -> int:
    r = _num(level.get("repeat"))
    return int(r) if math.isfinite(r) and r >= 0 else 0


def _levels(entry: Any) -> list[dict]:
    levels = entry.get("levels") if isinstance(entry, dict) else None
    return [x for x in levels if isinstance(x, dict)] if isinstance(levels, list) else []


def _row(root: Path, steps: pd.DataFrame, variant: str, level: dict, warnings: list[str]) -> dict[str, Any]:
    conc = _num(level.get("concurrency"))
    row: dict[str, Any] = {c: np.nan for c in COLUMNS}
    row.update(variant=variant, concurrency=conc, round=_round_of(level), num_prompts=_num(level.get("num_prompts")),
               note="", file=level.get("file") if isinstance(level.get("file"), str) else None, step=None,
               repeat=None)
    for key, *_ in PAIRS:
        row[f"{key}_flagged"] = False
    row["bench_prefix_cache_hit_rate"] = hit_rate(level.get("prefix_cache_queries"), level.get("prefix_cache_hits"))
    row["prefix_cache_flagged"] = leaked(row["bench_prefix_cache_hit_rate"])
    notes = []
    r = _ridgeline_step(steps, variant, conc, row["round"]) if math.isfinite(conc) else None
    if r is not None:
        row.update(step=int(r["step"]), repeat=int(r["repeat"] or 0))
        row["ridgeline_prefix_cache_hit_rate"] = _num(r.get("prefix_cache_hit_rate"))
        for key, col, _, _ in PAIRS:
            row[f"ridgeline_{col}"] = _num(r.get(col))
        if r["status"] != "complete":
            notes.append(f"ridgeline step {row['step']} is {r['status']}")
    data = None
    if level.get("status") != "ok":
        err = level.get("error")
        why = f": {str(err).splitlines()[0]}" if err else ""
        row["status"] = "failed"
        notes.insert(0, "vllm bench serve failed" + why)  # the run's record already warns of it, once a variant
    elif row["file"] is None:
        row["status"] = "missing"
        notes.insert(0, "no result file was recorded")
    else:
        data, problem = _read_result(root, row["file"])
        if problem:
            row["status"] = "missing" if problem.endswith("no such file") else "unreadable"
            notes.insert(0, problem)
            warnings.append(f"vllm bench serve result {problem}")
    if data is not None:
        for key, col, bench_key, factor in PAIRS:
            row[f"bench_{col}"] = _num(data.get(bench_key)) * factor
        for bench_key, (col, factor) in EXTRA.items():
            row[col] = _num(data.get(bench_key)) * factor
        mc = _num(data.get("max_concurrency"))
        if math.isfinite(mc) and math.isfinite(conc) and mc != conc:
            notes.append(f"the result says max_concurrency {mc:g}")
        if row["bench_failed"] > 0:
            notes.append(f"{row['bench_failed']:.0f} bench request(s) failed")
        row["status"] = "ok" if r is not None else "no ridgeline step"
        if r is None:
            notes.append(f"ridgeline ran no step of {variant} at concurrency {conc:g}")
    for key, col, _, _ in PAIRS:
        a, b = row[f"ridgeline_{col}"], row[f"bench_{col}"]
        if math.isfinite(a) and math.isfinite(b) and b != 0:
            row[f"{key}_diff_pct"] = (a - b) / b * 100.0
            row[f"{key}_flagged"] = abs(row[f"{key}_diff_pct"]) > CROSSCHECK_PCT
    row["note"] = "; ".join(notes)
    return row


def crosscheck_table(root: Path, manifest: dict[str, Any], steps: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per (variant, concurrency, round) the manifest's crosscheck lists (COLUMNS), and warnings."""
    spec = manifest.get("crosscheck")
    warnings: list[str] = []
    if not spec:
        return pd.DataFrame(columns=COLUMNS), warnings
    if not isinstance(spec, dict):
        return pd.DataFrame(columns=COLUMNS), [f"the manifest's crosscheck is a {type(spec).__name__}, not an object; "
                                               f"left out"]
    rows = []
    for variant, entry in spec.items():
        levels = _levels(entry)
        if not levels:
            err = entry.get("error") if isinstance(entry, dict) else None
            warnings.append(f"crosscheck of {variant}: no levels recorded" + (f" ({err})" if err else ""))
        rows += [_row(root, steps, str(variant), level, warnings) for level in levels]
    return pd.DataFrame(rows, columns=COLUMNS), warnings


def verdict_word(row: Any) -> str:
    """'agrees within 5%', 'differs beyond 5%: TTFT p50', or the row's status."""
    if row.status != "ok":
        return {"failed": "bench failed", "missing": "no bench result", "unreadable": "bench result unreadable",
                "no ridgeline step": "no ridgeline step"}.get(row.status, str(row.status))
    flagged = [LABELS[key] for key, *_ in PAIRS if getattr(row, f"{key}_flagged")]
    if flagged:
        return f"differs beyond {CROSSCHECK_PCT:g}%: " + ", ".join(flagged) + _leak_word(row)
    compared = [key for key, *_ in PAIRS if math.isfinite(getattr(row, f"{key}_diff_pct"))]
    word = f"agrees within {CROSSCHECK_PCT:g}%" if compared else "nothing to compare"
    return word + _leak_word(row)


def _leak_word(row: Any) -> str:
    rate = getattr(row, "bench_prefix_cache_hit_rate", math.nan)
    return f"; the bench hit the prefix cache ({rate:.1%})" if getattr(row, "prefix_cache_flagged", False) else ""


def commands(manifest: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(variant, argv) of each recorded crosscheck run, for the reports."""
    spec = manifest.get("crosscheck")
    if not isinstance(spec, dict):
        return []
    return [(str(v), [str(a) for a in e.get("argv")]) for v, e in spec.items()
            if isinstance(e, dict) and isinstance(e.get("argv"), list)]
