"""The `ridgeline` command line."""

from gevent import monkey

monkey.patch_all()  # Locust's users run on gevent; patch before anything opens a socket

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from core.plan import Plan, PlanError, load_plan  # noqa: E402
from loadtest.cli_bench import bench_app  # noqa: E402
from loadtest.cli_deploy import (  # noqa: E402
    commands,
    deploy_app,  # noqa: E402
    print_command,
)
from loadtest.cli_scenarios import scenarios_app  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Load-test vLLM deployment variants and find where INT4 stops paying.")
app.add_typer(deploy_app, name="deploy")
app.add_typer(scenarios_app, name="scenarios")
app.add_typer(bench_app, name="bench")
err = Console(stderr=True)
out = Console()


def _fail(msg: str, code: int = 2) -> None:
    from rich.markup import escape

    # the message quotes plans, datasets and servers: their brackets are text, not markup
    err.print(f"[bold red]error:[/] {escape(msg)}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _finish(run_path: Path) -> None:
    """Analyse and report a finished (or interrupted) run and say where the report is."""
    from analysis import analyze, render_reports

    analyze(run_path)
    render_reports(run_path)
    # paths are printed whole, never wrapped, so they can be copied from any terminal width
    out.print(f"results: {run_path}", soft_wrap=True, markup=False, highlight=False)
    out.print(f"report:  {run_path / 'report.html'}", soft_wrap=True, markup=False, highlight=False)
    summary = (run_path / "summary.json")
    if summary.exists():
        import json

        verdict = json.loads(summary.read_text()).get("verdict")
        if verdict:
            out.print(verdict, highlight=False)


def _preflight(plan: Plan) -> None:
    """Everything that can be wrong with the input, checked before a directory or a server exists."""
    from core.secrets import SecretError, read_api_key
    from scenarios.prompts import ScenarioError
    from scenarios.workload import build_workload

    try:
        read_api_key(plan.api_key_env, plan.api_key_file)
    except SecretError as exc:
        _fail(str(exc))
    try:
        build_workload(plan.scenario, plan.served_model_name or plan.variants[0].name)
    except ScenarioError as exc:
        _fail(str(exc))


def _with_workers(plan: Plan, workers: Optional[int]) -> Plan:
    """The plan with --workers in place of its `workers:` key (validated as the key is)."""
    if workers is not None:
        plan.workers = workers
    return plan


def _workers_option() -> typer.models.OptionInfo:
    return typer.Option(None, "--workers", min=0, metavar="N",
                        help="a Locust master and N local worker processes, instead of the plan's workers: "
                             "(0: in-process)")


def _resume_hint(run_path: Path) -> str:
    import shlex

    return f"resume with: ridgeline run --resume {shlex.quote(str(run_path))}"


def _execute(plan: Plan, source: Optional[str], out_dir: Optional[str], quiet: bool, resume_state=None) -> Path:  # noqa: ANN001
    import signal

    from core.results import DiskFullError, ResultsError
    from loadtest.progress_view import LiveView
    from loadtest.runner import RunInterrupted, Sweep, new_run_dir

    _preflight(plan)
    run = resume_state.run if resume_state is not None else new_run_dir(plan, out_dir)
    with LiveView(err, enabled=not quiet) as view:
        try:
            if resume_state is not None:
                from loadtest.resume import resume

                resume(resume_state, on_progress=view.update)
            else:
                Sweep(plan, run, plan_source=source, on_progress=view.update).execute()
        except RunInterrupted as exc:
            name = getattr(exc, "signal", "SIGINT")
            code = 128 + int(getattr(signal, name, signal.SIGINT))
            err.print(f"interrupted by {name}: every finished step is saved in {run.path}; the step in flight "
                      f"is saved and marked incomplete.\n{_resume_hint(run.path)} "
                      f"(or see what is there: ridgeline report {run.path})", markup=False, highlight=False,
                      soft_wrap=True)
            raise typer.Exit(code)
        except KeyboardInterrupt:
            err.print(f"interrupted: {_resume_hint(run.path)}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(130)
        except DiskFullError as exc:
            _fail(f"{exc}\n{_resume_hint(run.path)}", code=1)
        except ResultsError as exc:
            _fail(f"results could not be written: {exc}", code=1)
    return run.path


@app.command()
def demo(
    out_dir: Optional[str] = typer.Option(None, "--out", help="results directory root (default: results)"),
    print_plan: bool = typer.Option(False, "--print-plan", help="print the demo's plan and exit"),
    quiet: bool = typer.Option(False, "--quiet", help="no live display"),
    workers: Optional[int] = _workers_option(),
) -> None:
    """Run the whole experiment on the built-in emulator: 4 variants of Llama-3-8B on an H100."""
    from loadtest.demo import DEMO_PLAN, ON_YOUR_GPU, demo_plan

    if print_plan:
        sys.stdout.write(DEMO_PLAN)
        return
    from loadtest.quality.measure import HOW_TO_MEASURE

    plan = _with_workers(demo_plan(), workers)
    _finish(_execute(plan, "<demo plan>", out_dir, quiet))
    for line in ON_YOUR_GPU:
        out.print(line, soft_wrap=True, markup=False, highlight=False)
    out.print(HOW_TO_MEASURE, soft_wrap=True, markup=False, highlight=False)


@app.command()
def run(
    plan_file: Optional[Path] = typer.Argument(None, help="plan YAML (with --resume: optional, checked against the run's)"),
    out_dir: Optional[str] = typer.Option(None, "--out", help="results directory root (default: the plan's output_dir)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print every server's command line and environment; start nothing"),
    quiet: bool = typer.Option(False, "--quiet", help="no live display"),
    resume_dir: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                              help="continue an interrupted run: keep its complete steps, run the rest"),
    force: bool = typer.Option(False, "--force", help="with --resume: accept a plan that differs from the run's"),
    workers: Optional[int] = _workers_option(),
) -> None:
    """Deploy, sweep, scrape, analyse and report the plan; servers are stopped whatever happens."""
    if resume_dir is not None:
        if workers is not None:
            _fail("--workers is for a new run; a resumed run keeps the workers of the plan it was started with")
        _resume_run(resume_dir, plan_file, force, quiet)
        return
    if force:
        _fail("--force only makes sense with --resume RUN_DIR")
    if plan_file is None:
        _fail("give a plan file (ridgeline run plan.yaml), or --resume RUN_DIR to continue a run")
    try:
        plan = _with_workers(load_plan(plan_file), workers)
    except PlanError as exc:
        _fail(str(exc))
    if dry_run:
        for cmd in commands(plan):
            print_command(cmd, out)
        return
    _finish(_execute(plan, str(plan_file), out_dir, quiet))


@app.command()
def quality(
    plan_file: Path = typer.Argument(..., help="plan YAML with a quality: section"),
    into: Optional[Path] = typer.Option(None, "--into", metavar="RUN_DIR",
                                        help="add the quality rows to this run (measured with the same plan)"),
    out_dir: Optional[str] = typer.Option(None, "--out", help="results directory root (default: the plan's output_dir)"),
    quiet: bool = typer.Option(False, "--quiet", help="no live display"),
) -> None:
    """Only the quality half: start each variant's server, ask its eval sets, stop it; analyse and report."""
    from loadtest.progress_view import LiveView
    from loadtest.quality_run import run_quality
    from loadtest.resume import ResumeError
    from core.results import ResultsError
    from loadtest.runner import RunInterrupted

    try:
        plan = load_plan(plan_file)
    except PlanError as exc:
        _fail(str(exc))
    if plan.quality is None:
        _fail(f"{plan_file} has no quality: section; see docs/quality.md for what to give it")
    if into is not None and out_dir is not None:
        _fail("--into adds to an existing run; --out is for a new one: give one of them")
    _preflight(plan)
    with LiveView(err, enabled=not quiet) as view:
        try:
            path = run_quality(plan, str(plan_file), into=into, out_dir=out_dir, on_progress=view.update)
        except ResumeError as exc:
            _fail(str(exc))
        except RunInterrupted as exc:
            err.print(f"interrupted: what was measured is saved in {exc}", markup=False, highlight=False)
            raise typer.Exit(130)
        except ResultsError as exc:
            _fail(f"results could not be written: {exc}", code=1)
    if into is None and not json.loads((path / "manifest.json").read_text()).get("steps"):
        _finish_quality_only(path, plan)
    else:
        _finish(path)


def _finish_quality_only(run_path: Path, plan: Plan) -> None:
    """A run with quality rows and no speed steps: the speed report needs steps, so the quality
    figures alone go to summary.json (key "quality") and each variant's line is printed."""
    from analysis.quality.section import quality_section
    from analysis.quality.verdict import verdict_lines
    from core.results import atomic_write_json

    names = [v.name for v in plan.variants]
    section = quality_section(run_path, plan.model_dump(mode="json"), plan.baseline, names)
    lines = verdict_lines(section, None, plan.baseline, plan.sweep.mode)
    atomic_write_json(run_path / "summary.json", {"quality_only": True, "quality": {**(section or {}), "verdict": lines},
                                                  "verdict": " ".join(line + "." for line in lines.values())})
    out.print(f"results: {run_path}", soft_wrap=True, markup=False, highlight=False)
    out.print("no speed sweep in this run, so no speed report (ridgeline run measures both; --into adds quality "
              "to a run)", soft_wrap=True, markup=False, highlight=False)
    for line in lines.values():
        out.print(line, soft_wrap=True, markup=False, highlight=False)


def _resume_run(resume_dir: Path, plan_file: Optional[Path], force: bool, quiet: bool) -> None:
    from loadtest.resume import ResumeError, prepare

    try:
        state = prepare(resume_dir, plan_file, force=force)
    except (ResumeError, PlanError) as exc:
        _fail(str(exc))
    if state.done:
        out.print(f"nothing to resume: every step of {state.run.path} is complete", markup=False, highlight=False)
        _finish(state.run.path)
        return
    err.print(state.describe(), markup=False, highlight=False, soft_wrap=True)
    _finish(_execute(state.plan, state.source, None, quiet, resume_state=state))


@app.command()
def analyze(run_dir: Path = typer.Argument(..., help="a results directory")) -> None:
    """Recompute steps.parquet and summary.json from a results directory."""
    from analysis import analyze as _analyze

    _analyze(run_dir)
    out.print(f"wrote {run_dir / 'summary.json'}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a results directory")) -> None:
    """Write report.html, report.md and charts/ for a results directory."""
    from analysis import analyze as _analyze
    from analysis import render_reports

    if not (run_dir / "summary.json").exists():
        _analyze(run_dir)
    render_reports(run_dir)
    out.print(f"report: {run_dir / 'report.html'}", soft_wrap=True, markup=False, highlight=False)


