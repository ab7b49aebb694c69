"""`ridgeline quality PLAN`: only the quality half of a run, in a new results directory or an existing one.

Each variant's server is started (or its external URL used), asked the plan's quality questions and
stopped, through the same sweep machinery as `ridgeline run` with every speed step left out, so
servers, signals, logs and the manifest behave as in a run. With `--into`, the quality rows join a
run already measured for speed: the plan must be that run's (its `quality:` section aside), so the
quality comes from the same servers the speed came from; the run's steps are kept as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from core.plan import Plan
from loadtest.quality.measure import quality_todo
from loadtest.resume import ResumeError, plan_diff, stored_plan
from core.results import RunDir, atomic_write_text
from loadtest.runner import Sweep, new_run_dir, step_levels

PLAN_FILE = "plan.yaml"


def all_steps(plan: Plan) -> set[tuple[str, int]]:
    """Every speed step of the plan, to leave out."""
    return {(v.name, lv.index) for v in plan.variants for lv in step_levels(plan)}


def into_run(plan: Plan, run_dir: Path) -> tuple[RunDir, dict[str, Any]]:
    """The existing run `run_dir` and its manifest, when the plan is the one it ran (quality aside)."""
    run = RunDir(run_dir)
    if not run.exists():
        raise ResumeError(f"{run.path} is not a results directory (no manifest.json)")
    stored, src = stored_plan(run)
    old, new = stored.model_dump(mode="json"), plan.model_dump(mode="json")
    old.pop("quality", None)
    new.pop("quality", None)
    changes = plan_diff(old, new)
    if changes:
        listing = "\n".join(f"  - {c}" for c in changes)
        raise ResumeError(f"the plan differs from the one {run.path} was run with ({src}) beyond its quality "
                          f"section:\n{listing}\nquality beside speed must come from the same servers; measure "
                          f"into a new results directory instead (without --into)")
    return run, run.read_manifest()


def run_quality(plan: Plan, source: Optional[str], into: Optional[Path] = None, out_dir: Optional[str] = None,
                on_progress: Optional[Callable[[Any], None]] = None) -> Path:
    """Measure the quality of every variant the plan names (not yet measured there); return the run's path."""
    if plan.quality is None:
        raise ValueError("the plan has no quality: section (see docs/quality.md)")
    if into is not None:
        run, manifest = into_run(plan, into)
        status = manifest.get("status")
        sweep = Sweep(plan, run, plan_source=source, on_progress=on_progress)
        manifest["plan"] = sweep.manifest["plan"]
        manifest.setdefault("warnings", [])
        manifest.setdefault("servers", {})
        sweep.manifest = manifest
        atomic_write_text(run.path / PLAN_FILE, plan.to_yaml())  # the quality settings the rows were made with
    else:
        run, status = new_run_dir(plan, out_dir), None
        sweep = Sweep(plan, run, plan_source=source, on_progress=on_progress)
        sweep.manifest["quality_only"] = True
    if not quality_todo(plan, run.path):
        return run.path
    sweep.execute(skip=all_steps(plan))
    if status is not None and status != "complete":  # the speed sweep's own state stays what it was
        sweep.manifest["status"] = status
        sweep._save_manifest()
    return run.path
