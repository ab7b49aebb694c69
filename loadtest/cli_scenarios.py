"""`ridgeline scenarios`: the named built-in scenarios and what a plan's scenario section will send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

scenarios_app = typer.Typer(add_completion=False, no_args_is_help=True,
                            help="Built-in traffic scenarios (plan key scenario.builtin).")
out = Console()
err = Console(stderr=True)


def _length(d: dict) -> str:
    kind = d.get("dist", "fixed")
    if kind == "fixed":
        return str(d.get("value"))
    if kind == "dataset":
        return "from the dataset"
    parts = {"uniform": ["min", "max"], "normal": ["mean", "std"], "lognormal": ["mean", "sigma"]}.get(kind, [])
    s = f"{kind}(" + ", ".join(f"{k}={d[k]}" for k in parts if k in d) + ")"
    lim = [f"{k}={d[k]}" for k in ("min", "max") if k in d and k not in parts]
    return s + (" " + " ".join(lim) if lim else "")


@scenarios_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="print the parameters as JSON")) -> None:
    """Print every built-in scenario with its parameters."""
    from core.scenario_builtins import listing

    items = listing()
    if as_json:
        out.print_json(json.dumps(items))
        return
    out.print("built-in scenarios (plan: scenario.builtin: NAME; keys given in the plan override these)\n",
              highlight=False, soft_wrap=True)
    for it in items:
        sc = dict(it["scenario"])
        api = sc.pop("api", "completions")
        pt = _length(sc.pop("prompt_tokens", {"value": 512}))
        ot = _length(sc.pop("output_tokens", {"value": 256}))
        other = "".join(f"; {k}: {v}" for k, v in sc.items())
        out.print(f"[bold]{it['name']}[/]  {it['description']}", highlight=False, soft_wrap=True)
        out.print(f"    api: {api}; prompt tokens: {pt}; output tokens: {ot}{other}\n", highlight=False, soft_wrap=True)


@scenarios_app.command("show")
def show(
    plan_file: Optional[Path] = typer.Argument(None, help="a plan YAML (its scenario section)"),
    builtin: Optional[str] = typer.Option(None, "--builtin", help="a built-in scenario instead of a plan"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="dataset file (for sharegpt)"),
    n: int = typer.Option(1, "--requests", "-n", help="how many sample requests to print"),
) -> None:
    """Describe a scenario as the manifest will, and print sample request bodies (loads datasets and tokenizers)."""
    from core.plan import PlanError, ScenarioSpec, load_plan
    from scenarios.workload import ScenarioError, build_workload

    try:
        if plan_file is not None:
            plan = load_plan(plan_file)
            spec, model = plan.scenario, plan.served_model_name or plan.model
        else:
            data = {"builtin": builtin or "chat-short"}
            if dataset:
                data["dataset"] = dataset
            spec, model = ScenarioSpec.model_validate(data), "MODEL"
        wl = build_workload(spec, model)
    except (PlanError, ScenarioError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    out.print_json(json.dumps(wl.describe()))
    for _ in range(n):
        req = wl.next_request()
        body = dict(req.body)
        for k in ("prompt",):
            if isinstance(body.get(k), str) and len(body[k]) > 200:
                body[k] = body[k][:200] + "..."
        if "messages" in body:
            body["messages"] = [{**m, "content": m["content"][:200] + ("..." if len(m["content"]) > 200 else "")}
                                for m in body["messages"]]
        out.print(f"POST {req.path}  (prompt ~{req.prompt_tokens} tokens, {req.output_tokens} out)", highlight=False, soft_wrap=True)
        out.print_json(json.dumps(body))
