"""One OpenAI-compatible request, streamed, timed at every token event.

The clock matters more than anything else here: the first token is the first event that carries a
choice (even with empty text: byte-level tokenizers emit partial UTF-8 as ""), gaps are taken
between token events as they come off the socket, and every way a request can fail is named so a
fault shows up as a kind, not a traceback.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

import gevent
from geventhttpclient import HTTPClient
from geventhttpclient.response import HTTPConnectionClosed, HTTPParseError

from core.secrets import redact, secrets_in_headers
from scenarios import sse_events

# error kinds a record can carry
E_CONNECT = "connect"  # could not connect or send
E_HTTP = "http"  # non-200 status (http_status says which)
E_TIMEOUT_FIRST = "timeout_first_token"
E_TIMEOUT_TOTAL = "timeout_total"
E_DISCONNECT = "disconnect"  # the connection closed before [DONE]
E_PROTOCOL = "protocol"  # malformed SSE or JSON from the server
E_SERVER = "server_error_event"  # an error object inside the stream
E_CANCELLED = "cancelled"  # stopped by the sweep (drain ran out)
# not an error: the request succeeded (status ok) but the stream disagreed with itself, e.g. the
# usage event counts a different number of tokens than token events arrived; both counts are kept
E_PROTOCOL_WARNING = "protocol_warning"


@dataclass
class Timeouts:
    connect_s: float = 10.0
    first_token_s: float = 300.0
    total_s: float = 900.0


@dataclass
class StreamResult:
    """What came back; times are perf_counter seconds relative to the send."""

    ok: bool = False
    http_status: Optional[int] = None
    ttft_s: Optional[float] = None
    itl_s: list[float] = field(default_factory=list)
    e2e_s: Optional[float] = None
    token_events: int = 0
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    text_chars: int = 0
    error_kind: Optional[str] = None
    error: Optional[str] = None
    done: bool = False  # saw data: [DONE]
    text: Optional[list[str]] = None  # the generated text, kept only when asked (multi-turn chat)

    @property
    def output_tokens(self) -> Optional[int]:
        return self.completion_tokens if self.completion_tokens is not None else (self.token_events or None)


class _FirstTokenTimeout(Exception):
    pass


class _TotalTimeout(Exception):
    pass


# bytes asked of the socket per read: a chunk holds every event that has arrived, so one wake-up
# of the client handles a burst instead of one event
RECV_BLOCK = 64 * 1024


def make_client(base_url: str, timeouts: Timeouts, concurrency: int = 1) -> HTTPClient:
    """A keep-alive HTTP client for one user (one connection is enough for a closed-loop user)."""
    u = urlsplit(base_url)
    return HTTPClient(
        u.hostname or "127.0.0.1",
        port=u.port or (443 if u.scheme == "https" else 80),
        ssl=u.scheme == "https",
        connection_timeout=timeouts.connect_s,
        network_timeout=timeouts.total_s,
        concurrency=concurrency,
        block_size=RECV_BLOCK,
        headers={"Accept-Encoding": "identity"},
    )


def _short(msg: Any, n: int = 500) -> str:
    s = str(msg)
    return s if len(s) <= n else s[:n] + "..."


def stream_request(
    client: HTTPClient,
    path: str,
    body: dict[str, Any],
    timeouts: Timeouts,
    headers: Optional[dict[str, str]] = None,
    t_send: Optional[float] = None,
    result: Optional[StreamResult] = None,
    collect_text: bool = False,
) -> StreamResult:
    """POST body to path with stream=true and time every token event.

    t_send is the perf_counter at which the request was handed to the socket; callers take it
    just before calling so queueing inside this function counts against the server, not the clock.
    `result`, when given, is filled in place, so a caller whose greenlet is killed mid-stream
    still holds what arrived before. `collect_text` keeps the generated text (res.text), which a
    multi-turn conversation sends back as the assistant's turn.
    """
    res = result if result is not None else StreamResult()
    if collect_text:
        res.text = []
    hdrs = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if headers:
        hdrs.update(headers)
    payload = json.dumps(body).encode()
    t0 = time.perf_counter() if t_send is None else t_send
    st = StreamParser(res, t0, t0 + timeouts.total_s, collect_text)
    st.timer = gevent.Timeout(timeouts.first_token_s, _FirstTokenTimeout)
    st.timer.start()
    resp = None
    try:
        try:
            resp = client.post(path, body=payload, headers=hdrs)
        except _FirstTokenTimeout:
            raise
        except (OSError, HTTPConnectionClosed) as exc:
            res.error_kind, res.error = E_CONNECT, _short(f"{type(exc).__name__}: {exc}")
            return res
        res.http_status = resp.status_code
        if resp.status_code != 200:
            try:
                text = resp.read().decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - the status is the error; the body is a courtesy
                text = ""
            res.error_kind, res.error = E_HTTP, _short(f"HTTP {resp.status_code}: {text.strip()}")
            return res
        read_some = _reader(resp)
        while not st.stop:
            chunk = read_some()
            now = time.perf_counter()  # every event in this chunk came off the socket now
            if not chunk:
                st.end(now)
                break
            st.feed(chunk, now)
        res.e2e_s = st.last - t0 if res.token_events else time.perf_counter() - t0
        if res.done and res.error_kind is None:
            res.e2e_s = time.perf_counter() - t0
            res.ok = True
            if res.completion_tokens is not None and res.completion_tokens != res.token_events:
                res.error_kind = E_PROTOCOL_WARNING
                res.error = (f"usage reports {res.completion_tokens} completion tokens but "
                             f"{res.token_events} token events arrived")
        return res
    except _FirstTokenTimeout:
        res.error_kind = E_TIMEOUT_FIRST
        res.error = f"no token within {timeouts.first_token_s:g} s"
        res.e2e_s = time.perf_counter() - t0
        return res
    except _TotalTimeout:
        res.error_kind = E_TIMEOUT_TOTAL
        res.error = f"not finished within {timeouts.total_s:g} s"
        res.e2e_s = time.perf_counter() - t0
        return res
    except (OSError, HTTPConnectionClosed) as exc:
        res.error_kind = E_DISCONNECT
        res.error = _short(f"{type(exc).__name__}: {exc} after {res.token_events} token events")
        res.e2e_s = time.perf_counter() - t0
        return res
    except HTTPParseError as exc:
        # the body broke off mid-chunk (the server died or dropped the socket) or was not HTTP at all
        incomplete = "incomplete" in str(exc).lower()
        res.error_kind = E_DISCONNECT if incomplete else E_PROTOCOL
        res.error = _short(f"{type(exc).__name__}: {exc} after {res.token_events} token events")
        res.e2e_s = time.perf_counter() - t0
        return res
    except gevent.GreenletExit:
        res.error_kind, res.error = E_CANCELLED, f"cancelled after {res.token_events} token events"
        res.e2e_s = time.perf_counter() - t0
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the answer did to the client, the request is kept
        res.error_kind = E_PROTOCOL
        res.error = _short(f"unreadable answer: {type(exc).__name__}: {exc} after {res.token_events} token events")
        res.e2e_s = time.perf_counter() - t0
        return res
    finally:
        if res.e2e_s is None:  # an HTTP error or a failed connect still took this long
            res.e2e_s = time.perf_counter() - t0
        if res.error and headers:  # a server may echo credentials back (a 401 body, an error event)
            res.error = redact(res.error, secrets_in_headers(headers))
        if st.timer is not None:
            st.timer.cancel()
        if resp is not None and res.ok and _finish_message(resp):
            resp.release()  # the body ended cleanly: the connection goes back to the pool for the next request
        elif resp is not None:
            # a half-read stream cannot be reused: drop the connection
            try:
                resp._sock and resp._sock.close()  # noqa: SLF001
            except Exception:  # noqa: BLE001
                pass
            try:
                resp.release()
            except Exception:  # noqa: BLE001
                pass


# how long a finished stream may take to end its HTTP body after [DONE] before its connection is dropped
END_OF_BODY_S = 0.1


def _finish_message(resp) -> bool:  # noqa: ANN001
    """Read what is left of the HTTP body after [DONE] (the last chunk's terminator); True when it ended.

    A response left unread is discarded with its socket, so without this every request opened a
    new connection (a connect, a name lookup in gevent's thread pool, the server's accept), which
    the reference client, keeping its connections, does not pay.
    """
    if getattr(resp, "message_complete", False):
        return True
    sock = getattr(resp, "_sock", None)
    if sock is None or not hasattr(resp, "feed"):
        return False
    try:
        with gevent.Timeout(END_OF_BODY_S, False):
            while not resp.message_complete:
                data = sock.recv(RECV_BLOCK)
                if not data:
                    return False
                resp.feed(data)
    except Exception:  # noqa: BLE001 - a bad ending costs the connection, never the measured request
        return False
    return bool(resp.message_complete)


def _reader(resp):  # noqa: ANN001, ANN202
    """A function returning the body bytes that have arrived (b"" at the end of the body).

    geventhttpclient's readline copies and re-scans its buffer once per line; reading whatever the
    socket holds and splitting it here costs one recv and one parse per burst of events.

    It waits for the socket to be readable before it reads, as an event loop does: a stream's events
    mostly come one per wake-up, and reading first would fail (EAGAIN, an exception) on every second
    recv, a syscall and a raise per event. Only after a read that filled the whole block, when more
    is likely waiting, does it read again straight away.
    """
    buf = getattr(resp, "_body_buffer", None)
    if buf is None or not hasattr(resp, "feed") or not hasattr(resp, "message_complete"):  # another version
        return lambda: resp.readline(b"\n")
    feed = resp.feed
    more = [True]  # the last read filled its block (or none was made yet): read again before waiting

    def read_some() -> bytes:
        while True:
            if buf:
                data = bytes(buf)
                del buf[:]
                return data
            if resp.message_complete:  # (a short body may have come whole with the headers)
                return b""
            sock = resp._sock  # noqa: SLF001
            if sock is None:
                raise HTTPConnectionClosed("connection closed.")
            if more[0]:
                data = sock.recv(RECV_BLOCK)  # gevent's recv: reads, or waits and reads
            else:
                # readable now, so the read below does not fail; the stream's own timeouts cover a
                # silent server (the socket's would start and cancel a timer per event)
                sock.hub.wait(sock._read_event)  # noqa: SLF001
                data = sock.recv(RECV_BLOCK)
            more[0] = len(data) == RECV_BLOCK
            feed(data)
            if not data and not buf:
                return b""

    return read_some


class StreamParser:
    """Parse state of one response body: splits it into SSE lines, counts token events, keeps the clocks.

    `feed` takes body bytes as they came off the socket, cut anywhere, with the time they came;
    every event completed by those bytes is stamped with that time. `timer`, when set, is the
    first-token timeout, swapped for the total timeout at the first token.
    """

    __slots__ = ("res", "t0", "deadline", "collect", "timer", "last", "stop", "pending")

    def __init__(self, res: StreamResult, t0: float, deadline: float, collect: bool = False):
        self.res, self.t0, self.deadline, self.collect = res, t0, deadline, collect
        self.timer: Optional[gevent.Timeout] = None
        self.last = t0
        self.stop = False
        self.pending = b""  # the start of a line whose end has not arrived

    def feed(self, chunk: bytes, now: float) -> None:
        if self.pending:
            chunk = self.pending + chunk
        lines = chunk.split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            if line:
                self.line(line, now)
                if self.stop:
                    return

    def end(self, now: float) -> None:
        """The body ended: a last line without its newline still counts; no [DONE] is a disconnect."""
        if self.pending.strip() and not self.stop:
            self.line(self.pending, now)
        self.pending = b""
        if not self.stop:
            res = self.res
            res.error_kind = E_DISCONNECT
            res.error = f"stream ended before [DONE] after {res.token_events} token events"

    def line(self, line: bytes, now: float) -> None:
        res = self.res
        if not line.startswith(b"data:"):
            if line.strip() and not line.startswith(b":"):
                res.error_kind, res.error = E_PROTOCOL, _short(f"unexpected SSE line: {line[:200]!r}")
                self.stop = True
            return
        data = line[5:].strip()
        if data == b"[DONE]":
            res.done = True
            self.stop = True
            return
        try:
            ev = sse_events.decode(data)
        except sse_events.BadEvent as exc:
            res.error_kind, res.error = E_PROTOCOL, _short(exc)
            self.stop = True
            return
        if ev.error is not None:
            err = ev.error
            res.error_kind = E_SERVER
            res.error = _short(err.get("message", err) if isinstance(err, dict) else err)
            self.stop = True
            return
        if ev.token:
            self.token(now)
            res.text_chars += len(ev.text)
            if res.text is not None and ev.text:
                res.text.append(ev.text)
        if ev.usage is not None:
            res.prompt_tokens = _count(ev.usage.get("prompt_tokens"), res.prompt_tokens)
            res.completion_tokens = _count(ev.usage.get("completion_tokens"), res.completion_tokens)

    def token(self, now: float) -> None:
        res = self.res
        if res.token_events == 0:
            res.ttft_s = now - self.t0
            if self.timer is not None:
                self.timer.cancel()
                self.timer = gevent.Timeout(max(self.deadline - now, 0.001), _TotalTimeout)
                self.timer.start()
        else:
            res.itl_s.append(now - self.last)
        self.last = now
        res.token_events += 1


def _count(v: Any, old: Optional[int]) -> Optional[int]:
    """A token count from a usage event, if it is one (a whole number a Parquet int32 holds)."""
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31:
        return v
    return old


def served_model(url: str, headers: Optional[dict[str, str]] = None) -> Optional[str]:
    """The first model the server lists on /v1/models (vLLM serves one), or None."""
    try:
        req = urllib.request.Request(url.rstrip("/") + "/v1/models", headers=headers or {})
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - the plan's own server
            data = json.loads(r.read())
        return data["data"][0]["id"]
    except Exception:  # noqa: BLE001
        return None
