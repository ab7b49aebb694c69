"""One SSE event decoded (scenarios.sse_events), and a whole body fed in pieces (StreamParser).

The compiled decoder reads only the fields the client acts on; whatever it will not take goes to
json.loads. Both must give the answers written out here, and the body parser must give the same
record however the bytes are cut into reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenarios import sse_events
from scenarios.openai_stream import E_DISCONNECT, E_PROTOCOL, E_SERVER, StreamParser, StreamResult

DATA = Path(__file__).parent / "data" / "vllm_sse"


@pytest.mark.parametrize("event, token, text", [
    ({"choices": [{"index": 0, "text": " tok", "logprobs": None}]}, True, " tok"),
    ({"choices": [{"index": 0, "text": ""}]}, True, ""),  # partial UTF-8: a token with no text yet
    ({"choices": [{"index": 0, "text": None, "delta": {"content": "x"}}]}, True, "x"),
    ({"choices": [{"delta": {"content": " tok"}}]}, True, " tok"),
    ({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, False, ""),  # chat's opening event
    ({"choices": [{"delta": {"role": "assistant"}}]}, False, ""),
    ({"choices": [{"delta": {"role": "assistant", "content": "Hi"}}]}, True, "Hi"),
    ({"choices": [{"delta": {"reasoning_content": "hmm"}}]}, True, ""),
    ({"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]}, True, ""),
    ({"choices": [{"delta": {"content": None}}]}, True, ""),
    ({"choices": [{"delta": {}}]}, False, ""),
    ({"choices": [{"index": 0, "finish_reason": "length"}]}, False, ""),
    ({"choices": []}, False, ""),
    ({"choices": [{"text": "caf\u00e9 \"quoted\"\n\\"}]}, True, "caf\u00e9 \"quoted\"\n\\"),  # escapes
    ({"choices": [{"text": "\ufffd fox"}]}, True, "\ufffd fox"),
])
def test_token_events_and_their_text(event, token, text):
    for data in (json.dumps(event).encode(), json.dumps(event, ensure_ascii=False).encode()):
        ev = sse_events.decode(data)
        assert (ev.token, ev.text, ev.error, ev.usage) == (token, text, None, None)


def test_usage_with_and_without_a_token():
    ev = sse_events.decode(b'{"choices":[],"usage":{"prompt_tokens":4,"total_tokens":12,"completion_tokens":8}}')
    assert not ev.token and ev.usage["prompt_tokens"] == 4 and ev.usage["completion_tokens"] == 8
    ev = sse_events.decode(b'{"choices":[{"text":"a"}],"usage":{"prompt_tokens":4,"completion_tokens":1}}')
    assert ev.token and ev.text == "a" and ev.usage["completion_tokens"] == 1  # continuous usage stats
    ev = sse_events.decode(b'{"choices":[],"usage":null}')
    assert ev.usage is None


def test_error_events():
    assert sse_events.decode(b'{"error":{"message":"boom","code":500}}').error == {"message": "boom", "code": 500}
    assert sse_events.decode(b'{"error":"plain words","choices":[]}').error == "plain words"
    ev = sse_events.decode(b'{"error":"x","choices":[{"text":"a"}]}')  # with a choice it is no error event
    assert ev.error is None and ev.token


@pytest.mark.parametrize("data, says", [
    (b"5", "not an object"), (b"[1,2]", "not an object"), (b"not json", "not JSON"), (b"", "not JSON"),
    (b'{"choices":[{"text":"a"}]', "not JSON"),
])
def test_what_is_not_an_event_is_named(data, says):
    with pytest.raises(sse_events.BadEvent, match=says):
        sse_events.decode(data)


def test_shapes_the_compiled_decoder_refuses_get_the_general_rules():
    assert sse_events.decode(b'{"choices":["text"]}').token is False  # a choice that is not an object
    ev = sse_events.decode(b'{"choices":[{"text":["a","b"]}]}')
    assert ev.token and ev.text == ["a", "b"]  # what json.loads gives: the client counts len() of it
    ev = sse_events.decode(b'{"choices":[{"text":"caf\xe9"}]}')  # bad UTF-8: replaced, still a token
    assert ev.token and ev.text == "caf\ufffd"
    assert sse_events.decode(b'{"choices":[{"text":"a"}],"usage":{"completion_tokens":NaN}}').token


_text = st.one_of(st.none(), st.text(max_size=8), st.integers(-2, 2))
_delta = st.fixed_dictionaries({}, optional={"content": _text, "role": st.sampled_from(["assistant", None]),
                                             "reasoning_content": _text, "tool_calls": st.just([])})
_choice = st.one_of(st.fixed_dictionaries({}, optional={"text": _text, "index": st.just(0),
                                                        "delta": st.one_of(st.none(), _delta, st.just("x"))}),
                    st.just("not a dict"))
_usage = st.one_of(st.none(), st.integers(), st.fixed_dictionaries(
    {}, optional={"prompt_tokens": st.one_of(st.integers(-1, 2**33), st.booleans(), st.floats(0, 9)),
                  "completion_tokens": st.integers(0, 9)}))
_event = st.fixed_dictionaries({}, optional={"choices": st.one_of(st.none(), st.lists(_choice, max_size=2)),
                                             "usage": _usage, "error": st.one_of(st.text(max_size=4), st.none()),
                                             "id": st.text(max_size=4)})


@settings(max_examples=400, deadline=None)
@given(_event)
def test_compiled_path_agrees_with_the_general_path(event):
    data = json.dumps(event).encode()

    def seen(decode):  # noqa: ANN001, ANN202 - what the client would see: the fields, or the exception
        try:
            ev = decode(data)
        except Exception as exc:  # noqa: BLE001 - a malformed choice fails the request as unreadable
            return type(exc)
        return ev.token, ev.text, ev.error, *((ev.usage or {}).get(k) for k in ("prompt_tokens", "completion_tokens"))

    assert seen(sse_events.decode) == seen(sse_events._from_dict)  # noqa: SLF001


# ---------------------------------------------------------------------- a body in pieces

def _capture(name: str) -> tuple[bytes, list[int]]:
    """A captured body, and the offset just past the newline that completes each token event."""
    body = (DATA / name).read_bytes()
    ends, pos = [], 0
    for line in body.split(b"\n"):
        pos += len(line) + 1
        data = line.removeprefix(b"data: ").strip()
        if data and data != b"[DONE]":
            ev = json.loads(data)
            c = (ev.get("choices") or [{}])[0]
            d = c.get("delta") or {}
            if "text" in c or ("content" in d and not ("role" in d and not d["content"])):  # not chat's opening
                ends.append(pos - 1)  # the newline's own offset
    return body, ends


def _parse(pieces: list[bytes], collect: bool = False) -> StreamResult:
    res = StreamResult(text=[] if collect else None)
    p = StreamParser(res, 0.0, 100.0, collect)
    for i, piece in enumerate(pieces):
        p.feed(piece, float(i + 1))  # piece i came off the socket at time i + 1
        if p.stop:
            break
    else:
        p.end(float(len(pieces) + 1))
    return res


@pytest.mark.parametrize("name, events, prompt_tokens", [("completions_stream.txt", 8, 4), ("chat_stream.txt", 8, 23)])
def test_a_body_cut_at_every_byte_gives_the_same_record(name, events, prompt_tokens):
    body, ends = _capture(name)
    whole = _parse([body])
    assert whole.done and whole.error_kind is None and whole.token_events == len(ends)
    assert whole.token_events == whole.completion_tokens == events and whole.prompt_tokens == prompt_tokens
    for cut in range(1, len(body)):
        r = _parse([body[:cut], body[cut:]])
        assert (r.token_events, r.text_chars, r.prompt_tokens, r.completion_tokens, r.done, r.error_kind) == \
               (whole.token_events, whole.text_chars, whole.prompt_tokens, whole.completion_tokens, True, None), cut
        # each event is stamped with the time of the read that completed its line
        stamps = [1.0 if e < cut else 2.0 for e in ends]
        assert r.ttft_s == stamps[0]
        assert r.itl_s == [b - a for a, b in zip(stamps, stamps[1:])]


def test_a_body_one_byte_a_read_stamps_each_event_with_its_last_byte():
    body, ends = _capture("completions_stream.txt")
    r = _parse([body[i:i + 1] for i in range(len(body))])
    assert r.done and r.ttft_s == ends[0] + 1
    assert r.itl_s == [float(b - a) for a, b in zip(ends, ends[1:])]


def test_many_events_in_one_read_share_its_time():
    ev = b'data: {"choices":[{"text":"ab"}]}\n\n'
    r = _parse([ev * 3, ev + b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":4}}\n\ndata: [DONE]\n\n'])
    assert r.token_events == 4 and r.ttft_s == 1.0 and r.itl_s == [0.0, 0.0, 1.0]
    assert r.text_chars == 8 and r.completion_tokens == 4 and r.done


def test_text_is_counted_in_characters():
    r = _parse(['data: {"choices":[{"text":"\u00e9t\u00e9 \u2603"}]}\n\ndata: [DONE]\n\n'.encode()])
    assert r.text_chars == 5


def test_an_error_mid_stream_stops_it_with_what_came_before():
    r = _parse([b'data: {"choices":[{"text":"a"}]}\n\ndata: {"choices":[{"text":"b"}]}\n\n',
                b'data: {"error":{"message":"engine died"}}\n\ndata: {"choices":[{"text":"c"}]}\n\n'])
    assert r.error_kind == E_SERVER and r.error == "engine died" and r.token_events == 2 and not r.done


def test_a_body_without_done_is_a_disconnect_and_a_bad_line_a_protocol_error():
    r = _parse([b'data: {"choices":[{"text":"a"}]}\n\ndata: {"choices":[{"text":"b"}]}'])  # last line unfinished
    assert r.error_kind == E_DISCONNECT and r.token_events == 2
    r = _parse([b'data: {"choices":[{"text":"a"}]}\n\n: comment\n\nhello\n'])
    assert r.error_kind == E_PROTOCOL and "unexpected SSE line" in r.error and r.token_events == 1
    r = _parse([b"data: {nope\n\n"])
    assert r.error_kind == E_PROTOCOL and "not JSON" in r.error


def test_done_ends_the_stream_and_what_follows_is_not_read():
    r = _parse([b'data: {"choices":[{"text":"a"}]}\n\ndata: [DONE]\n\ndata: {"choices":[{"text":"b"}]}\n\n'])
    assert r.done and r.token_events == 1 and r.error_kind is None
