"""The lm-eval harness pointed at the same live server, for standard or local tasks.

Standard tasks are the harness's to run, not ridgeline's to re-implement: its `local-completions`
model is given the variant's /v1/completions URL and served name, local task YAML files are passed
through --include_path, and the harness's own results JSON is stored as lm_eval.json.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from loadtest.quality.base import Collector, Context, NotMeasurable, Output


class LmEvalCollector(Collector):
    name = "lm_eval"

    async def collect(self, ctx: Context) -> Output:
        spec = ctx.spec
        if shutil.which(spec.program[0]) is None and not Path(spec.program[0]).exists():
            raise NotMeasurable(f"lm-eval harness not found ({spec.program[0]!r}); install lm-eval or set "
                                f"quality.lm_eval.program")
        with tempfile.TemporaryDirectory(prefix="ridgeline-lm-eval-") as tmp:
            argv = harness_argv(ctx, Path(tmp))
            res = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                          timeout=spec.timeout_s)
            if res.returncode != 0:
                tail = " ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
                raise NotMeasurable(f"lm-eval exited with status {res.returncode}: {tail[-400:]}")
            found = sorted(Path(tmp).rglob("results*.json"))
            if not found:
                raise NotMeasurable("lm-eval wrote no results JSON")
            results = json.loads(found[-1].read_text())
        tasks = sorted((results.get("results") or {}).keys())
        return Output({"lm_eval": results}, {"tasks": tasks, "argv": argv[:1] + ["..."]}, len(tasks))


def harness_argv(ctx: Context, out: Path) -> list[str]:
    """The harness's command line: local-completions against the variant's server, local task files included."""
    spec = ctx.spec
    names, include = [], set()
    for t in spec.tasks:
        p = Path(t)
        if p.suffix in (".yaml", ".yml") and p.exists():
            doc = yaml.safe_load(p.read_text()) or {}
            names.append(str(doc.get("task", p.stem)))
            include.add(str(p.resolve().parent))
        else:
            names.append(t)
    model_args: dict[str, Any] = {"model": ctx.model, "base_url": ctx.base_url.rstrip("/") + "/v1/completions",
                                  "num_concurrent": ctx.client.concurrency, "max_retries": ctx.client.retries,
                                  "tokenized_requests": False}
    if ctx.checkpoint and Path(ctx.checkpoint, "tokenizer_config.json").exists():
        model_args["tokenizer"] = ctx.checkpoint
    argv = list(spec.program) + ["--model", "local-completions", "--model_args",
                                 ",".join(f"{k}={v}" for k, v in model_args.items()),
                                 "--tasks", ",".join(names), "--output_path", str(out)]
    for d in sorted(include):
        argv += ["--include_path", d]
    if spec.limit:
        argv += ["--limit", str(spec.limit)]
    if spec.num_fewshot is not None:
        argv += ["--num_fewshot", str(spec.num_fewshot)]
    return argv
