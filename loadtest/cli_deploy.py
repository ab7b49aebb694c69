"""`ridgeline deploy up|status|down|render`: a plan's servers brought up to stay, looked at, brought down.

`up` checks the plan (deploy/checks.py), starts every server (or those named with --variant),
waits for each to answer /health, and records pids, process groups, URLs and command lines in
<output_dir>/.deploy/state.json (deploy/state.py keeps that file); `status` reads that file and asks each server; `down` stops them
by process group. `up --dry-run` prints each command line and environment (API key as ***) and
starts nothing. `render` writes files that run the plan elsewhere: the Prometheus and Grafana
stack that watches it (deploy/render/), or Kubernetes manifests (deploy/render/kubernetes.py).
"""

from __future__ import annotations

import json
import signal
import time
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.backends import backend
from core.plan import Plan, PlanError, load_plan
from deploy import state as deploy_state
from deploy.state import auth_headers, proc_alive, server_status, state_path, write_state

deploy_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Bring a plan's servers up and leave them running; status; down; render "
                              "Prometheus, Grafana or Kubernetes files for it.")
err = Console(stderr=True)
out = Console()


def _fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(msg)}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def read_state(path: Path) -> dict[str, Any]:
    try:
        return deploy_state.read_state(path)
    except deploy_state.StateError as exc:
        _fail(str(exc))
    raise AssertionError  # unreachable


def print_command(cmd: Any, file_out: Console) -> None:
    """One server as a shell line: `# variant (url)`, then its environment (credentials as ***) and argv."""
    import shlex

    from core.secrets import MASK, mask_env

    file_out.print(f"# {cmd.variant}  ({cmd.url})", highlight=False, markup=False)
    env = mask_env(cmd.env)
    prefix = " ".join(f"{k}={v if v == MASK else shlex.quote(v)}" for k, v in env.items())
    line = " ".join(shlex.quote(a) for a in cmd.argv) if cmd.argv else "(external: nothing is started)"
    file_out.print((prefix + " " if prefix else "") + line, highlight=False, markup=False, soft_wrap=True)


def plan_or_exit(plan_file: Path) -> Plan:
    """The plan, or exit 2 with the file, key path and reason."""
    try:
        return load_plan(plan_file)
    except PlanError as exc:
        _fail(str(exc))
    raise AssertionError  # unreachable


def _select(plan: Plan, names: Optional[list[str]]) -> Plan:
    if not names:
        return plan
    known = [v.name for v in plan.variants]
    unknown = [n for n in names if n not in known]
    if unknown:
        _fail(f"--variant {unknown[0]}: not a variant of the plan ({', '.join(known)})")
    picked = plan.model_copy(deep=True)
    keep = [v for v in picked.variants if v.name in names]
    if picked.baseline not in names:  # before the assignment: the plan re-validates its baseline then
        picked.__dict__["baseline"] = keep[0].name
    picked.variants = keep
    return picked


def _findings(plan: Plan, dry_run: bool) -> None:
    """Print the plan-time findings; errors stop a launch (a dry run only says so)."""
    from deploy.checks import ERROR, check_plan

    findings = check_plan(plan)
    for f in findings:
        colour = "red" if f.level == ERROR else "yellow"
        err.print(f"[{colour}]{f.level}:[/] {escape(str(f).split(': ', 1)[1])}", highlight=False, soft_wrap=True)
    n = sum(f.level == ERROR for f in findings)
    if n and dry_run:
        err.print(f"{n} error(s): `deploy up` would refuse this plan on this host", highlight=False, markup=False)
    elif n:
        _fail("the plan cannot be launched (errors above); nothing was started", code=1)


def commands(plan: Plan) -> list[Any]:
    """Every server's command line, or exit 2 when the plan cannot make one (model, flags, API key)."""
    from core.secrets import SecretError
    from deploy.servers import ServersError, server_commands
    from deploy.vllm_command import CommandError

    try:
        return server_commands(plan)
    except (ServersError, CommandError, SecretError) as exc:
        _fail(str(exc))
    raise AssertionError  # unreachable


