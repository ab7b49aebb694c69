"""The `ridgeline` command line."""

from gevent import monkey

monkey.patch_all()  # Locust's users run on gevent; patch before anything opens a socket

import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from loadtest.plan import Plan, PlanError, load_plan  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Load-test vLLM deployment variants and find where INT4 stops paying.")
err = Console(stderr=True)
out = Console()


def _fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _finish(run_path: Path) -> None:
    """Analyse and report a finished (or interrupted) run and say where the report is."""
    from analysis import analyze, render_reports

    analyze(run_path)
    render_reports(run_path)
    out.print(f"results: {run_path}")
    out.print(f"report:  {run_path / 'report.html'}")
    summary = (run_path / "summary.json")
    if summary.exists():
        import json

        verdict = json.loads(summary.read_text()).get("verdict")
        if verdict:
            out.print(verdict, highlight=False)


def _execute(plan: Plan, source: Optional[str], out_dir: Optional[str], quiet: bool) -> Path:
    from loadtest.progress_view import LiveView
    from loadtest.runner import RunInterrupted, Sweep, new_run_dir

    run = new_run_dir(plan, out_dir)
    with LiveView(err, enabled=not quiet) as view:
        sweep = Sweep(plan, run, plan_source=source, on_progress=view.update)
        try:
            sweep.execute()
        except RunInterrupted:
            err.print(f"interrupted: what was measured is in {run.path} (resume with --resume {run.path})")
            _finish(run.path)
            raise typer.Exit(130)
        except KeyboardInterrupt:
            raise typer.Exit(130)
    return run.path


@app.command()
def demo(
    out_dir: Optional[str] = typer.Option(None, "--out", help="results directory root (default: results)"),
    print_plan: bool = typer.Option(False, "--print-plan", help="print the demo's plan and exit"),
    quiet: bool = typer.Option(False, "--quiet", help="no live display"),
) -> None:
    """Run the whole experiment on the built-in emulator: 4 variants of Llama-3-8B on an H100."""
    from loadtest.demo import DEMO_PLAN, demo_plan

    if print_plan:
        sys.stdout.write(DEMO_PLAN)
        return
    plan = demo_plan()
    _finish(_execute(plan, "<demo plan>", out_dir, quiet))


@app.command()
def run(
    plan_file: Path = typer.Argument(..., help="plan YAML"),
    out_dir: Optional[str] = typer.Option(None, "--out", help="results directory root (default: the plan's output_dir)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print every server's command line and environment; start nothing"),
    quiet: bool = typer.Option(False, "--quiet", help="no live display"),
) -> None:
    """Deploy, sweep, scrape, analyse and report the plan; servers are stopped whatever happens."""
    try:
        plan = load_plan(plan_file)
    except PlanError as exc:
        _fail(str(exc))
    if dry_run:
        from deploy.servers import server_commands

        for cmd in server_commands(plan):
            _print_command(cmd)
        return
    _finish(_execute(plan, str(plan_file), out_dir, quiet))


def _print_command(cmd) -> None:  # noqa: ANN001
    import shlex

    from loadtest.runner import _mask_env

    out.print(f"# {cmd.variant}  ({cmd.url})", highlight=False)
    env = _mask_env(cmd.env)
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    line = " ".join(shlex.quote(a) for a in cmd.argv) if cmd.argv else "(external: nothing is started)"
    out.print((prefix + " " if prefix else "") + line, highlight=False, soft_wrap=True)


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
    out.print(f"report: {run_dir / 'report.html'}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
