"""The HTTP client that asks a live OpenAI-compatible server for quality measurements.

Quality requests are few and expensive (a whole document's prompt logprobs), so the client keeps a
bounded number in flight, gives each a timeout, and retries what a busy or restarting server
answers transiently (connection errors, 408, 429, 5xx) with backoff. Anything else (a 4xx, an
answer that is not JSON) is a `ServerAnswerError` naming the endpoint and what came back, so the
variant's quality is recorded as failed with that reason and nothing else is lost.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

import aiohttp

from core.errors import RidgelineError

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
BACKOFF_S = 0.5


class ServerAnswerError(RidgelineError, RuntimeError):
    """The server answered something the measurement cannot use; the message says what and where."""

    def __init__(self, endpoint: str, why: str, status: Optional[int] = None):
        self.endpoint, self.why, self.status = endpoint, why, status
        super().__init__(f"{endpoint}: {why}")


class QualityClient:
    """POSTs JSON to one server with bounded concurrency, per-request timeouts and retries."""

    def __init__(self, base_url: str, headers: Optional[dict[str, str]] = None, concurrency: int = 4,
                 timeout_s: float = 300.0, retries: int = 3, backoff_s: float = BACKOFF_S):
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self._sem = asyncio.Semaphore(concurrency)
        self._session: Optional[aiohttp.ClientSession] = None
        self.requests = 0
        self.retried = 0

    async def __aenter__(self) -> "QualityClient":
        self._session = aiohttp.ClientSession(headers=self.headers, timeout=self.timeout)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON object the server answers to `body` at `path`; ServerAnswerError when it cannot be had."""
        assert self._session is not None, "use QualityClient as an async context manager"
        url = self.base_url + path
        last = ""
        async with self._sem:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.retried += 1
                    await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
                self.requests += 1
                try:
                    async with self._session.post(url, json=body) as resp:
                        text = await resp.text(errors="replace")
                        if resp.status in TRANSIENT_STATUS:
                            last = f"HTTP {resp.status}: {_brief(text)}"
                            continue
                        if resp.status >= 400:
                            raise ServerAnswerError(path, f"HTTP {resp.status}: {_brief(text)}", resp.status)
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as exc:
                    last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ServerAnswerError(path, f"the answer is not JSON ({exc.msg}): {_brief(text)}") from None
                if not isinstance(obj, dict):
                    raise ServerAnswerError(path, f"the answer is JSON {type(obj).__name__}, not an object")
                return obj
        raise ServerAnswerError(path, f"no usable answer after {self.retries + 1} attempts; last: {last}")


def _brief(text: str, n: int = 300) -> str:
    t = " ".join(text.split())
    return t if len(t) <= n else t[:n] + "..."


def first_choice(answer: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The answer's first choice; a ServerAnswerError when it has none."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ServerAnswerError(endpoint, "the answer has no choices")
    return choices[0]
