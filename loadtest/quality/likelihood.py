"""Likelihood: the server's log-probability of every token of each eval document, with the top-k.

Asked through /v1/completions with echo and logprobs=top_k and one generated token (the scored
prompt positions are the document's; the generated one is dropped). Where the server offers them
(vLLM), the document is first tokenized by the server (/tokenize) and sent as token ids cut at
`max_tokens`, and tokens come back as "token_id:N" (return_tokens_as_token_ids), so a variant's
positions line up with the baseline's exactly. A server whose echo carries no prompt logprobs is
asked once with vLLM's `prompt_logprobs` instead; one that has neither is NotMeasurable.
quality.json's protocol notes record which of these the server accepted.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from core.plan_quality import EvalRecord
from loadtest.quality.base import COMPLETIONS, Collector, Context, NotMeasurable, Output
from loadtest.quality.client import ServerAnswerError, first_choice
from loadtest.quality.rows import LIKELIHOOD_SCHEMA, table
TOKEN_ID_PREFIX = "token_id:"


class LikelihoodCollector(Collector):
    name = "likelihood"

    async def collect(self, ctx: Context) -> Output:
        spec = ctx.spec
        docs = spec.records()[: spec.max_docs]
        notes: dict[str, Any] = {"tokenize": None, "token_ids": None, "logprobs_from": None,
                                 "documents": len(docs), "top_k": spec.top_k}
        # the first document finds out what the server accepts; the rest go concurrently
        rows = await self._score(ctx, docs[0], notes)
        rest = await asyncio.gather(*(self._score(ctx, d, notes) for d in docs[1:]))
        for r in rest:
            rows.extend(r)
        if notes["token_ids"] is None:
            notes["token_ids"] = False
        return Output({"likelihood": table(rows, LIKELIHOOD_SCHEMA)}, notes, len(rows))

    async def _tokenize(self, ctx: Context, text: str, notes: dict[str, Any]) -> Optional[list[int]]:
        """The server's token ids of `text` (vLLM's /tokenize), or None where it has no such endpoint."""
        if notes["tokenize"] is False:
            return None
        try:
            ans = await ctx.client.post("/tokenize", {"model": ctx.model, "prompt": text})
        except ServerAnswerError as exc:
            if notes["tokenize"] is None and exc.status is not None and 400 <= exc.status < 500:
                notes["tokenize"] = False
                return None
            raise
        ids = ans.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            if notes["tokenize"] is None:
                notes["tokenize"] = False
                return None
            raise ServerAnswerError("/tokenize", "the answer has no list of token ids under 'tokens'")
        notes["tokenize"] = True
        return ids

    async def _score(self, ctx: Context, doc: EvalRecord, notes: dict[str, Any]) -> list[dict[str, Any]]:
        spec = ctx.spec
        ids = await self._tokenize(ctx, doc["text"], notes)
        prompt: Any = ids[: spec.max_tokens] if ids is not None else doc["text"]
        body = {"model": ctx.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "echo": True,
                "logprobs": spec.top_k}
        if notes["token_ids"] is not False:
            body["return_tokens_as_token_ids"] = True
        if notes["logprobs_from"] != "prompt_logprobs":
            choice = first_choice(await ctx.client.post(COMPLETIONS, body), COMPLETIONS)
            positions = _from_echo(choice, len(prompt) if ids is not None else None)
            if positions is not None:
                notes["logprobs_from"] = notes["logprobs_from"] or "echo"
                return _rows(doc.id, positions, notes, spec.top_k, spec.max_tokens)
        if ids is None:
            raise NotMeasurable("server returned no prompt logprobs (echo with logprobs gave none, and without "
                                "/tokenize the ids for vLLM's prompt_logprobs are unknown)")
        body = {k: v for k, v in body.items() if k not in ("echo", "logprobs")}
        body["prompt_logprobs"] = spec.top_k
        choice = first_choice(await ctx.client.post(COMPLETIONS, body), COMPLETIONS)
        positions = _from_prompt_logprobs(choice, prompt)
        if positions is None:
            raise NotMeasurable("server returned no prompt logprobs (neither echo with logprobs nor "
                                "prompt_logprobs gave any)")
        notes["logprobs_from"] = "prompt_logprobs"
        return _rows(doc.id, positions, notes, spec.top_k, spec.max_tokens)


Position = tuple[str, float, dict[str, float]]  # token, its logprob, the top-k {token: logprob}


def _from_echo(choice: dict[str, Any], n_prompt: Optional[int]) -> Optional[list[Optional[Position]]]:
    """Per prompt position (None at 0) from the legacy echo logprobs; None when the answer has none."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    tokens, values, tops = lp.get("tokens"), lp.get("token_logprobs"), lp.get("top_logprobs")
    if not (isinstance(tokens, list) and isinstance(values, list) and len(tokens) == len(values) and tokens):
        return None
    if n_prompt is None:
        n_prompt = len(tokens) - 1  # the one generated token closes the list
    if len(tokens) < n_prompt or n_prompt < 2:
        return None
    tops = tops if isinstance(tops, list) and len(tops) == len(tokens) else [None] * len(tokens)
    out: list[Optional[Position]] = [None]
    for i in range(1, n_prompt):
        v = values[i]
        if not isinstance(v, (int, float)):
            return None
        top = tops[i] if isinstance(tops[i], dict) else {}
        out.append((str(tokens[i]), float(v), {str(k): float(x) for k, x in top.items()}))
    return out


def _from_prompt_logprobs(choice: dict[str, Any], ids: list[int]) -> Optional[list[Optional[Position]]]:
    """Per prompt position from vLLM's `prompt_logprobs` ([None, {id: {logprob, decoded_token}}, ...])."""
    plp = choice.get("prompt_logprobs")
    if not isinstance(plp, list) or len(plp) < len(ids) or len(ids) < 2:
        return None
    out: list[Optional[Position]] = [None]
    for i in range(1, len(ids)):
        entry = plp[i]
        if not isinstance(entry, dict) or str(ids[i]) not in entry:
            return None
        top = {f"{TOKEN_ID_PREFIX}{k}": float(v["logprob"]) for k, v in entry.items()
               if isinstance(v, dict) and isinstance(v.get("logprob"), (int, float))}
        own = entry[str(ids[i])]
        out.append((f"{TOKEN_ID_PREFIX}{ids[i]}", float(own["logprob"]), top))
    return out


def _rows(doc_id: str, positions: list[Optional[Position]], notes: dict[str, Any], top_k: int,
          max_tokens: int) -> list[dict[str, Any]]:
    rows = []
    as_ids = all(p[0].startswith(TOKEN_ID_PREFIX) for p in positions[1:] if p is not None)
    if notes["token_ids"] is None or notes["token_ids"] is True:
        notes["token_ids"] = as_ids
    for pos, p in enumerate(positions[:max_tokens]):
        if p is None:
            continue
        token, logprob, top = p
        best = sorted(top.items(), key=lambda kv: kv[1], reverse=True)[:top_k]
        rows.append({"doc_id": doc_id, "position": pos, "token": token, "logprob": logprob,
                     "top_tokens": [t for t, _ in best], "top_logprobs": [x for _, x in best]})
    return rows
