"""The quality table and the sentences around it, shared by report.html and report.md."""

from __future__ import annotations

from typing import Any, Optional

from core.backends import is_modelled
from analysis import fmt
from analysis.quality.flags import BROKEN_KL_NATS, BROKEN_PPL_CHANGE_PCT
from analysis.table_model import Row, Table

HEADERS = ["variant", "weights", "status", "perplexity", "ppl change", "interval", "KL (nats)", "interval",
           "first token", "matched prefix", "exact match", "task accuracy", "interval", "accuracy change (points)",
           "interval", "flags"]


def _iv(entry: dict[str, Any], key: str, f) -> str:
    lo, hi = ((entry.get("intervals") or {}).get(key) or [None, None])[:2]
    return f"{f(lo)} to {f(hi)}" if lo is not None and hi is not None else "–"


def _signed(x: Any) -> str:
    return f"{float(x):+.1f}" if fmt.is_num(x) else "–"


def quality_table(section: Optional[dict[str, Any]]) -> Table:
    """One row per variant; a variant without figures says why in its status cell."""
    rows: list[Row] = []
    for v, e in ((section or {}).get("variants") or {}).items():
        m, d = e.get("metrics") or {}, e.get("deltas") or {}
        status = e.get("message") or e.get("status") or "–"
        if v == section.get("baseline") and e.get("status") == "measured":
            status = "measured (baseline)"
        flags = ", ".join(e.get("flags") or [])
        cells = [v, e.get("weights") or "–", status, fmt.num(m.get("ppl")), fmt.signed_pct(d.get("ppl_change_pct")),
                 _iv(e, "ppl_change_pct", fmt.signed_pct), fmt.num(d.get("kl_mean")), _iv(e, "kl_mean", fmt.num),
                 fmt.pct(d.get("first_token_agreement")), fmt.num(d.get("mean_matched_prefix")),
                 fmt.pct(d.get("exact_match_rate")), fmt.pct(m.get("accuracy")), _iv(e, "accuracy", fmt.pct),
                 _signed(d.get("accuracy_delta_points")), _iv(e, "accuracy_delta_points", _signed), flags or "–"]
        flagged = {15} if flags else set()
        bad = "broken" in (e.get("flags") or []) or e.get("status") in ("failed", "invalid")
        rows.append(Row(cells, flagged, bad=bad))
    return Table(HEADERS, rows, text={0, 1, 2, 15})


def quality_note(section: dict[str, Any]) -> str:
    conf = f"{section.get('confidence', 0.95):.0%}"
    return (f"Against {section.get('baseline')} on the same documents, prompts and items; intervals are {conf}. "
            f"Perplexity change: paired over documents (bootstrap resampling documents). KL: mean over positions of "
            f"KL(baseline || variant) on the baseline's and the variant's shared top-k tokens plus one bucket for the "
            f"rest, a lower bound on the full KL. First token, matched prefix and exact match compare greedy outputs "
            f"with the baseline's. Task accuracy: Wilson interval; its change is paired over items. Broken: "
            f"perplexity at least +{BROKEN_PPL_CHANGE_PCT:.0f}% or KL at least {BROKEN_KL_NATS:.1f} nats beyond the "
            f"noise.")


def absent_sentence(backend: str, section: Optional[dict[str, Any]]) -> Optional[str]:
    """What the reports say where there is no quality table (None: there is one)."""
    if section and section.get("variants"):
        return None
    if is_modelled(backend):
        return ("Quality was not measured: the emulator has no model weights. To measure it, run the plan against "
                "real servers (backend vllm or external) with a quality: block (likelihood, greedy and task eval "
                "files); see docs/quality.md.")
    if section:
        return "Quality was asked for, but the run holds no quality rows: " + "; ".join(section.get("notes") or [])
    return ("Quality was not measured: the plan has no quality: block. Add one (eval files for likelihood, greedy "
            "agreement and a task) to see what each variant costs beside its speed; see docs/quality.md.")
