"""The plan's quality gates (quality.gates): limits a variant's quality change must stay within.

A gate fails when the point estimate is beyond its limit (the interval is shown beside it, so a
reader sees whether the miss is within the noise). A variant whose figure was not measured has the
gate unchecked (passed: null). A new gate is a line in GATES: name -> (figure, sign, unit), where
the gate fails when sign * figure > limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Gate:
    metric: str  # a key of the variant's deltas
    sign: float  # +1: fails above the limit; -1: fails when the figure falls below -limit
    unit: str


GATES: dict[str, Gate] = {
    "max_ppl_increase_pct": Gate("ppl_change_pct", +1.0, "%"),
    "max_accuracy_drop_points": Gate("accuracy_delta_points", -1.0, " points"),
    "max_kl": Gate("kl_mean", +1.0, " nats"),
}


def check_gates(gates: dict[str, Any], deltas: dict[str, Any], intervals: dict[str, list]) -> list[dict[str, Any]]:
    """One entry per plan gate: gate, metric, limit, value, interval, passed (None: not measured)."""
    out = []
    for name, limit in gates.items():
        g = GATES.get(name)
        if g is None or limit is None:
            continue
        value: Optional[float] = deltas.get(g.metric)
        passed = None if value is None else not (g.sign * value > float(limit))
        out.append({"gate": name, "metric": g.metric, "limit": float(limit), "value": value,
                    "interval": intervals.get(g.metric, [None, None]), "passed": passed})
    return out


def unknown_gates(gates: dict[str, Any]) -> list[str]:
    return [k for k in gates if k not in GATES]


def describe(entry: dict[str, Any]) -> str:
    """'max_ppl_increase_pct 5% failed' / '... passed'."""
    g = GATES[entry["gate"]]
    state = "not checked" if entry["passed"] is None else ("passed" if entry["passed"] else "FAILED")
    return f"gate {entry['gate']} {entry['limit']:g}{g.unit} {state}"
