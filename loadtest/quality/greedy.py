"""Greedy agreement: each prompt answered at temperature 0, kept token by token for the comparison.

Tokens come back as "token_id:N" where the server offers vLLM's return_tokens_as_token_ids, so the
analysis compares ids, not text pieces; a server without per-token logprobs still gives the text.
"""

from __future__ import annotations

import asyncio
from typing import Any

from core.plan_quality import EvalRecord
from loadtest.quality.base import Collector, Context, Output, answer_at_temperature_0, first
from loadtest.quality.rows import GREEDY_SCHEMA, table


class GreedyCollector(Collector):
    name = "greedy"

    async def collect(self, ctx: Context) -> Output:
        spec = ctx.spec
        rows = await asyncio.gather(*(self._one(ctx, r) for r in first(spec.records(), spec.max_prompts)))
        as_ids = bool(rows) and all(t.startswith("token_id:") for r in rows for t in r["tokens"]) \
            and any(r["tokens"] for r in rows)
        notes = {"prompts": len(rows), "max_tokens": spec.max_tokens, "token_ids": as_ids,
                 "tokens_returned": any(r["tokens"] for r in rows)}
        return Output({"greedy": table(list(rows), GREEDY_SCHEMA)}, notes, len(rows))

    async def _one(self, ctx: Context, rec: EvalRecord) -> dict[str, Any]:
        choice = await answer_at_temperature_0(ctx, rec["prompt"], ctx.spec.max_tokens, logprobs=1,
                                               return_tokens_as_token_ids=True)
        lp = choice.get("logprobs")
        tokens = lp.get("tokens") if isinstance(lp, dict) else None
        return {"prompt_id": rec.id, "tokens": [str(t) for t in tokens] if isinstance(tokens, list) else [],
                "text": str(choice.get("text") or ""), "finish_reason": str(choice.get("finish_reason") or "")}
