"""Response bodies in vLLM's exact shapes, and the per-request stream that writes them.

Streaming is the hot path: with 512 streams an engine step emits hundreds of events, so each event is
three pre-encoded byte strings joined (prefix, token text, suffix) and written without awaiting.
Shapes are those vLLM's OpenAI server produces (pydantic `model_dump_json(exclude_unset=True)` of its
stream chunks): completions events carry id, object, created, model and one choice with index, text,
logprobs, finish_reason, stop_reason, prompt_token_ids and token_ids; chat events carry a delta, the
first one with the role. The usage event has `choices: []`; `data: [DONE]` closes every stream.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Optional

from aiohttp import web

log = logging.getLogger("deploy.emulator")

# The text of emulated tokens: short common words, each one token, none needing JSON escapes.
TOKEN_WORDS = (
    "the of and to in is for on that with as it at by from this be are or an was not but have all can has "
    "more one will which their there if about they so what when up out into time some would them other than "
    "then now only its also new may two like any these over after first well way even most made back much "
    "where your just see how each year make good very long last great little own old right big high small "
    "large next early young few public same able day man work life part place case week point group number "
    "world area state system water story fact month lot study book eye job word side kind head house service "
    "friend power hour game line end member law car city name team minute idea body level"
).split()
TOKEN_TEXT = tuple(" " + w for w in TOKEN_WORDS)
TOKEN_JSON = tuple(json.dumps(t).encode() for t in TOKEN_TEXT)

DONE = b"data: [DONE]\n\n"


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def new_id(chat: bool) -> str:
    """vLLM's request ids: a prefix and 16 hex digits."""
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]


# what vLLM puts in system_fingerprint: "vllm-<version>-<8 hex digits of its config hash>"
SYSTEM_FINGERPRINT = "vllm-0.24.0-emulated"


def set_fingerprint(value: str) -> None:
    global SYSTEM_FINGERPRINT
    SYSTEM_FINGERPRINT = value


