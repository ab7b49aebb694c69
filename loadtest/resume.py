"""Continue an interrupted run in its own results directory.

A run stopped by Ctrl-C, a full disk or a dead server keeps every step it finished; resuming runs
only the rest. That is honest only if the plan is the one the finished steps were measured with,
so a resumed plan is compared key by key with the stored one and any change is refused (and named
by key path) unless forced. Complete steps whose Parquet file is missing or does not hold the
rows the manifest promised are measured again, like incomplete and failed ones.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pyarrow.parquet as pq

from core.errors import RidgelineError
from core.plan import Plan, PlanError, load_plan, parse_plan
from loadtest.quality.measure import quality_todo
from core.records import STEP_COMPLETE
from core.results import ResultsError, RunDir
from core.results import atomic_write_text
from loadtest.runner import Sweep, step_levels

PLAN_FILE = "plan.yaml"
# keys that may differ between the stored and the given plan without changing what is measured
IGNORED = ("output_dir",)


class ResumeError(RidgelineError, ValueError):
    """A run that cannot be resumed as asked; the message says why and what to do."""


@dataclass
class Change:
    path: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}"


@dataclass
class ResumeState:
    """Everything a resumed sweep needs: the run, the plan, what to keep and what to measure again."""

    run: RunDir
    plan: Plan
    source: str
    keep: set[tuple[str, int]] = field(default_factory=set)
    redo: list[tuple[str, int, str]] = field(default_factory=list)  # (variant, step, why)
    changes: list[Change] = field(default_factory=list)
    total: int = 0
    quality: list[str] = field(default_factory=list)  # variants whose quality is still to be measured

    @property
    def done(self) -> bool:
        return len(self.keep) >= self.total and not self.redo and not self.quality

    def describe(self) -> str:
        lines = [f"resuming {self.run.path}: {len(self.keep)} of {self.total} steps kept, "
                 f"{self.total - len(self.keep)} to run"]
        for v, s, why in self.redo:
            lines.append(f"  - {v} step {s}: {why}")
        if self.quality:
            lines.append(f"  quality still to measure: {', '.join(self.quality)}")
        if self.changes:
            lines.append("  plan changed (forced): " + "; ".join(str(c) for c in self.changes))
        return "\n".join(lines)


def _show(v: Any) -> str:
    return "(absent)" if v is _ABSENT else repr(v)


_ABSENT = object()


def plan_diff(old: Any, new: Any, path: str = "") -> list[Change]:
    """Every key path where two plan dumps differ (lists compared element by element)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[Change] = []
        for k in list(old) + [k for k in new if k not in old]:
            p = f"{path}.{k}" if path else str(k)
            if not path and k in IGNORED:
                continue
            out.extend(plan_diff(old.get(k, _ABSENT), new.get(k, _ABSENT), p))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out.extend(plan_diff(a, b, f"{path}[{i}]"))
        return out
    return [] if old == new else [Change(path or "(plan)", old, new)]


def stored_plan(run: RunDir) -> tuple[Plan, str]:
    """The plan the run was started with: its plan.yaml, else the copy inside the manifest."""
    p = run.path / PLAN_FILE
    if p.exists():
        return load_plan(p), str(p)
    man = run.read_manifest()
    if not isinstance(man.get("plan"), dict):
        raise ResumeError(f"{run.manifest_path} holds no plan; give the plan file to resume with")
    import yaml

    return parse_plan(yaml.safe_dump(man["plan"]), f"{run.manifest_path} (plan)"), str(run.manifest_path)


def _step_kept(run: RunDir, s: dict[str, Any]) -> Optional[str]:
    """None when a complete step's rows are on disk as the manifest says; else why it is redone."""
    try:
        path = run.requests_path(s["variant"], int(s["step"]))
    except (ResultsError, KeyError, TypeError, ValueError):
        return "its entry in the manifest is not valid"
    if not path.exists():
        return f"complete in the manifest but {path.name} is missing"
    try:
        rows = pq.read_metadata(path).num_rows
    except Exception as exc:  # noqa: BLE001 - any unreadable file is measured again
        return f"complete in the manifest but {path.name} cannot be read ({type(exc).__name__})"
    if rows != s.get("recorded"):
        return f"complete in the manifest with {s.get('recorded')} requests but {path.name} holds {rows}"
    return None


