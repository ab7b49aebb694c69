"""A misbehaving OpenAI-compatible server: every way a stream can go wrong, on command.

Load tests are only trustworthy if every request that was sent leaves a record, whatever the
server did to it. This server streams like the null server but, when told, breaks the stream in
one named way, so tests can check that the client names the fault instead of losing the request.

A fault is chosen per request, first match wins:
  1. the `X-Fault` header, e.g. `X-Fault: die_after=3`;
  2. a `fault` field in the JSON body (a plan reaches it through `scenario.extra_body`);
  3. the admin queue: `POST /admin/fault {"fault": "status=500", "count": 10}` applies to the next
     10 requests (`DELETE /admin/fault` empties it);
  4. `--error-rate P`: each request draws one of `--error-faults` with probability P (seeded).

Faults (`name` or `name=arg`):
  ok                      a normal stream
  die_after=K             K token events, then the socket is torn down (no end of body)
  close_after_headers     200 and the headers, then the socket is torn down
  hang                    never answers (no status line)
  stall_after=K           K token events, then nothing more, with the socket open
  drip=S                  the normal stream sent one byte every S seconds (default 1)
  status=N                HTTP N with an OpenAI-style error body (429 carries Retry-After)
  malformed=K             K token events, then a `data:` line that is not JSON
  bad_sse=K               K token events, then a line that is not SSE at all
  truncated=K             K token events, then half an event and the end of the body
  usage_mismatch=D        a normal stream whose usage says D more completion tokens than were sent
  bad_usage               a normal stream whose usage counts are not numbers a client can keep
  no_done                 a normal stream and usage, then the end of the body without [DONE]
  error_event=K           K token events, then an error object inside the stream
  echo_auth               401 whose body repeats the Authorization header, also written to the log
                          (a careless server)
  exit_after=K            K token events, then the whole process exits with status 3

`--fail-first-start MARKER` makes the process itself fail at start once (a library that does not
load), so the launcher's retry can be tested: the real server cannot be made to fail that way.

It accepts and ignores vLLM's command-line flags, so the launcher can start it where vLLM would be.
`GET /admin/stats` says how many requests arrived and which faults they got.

With `--upstream URL` it stands in front of a real server (the emulator, vLLM): a request that draws
no fault is passed to the upstream and its answer streamed back byte for byte, `/v1/models` and
`/metrics` are the upstream's (with this server's counters appended), and only the faults are made
here. So a soak can run against the emulator's batching with a known share of failures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Optional

import aiohttp
from aiohttp import web

from core.errors import RidgelineError
from deploy.launcher import ServerCommand

FAULTS = ("ok", "die_after", "close_after_headers", "hang", "stall_after", "drip", "status", "malformed",
          "bad_sse", "truncated", "usage_mismatch", "bad_usage", "no_done", "error_event", "echo_auth",
          "exit_after")
DEFAULT_ERROR_FAULTS = "die_after=2,status=500,status=429,error_event=1,truncated=2,malformed=1"


class FaultSpecError(RidgelineError, ValueError):
    """A fault name or argument this server does not know."""


@dataclass(frozen=True)
class Fault:
    name: str
    arg: Optional[float] = None

    @classmethod
    def parse(cls, text: str) -> "Fault":
        name, _, arg = text.strip().partition("=")
        if name not in FAULTS:
            raise FaultSpecError(f"unknown fault {name!r} (known: {', '.join(FAULTS)})")
        if not arg:
            return cls(name)
        try:
            val = float(arg)
        except ValueError:
            raise FaultSpecError(f"fault {name!r}: argument {arg!r} is not a number") from None
        if val < 0:
            raise FaultSpecError(f"fault {name!r}: argument {arg!r} is negative")
        return cls(name, val)

    def k(self, default: int = 0) -> int:
        return int(self.arg) if self.arg is not None else default

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}={self.arg:g}"


def _event(chat: bool, rid: str, model: str) -> bytes:
    if chat:
        obj = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": int(time.time()),
               "model": model, "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}]}
    else:
        obj = {"id": f"cmpl-{rid}", "object": "text_completion", "created": int(time.time()), "model": model,
               "choices": [{"index": 0, "text": " tok", "logprobs": None, "finish_reason": None}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _usage(rid: str, model: str, completion: int) -> bytes:
    obj = {"id": f"cmpl-{rid}", "object": "text_completion", "created": int(time.time()), "model": model,
           "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": completion,
                                    "total_tokens": 1 + completion}}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} fault-server: {msg}", flush=True)


class FaultServer:
    """Streams `events` token events per request (first after ttft_s, then every gap_s), or a fault."""

    def __init__(self, events: int = 16, ttft_s: float = 0.0, gap_s: float = 0.0, model: str = "fault",
                 error_rate: float = 0.0, error_faults: str = DEFAULT_ERROR_FAULTS, seed: int = 0,
                 api_key: Optional[str] = None, log_every: int = 0, error_message: Optional[str] = None,
                 upstream: Optional[str] = None):
        self.upstream = upstream.rstrip("/") if upstream else None
        self._session: Optional[aiohttp.ClientSession] = None
        self.events = events
        self.ttft_s = ttft_s
        self.gap_s = gap_s
        self.model = model
        self.error_rate = error_rate
        self.error_faults = [Fault.parse(x) for x in error_faults.split(",") if x.strip()]
        self.rng = random.Random(seed)
        self.api_key = api_key
        self.log_every = log_every
        self.error_message = error_message  # replaces the text of injected errors (hostile-text tests)
        self.queue: deque[Fault] = deque()
        self.requests = 0
        self.faults: Counter[str] = Counter()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self.stream)
        app.router.add_post("/v1/chat/completions", self.stream)
        app.router.add_get("/health", lambda r: web.Response(text=""))
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/admin/fault", self.admin_set)
        app.router.add_delete("/admin/fault", self.admin_clear)
        app.router.add_get("/admin/stats", self.admin_stats)
        if self.upstream:
            app.on_cleanup.append(self._close_session)
        return app

    # ------------------------------------------------------------------ upstream
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # no pool limit: every stream the client opens gets its own upstream connection
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self._session

    async def _close_session(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request, body: Optional[dict] = None) -> web.StreamResponse:
        """The upstream's answer to the same request, streamed back as it arrives."""
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        method = "POST" if body is not None else "GET"
        try:
            async with self._client().request(method, self.upstream + request.path_qs, json=body,
                                              headers=headers) as up:
                resp = web.StreamResponse(status=up.status, headers={
                    k: v for k, v in up.headers.items() if k.lower() in ("content-type", "cache-control")})
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except aiohttp.ClientError as exc:
            return web.json_response({"error": {"message": f"upstream {self.upstream}: {exc}",
                                                "type": "BadGateway"}}, status=502)

    # ------------------------------------------------------------------ admin
    async def models(self, request: web.Request) -> web.StreamResponse:
        if self.upstream:
            return await self._forward(request)
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def metrics(self, request: web.Request) -> web.Response:
        lines = [f"fault_requests_total {self.requests}"]
        lines += [f'fault_injected_total{{fault="{k}"}} {v}' for k, v in sorted(self.faults.items())]
        text = "\n".join(lines) + "\n"
        if self.upstream:
            try:
                async with self._client().get(self.upstream + "/metrics") as up:
                    text = (await up.text()) + text
            except aiohttp.ClientError as exc:
                return web.Response(status=502, text=f"upstream {self.upstream}: {exc}\n")
        return web.Response(text=text)

    async def admin_set(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            fault = Fault.parse(str(body["fault"]))
            count = int(body.get("count", 1))
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.queue.extend([fault] * count)
        _log(f"next {count} requests get {fault}")
        return web.json_response({"queued": len(self.queue)})

    async def admin_clear(self, request: web.Request) -> web.Response:
        self.queue.clear()
        return web.json_response({"queued": 0})

    async def admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "faults": dict(self.faults), "queued": len(self.queue)})

    # ------------------------------------------------------------------ streaming
    def _choose(self, request: web.Request, body: dict) -> Fault:
        text = request.headers.get("X-Fault") or (body.get("fault") if isinstance(body.get("fault"), str) else None)
        if text:
            return Fault.parse(text)
        if self.queue:
            return self.queue.popleft()
        if self.error_rate > 0 and self.error_faults and self.rng.random() < self.error_rate:
            return self.rng.choice(self.error_faults)
        return Fault("ok")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
            fault = self._choose(request, body)
        except (ValueError, FaultSpecError) as exc:
            return web.json_response({"error": {"message": str(exc), "type": "BadRequestError"}}, status=400)
        self.requests += 1
        self.faults[str(fault)] += 1
        if fault.name != "ok" or (self.log_every and self.requests % self.log_every == 0):
            _log(f"request {self.requests}: {fault}")
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "invalid API key", "type": "AuthenticationError"}},
                                     status=401)
        if fault.name == "ok" and self.upstream:
            return await self._forward(request, {k: v for k, v in body.items() if k != "fault"})
        return await self._answer(request, body, fault)

    async def _answer(self, request: web.Request, body: dict, fault: Fault) -> web.StreamResponse:
        name = fault.name
        if name == "hang":
            await self._wait_closed(request)
            return web.Response(status=204)
        if name == "status":
            code = fault.k(500)
            hdrs = {"Retry-After": "1"} if code == 429 else {}
            msg = self.error_message or ("rate limit reached" if code == 429 else "injected server error")
            return web.json_response({"error": {"message": msg, "type": "InjectedError", "code": code}},
                                     status=code, headers=hdrs)
        if name == "echo_auth":
            seen = request.headers.get("Authorization", "")
            _log(f"rejected credentials: {seen}")
            return web.json_response({"error": {"message": f"rejected credentials: {seen}"}}, status=401)

        n = self.events
        if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 0:
            n = min(n, body["max_tokens"]) if n else body["max_tokens"]
        chat = request.path.endswith("/chat/completions")
        rid = str(self.requests)
        ev = _event(chat, rid, self.model)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if name == "close_after_headers":
            self._tear_down(request)
            return resp
        if name == "drip":
            await self._drip(request, resp, [ev] * n + [_usage(rid, self.model, n), b"data: [DONE]\n\n"],
                             fault.arg if fault.arg is not None else 1.0)
            return resp

        cut = {"die_after": fault.k(), "stall_after": fault.k(), "malformed": fault.k(1), "bad_sse": fault.k(1),
               "truncated": fault.k(1), "error_event": fault.k(1), "exit_after": fault.k()}.get(name, n)
        start = time.perf_counter()
        for i in range(min(n, cut)):
            due = start + self.ttft_s + i * self.gap_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await resp.write(ev)
        if name == "die_after":
            self._tear_down(request)
            return resp
        if name == "exit_after":
            _log("exiting now, as asked (exit_after)")
            os._exit(3)
        if name == "stall_after":
            await self._wait_closed(request)
            return resp
        if name == "malformed":
            await resp.write(b'data: {"id": "cmpl-' + rid.encode() + b'", "choices": [{"text": \n\n')
        elif name == "bad_sse":
            await resp.write(b"<html>502 Bad Gateway</html>\n\n")
        elif name == "truncated":
            await resp.write(ev[: len(ev) // 2])
            await resp.write_eof()
            return resp
        elif name == "error_event":
            err = {"error": {"message": self.error_message or "injected error inside the stream",
                             "type": "InternalServerError", "code": 500}}
            await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
        elif name == "bad_usage":
            await resp.write(b'data: {"choices": [], "usage": {"prompt_tokens": -3, "completion_tokens": "many",'
                             b' "total_tokens": 1e40}}\n\n')
        else:
            extra = fault.k(5) if name == "usage_mismatch" else 0
            await resp.write(_usage(rid, self.model, n + extra))
        if name != "no_done":
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    @staticmethod
    def _tear_down(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()

    @staticmethod
    async def _wait_closed(request: web.Request, limit_s: float = 3600.0) -> None:
        """Say nothing until the client goes away (or an hour passes), so no task is left behind."""
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            tr = request.transport
            if tr is None or tr.is_closing():
                return
            await asyncio.sleep(0.05)

    async def _drip(self, request: web.Request, resp: web.StreamResponse, chunks: list[bytes], every_s: float) -> None:
        for b in b"".join(chunks):
            tr = request.transport
            if tr is None or tr.is_closing():
                return
            await resp.write(bytes([b]))
            await asyncio.sleep(every_s)
        await resp.write_eof()


def command(port: int, events: int = 16, ttft_ms: float = 0.0, gap_ms: float = 0.0, error_rate: float = 0.0,
            extra: Optional[list[str]] = None, variant: str = "fault", startup_timeout_s: float = 30.0):
    """The launcher command that starts this server on loopback (tests and the soak use it)."""
    argv = [sys.executable, "-m", "testdoubles.fault_server", "--port", str(port), "--events", str(events),
            "--ttft-ms", str(ttft_ms), "--gap-ms", str(gap_ms), "--error-rate", str(error_rate)] + list(extra or [])
    return ServerCommand(variant, argv, port=port, startup_timeout_s=startup_timeout_s,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m testdoubles.fault_server", description=__doc__, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="bind address (loopback unless told otherwise)")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--events", type=int, default=16, help="token events per request (0: max_tokens)")
    ap.add_argument("--ttft-ms", type=float, default=0.0)
    ap.add_argument("--gap-ms", type=float, default=0.0)
    ap.add_argument("--served-model-name", dest="model", default="fault")
    ap.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests given a random fault")
    ap.add_argument("--error-faults", default=DEFAULT_ERROR_FAULTS, help="comma-separated faults to draw from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--require-key-env", default=None,
                    help="answer 401 unless the Authorization header carries the key in this variable")
    ap.add_argument("--log-every", type=int, default=0, help="also log every Nth normal request")
    ap.add_argument("--error-message", default=None, help="text of injected errors (500, 429, error_event)")
    ap.add_argument("--upstream", default=None,
                    help="pass requests that draw no fault to this server (e.g. http://127.0.0.1:8000)")
    ap.add_argument("--fail-first-start", default=None, metavar="MARKER",
                    help="exit at start with a library-load error unless the file MARKER exists (it is made "
                         "then): a start that fails once for a passing reason, then works")
    return ap


def main(argv: Optional[list[str]] = None) -> None:
    a, ignored = parser().parse_known_args(argv)
    if a.fail_first_start and not os.path.exists(a.fail_first_start):
        open(a.fail_first_start, "w").close()
        _log("Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so (made to fail by --fail-first-start)")
        sys.exit(1)
    if not 0.0 <= a.error_rate <= 1.0:
        sys.exit("--error-rate must be between 0 and 1")
    key = None
    if a.require_key_env:
        key = os.environ.get(a.require_key_env)
        if not key:
            sys.exit(f"--require-key-env {a.require_key_env}: that variable is not set")
    srv = FaultServer(a.events, a.ttft_ms / 1000, a.gap_ms / 1000, a.model, a.error_rate, a.error_faults, a.seed,
                      key, a.log_every, a.error_message, a.upstream)
    _log(f"listening on {a.host}:{a.port}, {a.events} events per request, error rate {a.error_rate:g}"
         + (f", passing the rest to {a.upstream}" if a.upstream else "")
         + (f"; ignoring {len(ignored)} unknown arguments" if ignored else ""))
    web.run_app(srv.app(), host=a.host, port=a.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