def error_body(message: str, err_type: str = "BadRequestError", code: int = 400, param: Optional[str] = None) -> dict:
    """vLLM's error body ({"error": {...}}), with the flat keys older vLLM releases sent alongside."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code},
            "object": "error", "message": message, "type": err_type, "param": param, "code": code}


def error_response(message: str, err_type: str = "BadRequestError", code: int = 400,
                   param: Optional[str] = None) -> web.Response:
    return web.json_response(error_body(message, err_type, code, param), status=code, dumps=_dumps)


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}


def completion_json(rid: str, created: int, model: str, text: str, finish: str, prompt: int, completion: int) -> dict:
    """The non-streaming /v1/completions body."""
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None,
                     "token_ids": None, "prompt_logprobs": None, "prompt_token_ids": None, "routed_experts": None}],
        "service_tier": None, "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": dict(usage(prompt, completion), prompt_tokens_details=None, completion_tokens_details=None),
        "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None,
    }


def chat_json(rid: str, created: int, model: str, text: str, finish: str, prompt: int, completion: int) -> dict:
    """The non-streaming /v1/chat/completions body."""
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0,
                     "message": {"role": "assistant", "content": text, "refusal": None, "annotations": None,
                                 "audio": None, "function_call": None, "reasoning": None},
                     "logprobs": None, "finish_reason": finish, "stop_reason": None, "token_ids": None,
                     "routed_experts": None}],
        "service_tier": None, "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": dict(usage(prompt, completion), prompt_tokens_details=None, completion_tokens_details=None),
        "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None, "kv_transfer_params": None,
        "ec_transfer_params": None, "metrics": None,
    }


class Stream:
    """One request's response: an SSE stream or, for stream=false, collected text.

    `emit` is called by the engine driver for every token; it never awaits.
    """

    __slots__ = ("resp", "chat", "rid", "created", "model", "stream", "include_usage", "prompt_tokens",
                 "_prefix", "_mid", "_tail_fmt", "_rng_state", "tokens", "texts", "done", "broken",
                 "finish_reason", "on_broken", "_sent_role", "_last_t")

    def __init__(self, resp: Optional[web.StreamResponse], chat: bool, model: str, prompt_tokens: int, stream: bool,
                 include_usage: bool, seed: int, done):
        self.resp = resp
        self.chat = chat
        self.rid = new_id(chat)
        self.created = int(time.time())
        self.model = model
        self.stream = stream
        self.include_usage = include_usage
        self.prompt_tokens = prompt_tokens
        self.tokens = 0
        self.texts: list[str] = []
        self.done = done  # an asyncio.Future the handler awaits
        self.broken = False
        self.finish_reason: Optional[str] = None
        self.on_broken = None
        self._sent_role = False
        self._last_t: Optional[float] = None  # when this stream's previous token was delivered
        self._rng_state = (seed * 2654435761 + 12345) & 0xFFFFFFFF
        head = _dumps({"id": self.rid, "object": "chat.completion.chunk" if chat else "text_completion",
                       "created": self.created, "model": model})[:-1]
        if chat:
            self._prefix = ("data: " + head + ',"choices":[{"index":0,"delta":{"content":').encode()
            self._mid = b'},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
            self._tail_fmt = '}},"logprobs":null,"finish_reason":"{}","stop_reason":null,"token_ids":null}}]}}\n\n'
        else:
            self._prefix = ("data: " + head + ',"choices":[{"index":0,"text":').encode()
            self._mid = b',"logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,' \
                        b'"token_ids":null}]}\n\n'
            self._tail_fmt = (',"logprobs":null,"finish_reason":"{}","stop_reason":null,"prompt_token_ids":null,'
                              '"token_ids":null}}]}}\n\n')

    def _next_word(self) -> int:
        # a tiny LCG: reproducible per request, no per-token allocation
        self._rng_state = (self._rng_state * 1103515245 + 12345) & 0x7FFFFFFF
        return (self._rng_state >> 8) % len(TOKEN_TEXT)

    def _write(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            write_nowait(self.resp, data, self._failed)
        except (ConnectionError, RuntimeError, OSError) as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        if self.broken:
            return
        self.broken = True
        log.debug("stream %s closed by the client: %s", self.rid, exc)
        if self.on_broken is not None:
            self.on_broken()
        if not self.done.done():
            self.done.set_result(None)

    def role_event(self) -> bytes:
        return ("data: " + _dumps({
            "id": self.rid, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}],
            "prompt_token_ids": None, "prompt_text": None}) + "\n\n").encode()

    def usage_event(self) -> bytes:
        return ("data: " + _dumps({
            "id": self.rid, "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created, "model": self.model, "choices": [],
            "usage": usage(self.prompt_tokens, self.tokens), "system_fingerprint": SYSTEM_FINGERPRINT})
                + "\n\n").encode()

    def emit(self, finish_reason: Optional[str]) -> None:
        """One new token; `finish_reason` set on the request's last token."""
        i = self._next_word()
        self.tokens += 1
        if not self.stream:
            self.texts.append(TOKEN_TEXT[i])
            if finish_reason is not None:
                self.finish_reason = finish_reason
                if not self.done.done():
                    self.done.set_result(None)
            return
        if self.chat and not self._sent_role:
            self._sent_role = True
            self._write(self.role_event())
        if finish_reason is None:
            self._write(self._prefix + TOKEN_JSON[i] + self._mid)
            return
        self.finish_reason = finish_reason
        tail = self._tail_fmt.format(finish_reason)
        if not self.include_usage:  # vLLM stamps the fingerprint on the terminal chunk instead
            tail = tail[:-3] + ',"system_fingerprint":' + _dumps(SYSTEM_FINGERPRINT) + "}\n\n"
        last = self._prefix + TOKEN_JSON[i] + tail.encode()
        if self.include_usage:
            last += self.usage_event()
        self._write(last + DONE)
        if not self.done.done():
            self.done.set_result(None)

    def fail(self, message: str) -> None:
        """End the stream with an error event (the engine could not run the request)."""
        if self.stream and not self.broken:
            err = {"error": error_body(message, "InternalServerError", 500)["error"]}
            self._write(("data: " + _dumps(err) + "\n\n").encode() + DONE)
        self.finish_reason = "error"
        if not self.done.done():
            self.done.set_result(None)

    def body(self) -> dict:
        """The non-streaming response."""
        text = "".join(self.texts)
        make = chat_json if self.chat else completion_json
        return make(self.rid, self.created, self.model, text, self.finish_reason or "length", self.prompt_tokens,
                    self.tokens)


def write_nowait(resp: web.StreamResponse, data: bytes, on_error=None) -> None:
    """Write to an aiohttp stream without a task switch.

    StreamResponse.write puts the bytes on the transport at once and only waits when the client stops
    reading (the transport is paused). Driving its coroutine inline costs one call per event instead
    of a scheduled task; when it does wait, the rest of it runs from the future it waits on, the way
    a task would run it. Errors raised before it waits propagate to the caller; later ones go to
    `on_error`.
    """
    coro = resp.write(data)
    try:
        fut = coro.send(None)
    except StopIteration:
        return

    def resume(_f) -> None:
        try:
            nxt = coro.send(None)
        except StopIteration:
            return
        except BaseException as exc:  # noqa: BLE001 - reported to the stream, never lost
            if on_error is not None:
                on_error(exc)
            return
        nxt.add_done_callback(resume)

    fut.add_done_callback(resume)