@deploy_app.command()
def up(
    plan_file: Path = typer.Argument(..., help="plan YAML"),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="print every server's command line and environment; start nothing"),
    variant: Optional[list[str]] = typer.Option(None, "--variant", "-v", help="only this variant (repeatable)"),
    out_dir: Optional[str] = typer.Option(None, "--out", help="where .deploy/ goes (default: the plan's output_dir)"),
    no_checks: bool = typer.Option(False, "--no-checks", help="launch even when the plan-time checks find errors"),
) -> None:
    """Check the plan, start its servers, wait until each answers /health, record them."""
    from core.secrets import mask_env
    from deploy import gpu_info, launcher

    plan = _select(plan_or_exit(plan_file), variant)
    if not no_checks:
        _findings(plan, dry_run)
    cmds = commands(plan)
    if dry_run:
        for cmd in cmds:
            print_command(cmd, out)
        return
    path = state_path(out_dir or plan.output_dir)
    old = read_state(path)
    live = [s for s in old.get("servers", []) if s.get("pid") and proc_alive(s["pid"], s.get("create_time"))]
    if live:
        _fail(f"servers from an earlier `deploy up` are still running ({', '.join(s['variant'] for s in live)}, "
              f"recorded in {path}): run `ridgeline deploy down` first")
    local = [c for c in cmds if c.argv]
    shared_gpu = len({c.env.get("CUDA_VISIBLE_DEVICES") for c in local}) < len(local)
    if (backend(plan.backend).launches_vllm and plan.server.placement == "sequential" and len(local) > 1
            and gpu_info.host().kind == "cuda" and shared_gpu):
        _fail("server.placement is sequential: the variants share one GPU and cannot all run at once; "
              "start one with --variant NAME, or set server.placement: parallel (one GPU each)")
    import psutil

    state: dict[str, Any] = {"plan": str(plan_file), "plan_name": plan.name, "backend": plan.backend,
                             "api_key_env": plan.api_key_env, "api_key_file": plan.api_key_file,
                             "started": time.time(), "servers": []}
    started: list[launcher.Server] = []
    logs = path.parent / "logs"

    def on_term(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        for cmd in cmds:
            entry: dict[str, Any] = {"variant": cmd.variant, "url": cmd.url, "argv": list(cmd.argv),
                                     "env": mask_env(cmd.env), "model": plan.served_model_name or cmd.variant}
            if cmd.argv:
                err.print(f"starting {cmd.variant} ...", highlight=False, markup=False)
                srv = launcher.start(cmd, logs / f"{cmd.variant}.log", keep=True)
                started.append(srv)
                try:
                    ctime = psutil.Process(srv.pid).create_time()
                except psutil.NoSuchProcess:
                    ctime = None
                entry.update(pid=srv.pid, pgid=srv.pid, create_time=ctime, log=str(srv.log_path),
                             ready_s=round(time.time() - srv.started, 1))
            entry["served"] = _served(plan, cmd, started[-1] if cmd.argv else None, state["servers"])
            state["servers"].append(entry)
            write_state(path, state)
    except (launcher.LaunchError, KeyboardInterrupt) as exc:
        launcher.stop_all(started)
        state["servers"] = []
        write_state(path, state)
        if isinstance(exc, KeyboardInterrupt):
            _fail("interrupted: the servers started so far were stopped", code=130)
        _fail(f"{exc}\n(the servers started before it were stopped)", code=1)
    except BaseException:
        launcher.stop_all(started)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    table = Table("variant", "url", "pid", "ready (s)", "served", "log")
    for s in state["servers"]:
        table.add_row(s["variant"], s["url"], str(s.get("pid", "-")), str(s.get("ready_s", "-")),
                      (s.get("served") or {}).get("verdict", "-"), s.get("log", "-"))
    out.print(table)
    for s in state["servers"]:
        for why in (s.get("served") or {}).get("reasons", []):
            err.print(f"{s['variant']}: {why}", highlight=False, markup=False)
    out.print(f"state: {path}  (ridgeline deploy down --out {path.parent.parent})", highlight=False)


def _served(plan: Plan, cmd: Any, server: Any, earlier: list[dict[str, Any]]) -> dict[str, Any]:
    """verify's judgement of what the server really runs (never fatal: `up` has started it either way)."""
    from core.hardware.variants import resolve
    from deploy import verify

    refs = {e["variant"]: {"variant": resolve(plan.variant(e["variant"])).to_dict(), "served": e.get("served")}
            for e in earlier}
    try:
        rep = verify.served_report(plan, cmd, server, None, refs)
    except Exception as exc:  # noqa: BLE001
        return {"verdict": verify.UNVERIFIED, "reasons": [f"could not verify: {type(exc).__name__}: {exc}"]}
    return rep


def _state_for(plan_file: Optional[Path], out_dir: Optional[str], state_file: Optional[Path]) -> Path:
    if state_file is not None:
        return state_file
    if out_dir is not None:
        return state_path(out_dir)
    if plan_file is not None:
        return state_path(plan_or_exit(plan_file).output_dir)
    return state_path("results")


@deploy_app.command()
def status(
    plan_file: Optional[Path] = typer.Argument(None, help="the plan (its output_dir holds the state)"),
    out_dir: Optional[str] = typer.Option(None, "--out", help="the directory `deploy up --out` used"),
    state_file: Optional[Path] = typer.Option(None, "--state", help="a state.json written by `deploy up`"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Is each recorded server alive and healthy? Exit 1 when one is not."""
    path = _state_for(plan_file, out_dir, state_file)
    state = read_state(path)
    if not state.get("servers"):
        if as_json:
            out.print_json(json.dumps([]))
        else:
            out.print(f"nothing deployed ({path} lists no server)", highlight=False)
        return
    headers = auth_headers(state)
    rows = [server_status(s, headers) for s in state["servers"]]
    if as_json:
        out.print_json(json.dumps(rows))
    else:
        table = Table("variant", "url", "pid", "alive", "healthy", "models")
        for r in rows:
            table.add_row(r["variant"], r["url"], str(r["pid"] or "-"),
                          "-" if r["alive"] is None else ("yes" if r["alive"] else "[red]no[/]"),
                          "yes" if r["healthy"] else "[red]no[/]", ", ".join(m for m in r["models"] if m) or "-")
        out.print(table)
    if any(r["alive"] is False or not r["healthy"] for r in rows):
        raise typer.Exit(1)


@deploy_app.command()
def down(
    plan_file: Optional[Path] = typer.Argument(None, help="the plan (its output_dir holds the state)"),
    out_dir: Optional[str] = typer.Option(None, "--out", help="the directory `deploy up --out` used"),
    state_file: Optional[Path] = typer.Option(None, "--state", help="a state.json written by `deploy up`"),
    grace_s: float = typer.Option(10.0, "--grace", help="seconds for each of SIGINT and SIGTERM before SIGKILL"),
) -> None:
    """Stop every recorded server (its whole process group) and forget it."""
    from deploy import launcher

    path = _state_for(plan_file, out_dir, state_file)
    state = read_state(path)
    servers = state.get("servers", [])
    if not servers:
        out.print(f"nothing deployed ({path} lists no server)", highlight=False)
        return
    failed = []
    for s in servers:
        pid = s.get("pid")
        if not pid:
            continue
        if not proc_alive(pid, s.get("create_time")) and not launcher.group_members(pid):
            out.print(f"{s['variant']}: was not running (pid {pid})", highlight=False)
            continue
        gone = launcher.stop_pid(pid, s.get("create_time"), grace_s=(grace_s, grace_s, 5.0))
        if gone:
            out.print(f"{s['variant']}: stopped (pid {pid})", highlight=False)
        else:
            failed.append(s)
            err.print(f"{s['variant']}: pid {pid} did not stop", highlight=False, markup=False)
    state["servers"] = failed
    state["stopped"] = time.time()
    write_state(path, state)
    if failed:
        raise typer.Exit(1)


class RenderTarget(str, Enum):
    """What `deploy render` writes; compose is another name for monitoring (its docker-compose.yml needs the rest)."""

    monitoring = "monitoring"
    kubernetes = "kubernetes"
    compose = "compose"


DEFAULT_RENDER_DIR = {RenderTarget.monitoring: "monitoring", RenderTarget.compose: "monitoring",
                      RenderTarget.kubernetes: "k8s"}


@deploy_app.command()
def render(
    plan_file: Path = typer.Argument(..., help="plan YAML"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="directory to write (default: monitoring/ or k8s/)"),
    target: RenderTarget = typer.Option(RenderTarget.monitoring, "--target", "-t", case_sensitive=False,
                                        help="monitoring (or compose): Prometheus scrape config, Grafana dashboard "
                                             "and provisioning, docker-compose.yml; kubernetes: manifests for "
                                             "kubectl apply -k"),
) -> None:
    """Write the files that watch the plan's run (Prometheus, Grafana) or run it on Kubernetes; list them."""
    import shlex

    plan = plan_or_exit(plan_file)
    where = out_dir or Path(DEFAULT_RENDER_DIR[target])
    files = _render(plan, where, target)
    if target is RenderTarget.kubernetes:
        from deploy.render.kubernetes import model_warnings

        for w in model_warnings(plan):
            err.print(f"warning: {w}", highlight=False, markup=False, soft_wrap=True)
    for f in files:
        out.print(str(f), highlight=False, markup=False, soft_wrap=True)
    d = shlex.quote(str(where))
    then = f"kubectl apply -k {d}" if target is RenderTarget.kubernetes else f"cd {d} && docker compose up -d"
    out.print(f"wrote {len(files)} files under {where} (then: {then})", highlight=False, markup=False,
              soft_wrap=True)


def _render(plan: Plan, out_dir: Path, target: RenderTarget) -> list[Path]:
    from deploy.render import render_monitoring
    from deploy.render.kubernetes import render_kubernetes

    try:
        if target is RenderTarget.kubernetes:
            return render_kubernetes(plan, out_dir)
        return render_monitoring(plan, out_dir)
    except ValueError as exc:  # what the plan cannot give: RenderError, a command line, a port
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{out_dir}: cannot be written: {exc}", code=1)
    raise AssertionError  # unreachable


if __name__ == "__main__":  # pragma: no cover
    deploy_app()