@app.command()
def compare(
    run_a: Path = typer.Argument(..., help="the reference results directory"),
    run_b: Path = typer.Argument(..., help="the results directory judged against it"),
    metric: str = typer.Option("output_tokens_per_s", "--metric", "-m",
                               help="a per-step metric: output_tokens_per_s, goodput_tokens_per_s, ttft_p99_s, "
                                    "itl_p50_s, ... (an unknown name lists them all)"),
    threshold: float = typer.Option(0.05, "--threshold", min=0.0,
                                    help="relative change in the bad direction that counts as a regression "
                                         "(0.05: 5%)"),
    quality_metric: Optional[str] = typer.Option(
        None, "--quality-metric", "-q",
        help="also gate a quality figure per variant: ppl_change_pct, kl_mean, accuracy_delta_points, "
             "first_token_agreement, ... (an unknown name lists them all)"),
    quality_threshold: Optional[float] = typer.Option(
        None, "--quality-threshold", min=0.0,
        help="change in the bad direction, in the quality figure's own units, that counts as a regression "
             "(ppl_change_pct: percentage points; default per figure, e.g. 1.0 for ppl_change_pct)"),
) -> None:
    """Run B against run A per variant and load level; exit 1 on a significant regression or a failed quality gate
    of B's plan (for CI), 2 on bad input."""
    from analysis import compare_cli

    code = compare_cli(run_a, run_b, metric=metric, threshold=threshold, quality_metric=quality_metric,
                       quality_threshold=quality_threshold)
    if code:
        raise typer.Exit(code)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