def prepare(run_dir: Union[str, Path], plan_path: Optional[Union[str, Path]] = None,
            force: bool = False) -> ResumeState:
    """Check that run_dir can be resumed with the plan given (or its own) and say what will run."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise ResumeError(f"{run.path}: no such results directory")
    try:
        man = run.read_manifest()
    except ResultsError as exc:
        raise ResumeError(str(exc)) from None
    stored, stored_src = stored_plan(run)
    if plan_path is not None:
        plan, source = load_plan(plan_path), str(plan_path)
    else:
        plan, source = stored, stored_src
    changes = plan_diff(stored.model_dump(mode="json"), plan.model_dump(mode="json"))
    if changes and not force:
        listing = "\n".join(f"  - {c}" for c in changes)
        raise ResumeError(
            f"the plan {source} differs from the one {run.path} was started with ({stored_src}):\n{listing}\n"
            f"steps measured under different plans would not compare; run it as a new run, "
            f"or pass --force to resume anyway")
    levels = step_levels(plan)
    wanted = {(v.name, lv.index) for v in plan.variants for lv in levels}
    entries = {(s.get("variant"), s.get("step")): s for s in man.get("steps", []) if isinstance(s, dict)}
    state = ResumeState(run, plan, source, changes=changes, total=len(wanted), quality=quality_todo(plan, run.path))
    for v in plan.variants:
        for lv in levels:
            s = entries.get((v.name, lv.index))
            if s is None:
                continue  # never started: it simply runs
            if s.get("status") == STEP_COMPLETE:
                why = _step_kept(run, s)
                if why is None:
                    state.keep.add((v.name, lv.index))
                else:
                    state.redo.append((v.name, lv.index, why))
            else:
                err = (s.get("error") or "").splitlines()[0:1]
                state.redo.append((v.name, lv.index, f"was {s.get('status')}" + (f" ({err[0][:120]})" if err else "")))
    return state


_STEP_WARNING = re.compile(r"^(?P<variant>.+?) step (?P<step>\d+)\b")


def _still_true(warning: str, redo: set[tuple[str, int]]) -> bool:
    """Whether a warning of the interrupted attempt still describes the run once the re-runs are done.

    The run's own interruption, and what was said of a variant or step that runs again, are history
    (kept in the resume's record); the rest (a kept step's saturated client, say) stays.
    """
    if warning.startswith(("run interrupted", "run failed")):
        return False
    variants = {v for v, _ in redo}
    for v in variants:
        # a variant that runs again is cross-checked again
        if warning.startswith((f"variant {v} skipped", f"variant {v}: restart failed",
                               f"{v}: vllm bench serve cross-check")):
            return False
    m = _STEP_WARNING.match(warning)
    return not (m and (m.group("variant"), int(m.group("step"))) in redo)


def merge_manifest(current: dict[str, Any], old: dict[str, Any], state: ResumeState) -> None:
    """Fold the stored manifest into the new sweep's one, in place: old steps and servers, one more resume."""
    merged = dict(old)
    for k in ("plan", "plan_source", "ridgeline_version", "versions", "host", "scenario"):
        if k in current:
            merged[k] = current[k]
    merged["status"] = "running"
    merged["ended"] = None
    merged.setdefault("warnings", [])
    merged.setdefault("servers", {})
    kept = [s for s in old.get("steps", []) if (s.get("variant"), s.get("step")) in state.keep]
    redo = [s for s in old.get("steps", []) if (s.get("variant"), s.get("step")) not in state.keep]
    merged["steps"] = kept + redo  # the re-run ones are replaced as they run
    redo_steps = {(v, s) for v, s, _ in state.redo}
    before = list(merged["warnings"])
    asked_again = tuple(f"{v}: quality not measured" for v in state.quality)  # its quality is measured again
    merged["warnings"] = [w for w in before if _still_true(w, redo_steps) and not w.startswith(asked_again)]
    merged["resumes"] = list(old.get("resumes", [])) + [{
        "at": time.time(), "kept": len(state.keep),
        "rerun": [f"{v}/{s}" for v, s, _ in state.redo],
        "plan_changes": [str(c) for c in state.changes],
        "earlier_warnings": [w for w in before if w not in merged["warnings"]],
    }]
    if state.changes:
        merged["warnings"].append("resumed with a changed plan (--force): " + "; ".join(str(c) for c in state.changes))
    current.clear()
    current.update(merged)


def resume(state: ResumeState, on_progress: Optional[Callable[[Any], None]] = None, commands=None) -> RunDir:  # noqa: ANN001
    """Run what is left of the run; complete steps are kept as they are."""
    old = state.run.read_manifest()
    sweep = Sweep(state.plan, state.run, plan_source=state.source, on_progress=on_progress, commands=commands)
    merge_manifest(sweep.manifest, old, state)
    if state.changes:  # the plan as run from now on

        atomic_write_text(state.run.path / PLAN_FILE, state.plan.to_yaml())
    return sweep.execute(skip=set(state.keep))


__all__ = ["Change", "PlanError", "ResumeError", "ResumeState", "merge_manifest", "plan_diff", "prepare", "resume",
           "stored_plan"]
