"""A test double of an OpenAI-compatible server for the quality faults real vLLM cannot be made to show.

    python -m tests.support.quality_fault_server --port N --fault FAULT

Faults: `none` (answers like vLLM: /tokenize, echo logprobs as "token_id:N"), `no-logprobs` (echo
without any prompt logprobs, as some OpenAI-compatible servers answer), `prompt-logprobs-only`
(echo logprobs empty, vLLM's `prompt_logprobs` field filled), `bad-json` (completions answered with
a truncated body), `flaky` (every completion fails twice with 500 before it is answered),
`always-500`, `die-after` (the process exits after N completions). Tokens are the whitespace words
of the prompt, ids their position in a fixed vocabulary; logprobs are a fixed function of the ids.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from aiohttp import web

VOCAB = 1000


def _ids(text: str) -> list[int]:
    return [sum(map(ord, w)) % VOCAB for w in text.split()]


def _lp(prev: int, tok: int) -> float:
    return -1.0 - ((prev * 31 + tok * 17) % 97) / 10.0


def _top(prev: int, k: int) -> dict[int, float]:
    return {(prev * 7 + j) % VOCAB: -0.5 - j / 4.0 for j in range(k)}


class Fault:
    def __init__(self, kind: str, after: int):
        self.kind, self.after, self.count, self.attempts = kind, after, 0, {}

    async def health(self, _req: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def tokenize(self, req: web.Request) -> web.Response:
        body = await req.json()
        return web.json_response({"tokens": _ids(body["prompt"]), "count": len(_ids(body["prompt"]))})

    async def completions(self, req: web.Request) -> web.Response:
        body = await req.json()
        self.count += 1
        if self.kind == "die-after" and self.count > self.after:
            os._exit(3)
        if self.kind == "always-500":
            return web.Response(status=500, text="internal error")
        key = repr(body.get("prompt"))
        if self.kind == "flaky":
            n = self.attempts[key] = self.attempts.get(key, 0) + 1
            if n <= 2:
                return web.Response(status=500, text="engine busy")
        if self.kind == "bad-json":
            return web.Response(text='{"choices": [{"text": "cut', content_type="application/json")
        prompt = body.get("prompt")
        ids = list(prompt) if isinstance(prompt, list) else _ids(str(prompt))
        k = int(body.get("logprobs") or 0)
        gen = (ids[-1] * 3 + 1) % VOCAB if ids else 0
        out = [gen]
        for _ in range(int(body.get("max_tokens") or 1) - 1):
            out.append((out[-1] * 3 + 1) % VOCAB)
        choice: dict[str, Any] = {"index": 0, "text": " ".join(f"w{t}" for t in out), "finish_reason": "length"}
        seq = (ids if body.get("echo") else []) + out
        if self.kind == "no-logprobs" or body.get("logprobs") is None:
            choice["logprobs"] = None
        elif self.kind == "prompt-logprobs-only" and body.get("echo"):
            choice["logprobs"] = {"tokens": [], "token_logprobs": [], "top_logprobs": []}
        else:
            toks = [f"token_id:{t}" for t in seq]
            vals = [None if i == 0 else _lp(seq[i - 1], t) for i, t in enumerate(seq)]
            tops = [None if i == 0 else {f"token_id:{a}": b for a, b in _top(seq[i - 1], k).items()}
                    for i in range(len(seq))]
            choice["logprobs"] = {"tokens": toks, "token_logprobs": vals, "top_logprobs": tops}
        if body.get("prompt_logprobs") and self.kind == "prompt-logprobs-only":
            plp: list[Any] = [None]
            for i in range(1, len(ids)):
                entry = {str(a): {"logprob": b, "rank": 1} for a, b in _top(ids[i - 1], body["prompt_logprobs"]).items()}
                entry[str(ids[i])] = {"logprob": _lp(ids[i - 1], ids[i]), "rank": 50}
                plp.append(entry)
            choice["prompt_logprobs"] = plp
        return web.json_response({"choices": [choice], "usage": {"prompt_tokens": len(ids)}})


def expected_logprob(prev: int, tok: int) -> float:
    """What the double answers for token `tok` after `prev` (tests compute their expectations with it)."""
    return _lp(prev, tok)


def word_ids(text: str) -> list[int]:
    return _ids(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--fault", default="none")
    ap.add_argument("--after", type=int, default=3)
    a = ap.parse_args()
    f = Fault(a.fault, a.after)
    app = web.Application()
    app.router.add_get("/health", f.health)
    app.router.add_post("/tokenize", f.tokenize)
    app.router.add_post("/v1/completions", f.completions)
    web.run_app(app, host="127.0.0.1", port=a.port, print=None)


if __name__ == "__main__":
    main()
