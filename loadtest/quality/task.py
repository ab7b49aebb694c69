"""The user's task: each prompt answered at temperature 0; the analysis scores output against reference."""

from __future__ import annotations

import asyncio
from typing import Any

from core.plan_quality import EvalRecord
from loadtest.quality.base import Collector, Context, Output, answer_at_temperature_0, first
from loadtest.quality.rows import TASK_SCHEMA, table


class TaskCollector(Collector):
    name = "task"

    async def collect(self, ctx: Context) -> Output:
        spec = ctx.spec
        rows = await asyncio.gather(*(self._one(ctx, r) for r in first(spec.records(), spec.max_items)))
        notes = {"items": len(rows), "scorer": spec.scorer, "max_tokens": spec.max_tokens}
        return Output({"task": table(list(rows), TASK_SCHEMA)}, notes, len(rows))

    async def _one(self, ctx: Context, rec: EvalRecord) -> dict[str, Any]:
        choice = await answer_at_temperature_0(ctx, rec["prompt"], ctx.spec.max_tokens)
        return {"item_id": rec.id, "prompt": rec["prompt"], "reference": rec["reference"],
                "output": str(choice.get("text") or "")}
