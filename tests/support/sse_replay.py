"""Serve a captured SSE body again, event by event, with a pause of our choosing after each event.

    python -m tests.support.sse_replay --port P --file tests/data/vllm_sse/completions_stream.txt \
        [--pause-ms 0,1000]

Every POST gets the file's events (blank-line separated, bytes as captured) in order; the i-th
number of --pause-ms is slept after the i-th event (missing ones: no pause), so a test knows when
each event left the server and can tell which one the client's clock stopped at.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Optional

from aiohttp import web


def events(body: bytes) -> list[bytes]:
    """The events of an SSE body, each with its blank-line terminator."""
    return [chunk.strip(b"\n") + b"\n\n" for chunk in body.replace(b"\r\n", b"\n").split(b"\n\n") if chunk.strip()]


def replay_app(body: bytes, pauses_s: list[float]) -> web.Application:
    """POST /v1/completions (and chat) stream the captured events; GET /health answers for the launcher."""
    chunks = events(body)

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for i, chunk in enumerate(chunks):
            await resp.write(chunk)
            if i < len(pauses_s) and pauses_s[i] > 0:
                await asyncio.sleep(pauses_s[i])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", stream)
    app.router.add_post("/v1/chat/completions", stream)
    app.router.add_get("/health", lambda r: web.Response(text=""))
    return app


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--file", required=True, help="a captured SSE body")
    ap.add_argument("--pause-ms", default="", help="comma-separated pauses after event 0, 1, ...")
    args = ap.parse_args(argv)
    pauses = [float(x) / 1000 for x in args.pause_ms.split(",") if x.strip()]
    app = replay_app(Path(args.file).read_bytes(), pauses)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
