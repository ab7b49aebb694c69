"""One OpenAI-compatible request, streamed, timed at every token event.

The clock matters more than anything else here: the first token is the first event that carries a
choice (even with empty text: byte-level tokenizers emit partial UTF-8 as ""), gaps are taken
between token events as they come off the socket, and every way a request can fail is named so a
fault shows up as a kind, not a traceback.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

import gevent
from geventhttpclient import HTTPClient
from geventhttpclient.response import HTTPConnectionClosed

# error kinds a record can carry
E_CONNECT = "connect"  # could not connect or send
E_HTTP = "http"  # non-200 status (http_status says which)
E_TIMEOUT_FIRST = "timeout_first_token"
E_TIMEOUT_TOTAL = "timeout_total"
E_DISCONNECT = "disconnect"  # the connection closed before [DONE]
E_PROTOCOL = "protocol"  # malformed SSE or JSON from the server
E_SERVER = "server_error_event"  # an error object inside the stream
E_CANCELLED = "cancelled"  # stopped by the sweep (drain ran out)


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

    @property
    def output_tokens(self) -> Optional[int]:
        return self.completion_tokens if self.completion_tokens is not None else (self.token_events or None)


class _FirstTokenTimeout(Exception):
    pass


class _TotalTimeout(Exception):
    pass


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
) -> StreamResult:
    """POST body to path with stream=true and time every token event.

    t_send is the perf_counter at which the request was handed to the socket; callers take it
    just before calling so queueing inside this function counts against the server, not the clock.
    `result`, when given, is filled in place, so a caller whose greenlet is killed mid-stream
    still holds what arrived before.
    """
    res = result if result is not None else StreamResult()
    hdrs = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if headers:
        hdrs.update(headers)
    payload = json.dumps(body).encode()
    t0 = time.perf_counter() if t_send is None else t_send
    deadline_total = t0 + timeouts.total_s
    timer = gevent.Timeout(timeouts.first_token_s, _FirstTokenTimeout)
    timer.start()
    last = t0
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
        while True:
            line = resp.readline(b"\n")
            now = time.perf_counter()
            if not line:
                if not res.done:
                    res.error_kind = E_DISCONNECT
                    res.error = f"stream ended before [DONE] after {res.token_events} token events"
                break
            if not line.startswith(b"data:"):
                if line.strip() and not line.startswith(b":"):
                    res.error_kind, res.error = E_PROTOCOL, _short(f"unexpected SSE line: {line[:200]!r}")
                    break
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                res.done = True
                break
            try:
                ev = json.loads(data)
            except ValueError:
                res.error_kind, res.error = E_PROTOCOL, _short(f"event is not JSON: {data[:200]!r}")
                break
            if not isinstance(ev, dict):
                res.error_kind, res.error = E_PROTOCOL, _short(f"event is not an object: {data[:200]!r}")
                break
            if "error" in ev and not ev.get("choices"):
                err = ev["error"]
                res.error_kind = E_SERVER
                res.error = _short(err.get("message", err) if isinstance(err, dict) else err)
                break
            choices = ev.get("choices")
            if choices and _is_token_event(choices[0]):
                if res.token_events == 0:
                    res.ttft_s = now - t0
                    timer.cancel()
                    timer = gevent.Timeout(max(deadline_total - now, 0.001), _TotalTimeout)
                    timer.start()
                else:
                    res.itl_s.append(now - last)
                last = now
                res.token_events += 1
                c0 = choices[0]
                txt = c0.get("text")
                if txt is None:
                    txt = (c0.get("delta") or {}).get("content") or ""
                res.text_chars += len(txt)
            usage = ev.get("usage")
            if isinstance(usage, dict):
                res.prompt_tokens = usage.get("prompt_tokens", res.prompt_tokens)
                res.completion_tokens = usage.get("completion_tokens", res.completion_tokens)
        res.e2e_s = last - t0 if res.token_events else time.perf_counter() - t0
        if res.done and res.error_kind is None:
            res.e2e_s = time.perf_counter() - t0
            res.ok = True
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
    except gevent.GreenletExit:
        res.error_kind, res.error = E_CANCELLED, f"cancelled after {res.token_events} token events"
        res.e2e_s = time.perf_counter() - t0
        raise
    finally:
        timer.cancel()
        if resp is not None and not res.ok:
            # a half-read stream cannot be reused: drop the connection
            try:
                resp._sock and resp._sock.close()  # noqa: SLF001
            except Exception:  # noqa: BLE001
                pass
            try:
                resp.release()
            except Exception:  # noqa: BLE001
                pass


def _is_token_event(choice: dict[str, Any]) -> bool:
    """A choice that carries generated output: completions `text`, or a chat delta with content."""
    if "text" in choice:
        return True
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    if "role" in delta and not delta.get("content"):
        return False  # the role-only opening event of a chat stream carries no token
    return "content" in delta or "reasoning_content" in delta or "tool_calls" in delta
