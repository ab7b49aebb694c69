"""A null OpenAI-compatible server: streams K token events per request with known delays.

It does no work, so whatever latency a client measures beyond the configured delays is the
client's own error; and with zero delay it shows how many events per second a client can take.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Optional

from aiohttp import web

_COMPL = (b'data: {"id":"cmpl-%s","object":"text_completion","created":%d,"model":"%s","choices":'
          b'[{"index":0,"text":" tok","logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n')
_CHAT = (b'data: {"id":"chatcmpl-%s","object":"chat.completion.chunk","created":%d,"model":"%s","choices":'
         b'[{"index":0,"delta":{"content":" tok"},"logprobs":null,"finish_reason":null}]}\n\n')


class NullServer:
    """Streams `events` token events per request; first after `ttft_s`, then every `gap_s`."""

    def __init__(self, events: int = 64, ttft_s: float = 0.0, gap_s: float = 0.0, model: str = "null",
                 honour_max_tokens: bool = True):
        self.events = events
        self.ttft_s = ttft_s
        self.gap_s = gap_s
        self.model = model
        self.honour_max_tokens = honour_max_tokens
        self.requests = 0
        self._n = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self.stream)
        app.router.add_post("/v1/chat/completions", self.stream)
        app.router.add_get("/health", lambda r: web.Response(text=""))
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", lambda r: web.Response(text=f"null_requests_total {self.requests}\n"))
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        self._n += 1
        n = self.events
        if self.honour_max_tokens and isinstance(body.get("max_tokens"), int):
            n = min(n, body["max_tokens"]) if self.events else body["max_tokens"]
        chat = request.path.endswith("/chat/completions")
        rid = str(self._n).encode()
        ev = (_CHAT if chat else _COMPL) % (rid, int(time.time()), self.model.encode())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        start = time.perf_counter()
        for i in range(n):
            # deadlines from the start, so the server's own lag does not accumulate
            due = start + self.ttft_s + i * self.gap_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await resp.write(ev)
        usage = {"id": f"cmpl-{self._n}", "object": "text_completion", "created": int(time.time()),
                 "model": self.model, "choices": [],
                 "usage": {"prompt_tokens": 1, "total_tokens": 1 + n, "completion_tokens": n}}
        await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
        await resp.write_eof()
        return resp


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m testdoubles.null_server", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--events", type=int, default=64, help="token events per request (0: max_tokens)")
    ap.add_argument("--ttft-ms", type=float, default=0.0)
    ap.add_argument("--gap-ms", type=float, default=0.0)
    ap.add_argument("--keepalive-s", type=float, default=75.0,
                    help="close a kept connection idle this long (vLLM's uvicorn: 5 s)")
    a = ap.parse_args(argv)
    srv = NullServer(a.events, a.ttft_ms / 1000, a.gap_ms / 1000)
    web.run_app(srv.app(), host=a.host, port=a.port, print=None, access_log=None, keepalive_timeout=a.keepalive_s)


if __name__ == "__main__":
    main()
