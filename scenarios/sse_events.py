"""What one server-sent event of an OpenAI-compatible stream says, decoded by a compiled JSON parser.

msgspec decodes the event straight into the few fields the client reads (the first choice's text or
delta, usage, error) and skips the rest in C, which is several times cheaper than building the
whole object with `json.loads`. Anything it will not take as those types (a choice that is not an
object, text that is not a string, a usage that is not an object, bad UTF-8, not JSON at all) goes
to `json.loads` and the same rules applied to plain dicts, so both give the same answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Union

import msgspec
from msgspec import UNSET, UnsetType


class _Delta(msgspec.Struct):
    content: Union[str, None, UnsetType] = UNSET
    role: Any = UNSET
    reasoning_content: Any = UNSET
    tool_calls: Any = UNSET


class _Choice(msgspec.Struct):
    text: Union[str, None, UnsetType] = UNSET
    delta: Union[_Delta, None, UnsetType] = UNSET


class _Usage(msgspec.Struct):
    prompt_tokens: Any = UNSET
    completion_tokens: Any = UNSET


class _Event(msgspec.Struct):
    choices: Union[list[_Choice], None, UnsetType] = UNSET
    usage: Union[_Usage, None, UnsetType] = UNSET
    error: Any = UNSET


_DECODER = msgspec.json.Decoder(_Event)


@dataclass
class Event:
    """The parts of one event the stream client acts on."""

    token: bool = False  # the first choice carries generated output (a token event, even with "" text)
    text: str = ""  # that output's text ("" when none)
    error: Optional[Any] = None  # an error object or message, when the event is an error
    usage: Optional[dict[str, Any]] = None  # prompt_tokens / completion_tokens, when it has a usage object


class BadEvent(ValueError):
    """The event is not a JSON object (the message says what it was)."""


def decode(data: bytes) -> Event:
    """Decode the JSON of one `data:` line (without the prefix); raises BadEvent for non-objects."""
    try:
        ev = _DECODER.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _from_dict(data)
    out = Event()
    if ev.error is not UNSET and not ev.choices:
        out.error = ev.error
        return out
    if ev.choices:
        c0 = ev.choices[0]
        out.token = _struct_is_token(c0)
        if out.token:
            txt = c0.text
            if txt is None or txt is UNSET:
                d = c0.delta
                txt = (d.content if d else None) or ""  # None / UNSET / "" content: no text
            out.text = txt
    u = ev.usage
    if isinstance(u, _Usage):
        out.usage = {k: v for k, v in (("prompt_tokens", u.prompt_tokens), ("completion_tokens", u.completion_tokens))
                     if v is not UNSET}
    return out


def _struct_is_token(c: _Choice) -> bool:
    if c.text is not UNSET:
        return True
    d = c.delta
    if not isinstance(d, _Delta):
        return False
    if d.role is not UNSET and not d.content:
        return False  # the role-only opening event of a chat stream carries no token
    return d.content is not UNSET or d.reasoning_content is not UNSET or d.tool_calls is not UNSET


def _from_dict(data: bytes) -> Event:
    """The general path: any JSON, through json.loads (bad UTF-8 is replaced, not fatal)."""
    try:
        ev = json.loads(data)
    except UnicodeDecodeError:
        try:
            ev = json.loads(data.decode("utf-8", "replace"))
        except ValueError:
            raise BadEvent(f"event is not JSON: {data[:200]!r}") from None
    except ValueError:
        raise BadEvent(f"event is not JSON: {data[:200]!r}") from None
    if not isinstance(ev, dict):
        raise BadEvent(f"event is not an object: {data[:200]!r}")
    out = Event()
    if "error" in ev and not ev.get("choices"):
        out.error = ev["error"]
        return out
    choices = ev.get("choices")
    if choices and isinstance(choices, list) and isinstance(choices[0], dict) and is_token_choice(choices[0]):
        out.token = True
        c0 = choices[0]
        txt = c0.get("text")
        if txt is None:
            txt = (c0.get("delta") or {}).get("content") or ""
        out.text = txt
    usage = ev.get("usage")
    if isinstance(usage, dict):
        out.usage = usage
    return out


def is_token_choice(choice: dict[str, Any]) -> bool:
    """A choice that carries generated output: completions `text`, or a chat delta with content."""
    if "text" in choice:
        return True
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    if "role" in delta and not delta.get("content"):
        return False  # the role-only opening event of a chat stream carries no token
    return "content" in delta or "reasoning_content" in delta or "tool_calls" in delta
