"""The emulator over HTTP: vLLM's endpoints, stream shapes, errors, startup log and /metrics."""

import json
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy import launcher


def _start(tmp_path, *extra, name="emu"):
    port = launcher.free_port()
    argv = [sys.executable, "-m", "deploy.emulator", "--port", str(port), "--served-model-name", "m", *extra]
    cmd = launcher.ServerCommand(name, argv, port=port, startup_timeout_s=30)
    return launcher.start(cmd, tmp_path / f"{name}-{port}.log")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One default emulator (fp16, H100) for the tests that need nothing special."""
    srv = _start(tmp_path_factory.mktemp("emu"), name="shared")
    try:
        yield srv
    finally:
        launcher.stop(srv)
        assert not srv.alive()


@pytest.fixture
def emulator(tmp_path):
    started = []

    def start(*extra, name="emu"):
        srv = _start(tmp_path, *extra, name=name)
        started.append(srv)
        return srv

    try:
        yield start
    finally:
        for srv in started:
            launcher.stop(srv)
            assert not srv.alive()


def _post(url, body, raw=False):
    data = body if raw else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


def _events(text):
    assert text.endswith("data: [DONE]\n\n")
    chunks = text.split("\n\n")
    assert chunks[-1] == ""
    out = []
    for c in chunks[:-2]:
        assert c.startswith("data: "), c
        out.append(json.loads(c[6:]))
    return out


def test_completions_stream_shapes_and_usage(shared):
    srv = shared
    status, headers, text = _post(srv.url + "/v1/completions", {
        "model": "m", "prompt": "one two three four", "max_tokens": 6, "stream": True, "ignore_eos": True,
        "stream_options": {"include_usage": True}})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    evs = _events(text)
    tokens, usage = evs[:-1], evs[-1]
    assert len(tokens) == 6
    for i, ev in enumerate(tokens):
        assert set(ev) == {"id", "object", "created", "model", "choices"}
        assert ev["object"] == "text_completion" and ev["model"] == "m" and ev["id"].startswith("cmpl-")
        (ch,) = ev["choices"]
        assert set(ch) == {"index", "text", "logprobs", "finish_reason", "stop_reason", "prompt_token_ids",
                           "token_ids"}
        assert isinstance(ch["text"], str) and ch["logprobs"] is None
        assert ch["finish_reason"] == ("length" if i == 5 else None)
    assert len({e["id"] for e in evs}) == 1
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 4, "total_tokens": 10, "completion_tokens": 6}
    assert usage["system_fingerprint"].startswith("vllm-0.24.0-")
    assert len(evs[0]["id"]) == len("cmpl-") + 16


def test_chat_stream_role_first_and_no_usage_unless_asked(shared):
    srv = shared
    status, _, text = _post(srv.url + "/v1/chat/completions", {
        "model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3, "stream": True})
    assert status == 200
    evs = _events(text)
    assert len(evs) == 4  # role, then three tokens
    assert evs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" and e["id"].startswith("chatcmpl-") for e in evs)
    assert [e["choices"][0]["finish_reason"] for e in evs] == [None, None, None, "length"]
    assert all(set(e["choices"][0]["delta"]) == {"content"} for e in evs[1:])
    # without a usage event, the fingerprint rides on the last token's event (as vLLM does)
    assert "system_fingerprint" in evs[-1] and all("system_fingerprint" not in e for e in evs[:-1])


def test_non_streaming_bodies_and_prompt_counting(shared):
    srv = shared
    status, _, text = _post(srv.url + "/v1/completions", {"prompt": [5, 6, 7, 8, 9], "max_tokens": 4})
    body = json.loads(text)
    assert status == 200 and body["object"] == "text_completion"
    assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 4
    assert body["choices"][0]["finish_reason"] == "length" and len(body["choices"][0]["text"].split()) == 4
    status, _, text = _post(srv.url + "/v1/chat/completions",
                            {"messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                             "max_tokens": 2})
    body = json.loads(text)
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["prompt_tokens"] == 1 + 2 * 4 + 2 + 1 + 4  # bos, role markers, words, header
    # default max_tokens for completions is 16, like vLLM's
    body = json.loads(_post(srv.url + "/v1/completions", {"prompt": "x"})[2])
    assert body["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize("body,fragment", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"max_tokens": 4}).encode(), "'prompt' is required"),
    (json.dumps({"prompt": "", "max_tokens": 4}).encode(), "cannot be empty"),
    (json.dumps({"prompt": "hi", "max_tokens": 0}).encode(), "'max_tokens' must be at least 1"),
    (json.dumps({"prompt": "hi", "max_tokens": "ten"}).encode(), "'max_tokens' must be an integer"),
    (json.dumps({"prompt": "hi", "max_tokens": 9000}).encode(), "maximum context length is 8192 tokens"),
    (json.dumps({"prompt": "hi", "stream_options": {"include_usage": True}}).encode(), "stream=True"),
    (json.dumps({"prompt": "hi", "min_tokens": 20, "max_tokens": 4}).encode(), "min_tokens"),
])
def test_bad_bodies_get_vllm_error_400(shared, body, fragment):
    srv = shared
    status, _, text = _post(srv.url + "/v1/completions", body, raw=True)
    err = json.loads(text)
    assert status == 400
    assert err["error"]["type"] == "BadRequestError" and err["error"]["code"] == 400
    assert err["object"] == "error" and err["code"] == 400
    assert fragment in err["error"]["message"]


def test_unknown_model_is_404_and_info_endpoints(emulator):
    srv = emulator("--weights", "awq")
    status, _, text = _post(srv.url + "/v1/completions", {"model": "other", "prompt": "hi"})
    assert status == 404 and json.loads(text)["error"]["type"] == "NotFoundError"
    assert _get(srv.url + "/health")[0] == 200
    v = json.loads(_get(srv.url + "/version")[1])
    assert v["version"] == "0.24.0" and v["emulator"] == "ridgeline-emulator"
    assert v["emulated"]["weights"] == "awq"
    models = json.loads(_get(srv.url + "/v1/models")[1])
    assert models["data"][0]["id"] == "m" and models["data"][0]["max_model_len"] == 8192
    log = srv.log_path.read_text()
    assert "Using MacheteLinearKernel for AutoAWQMarlinLinearMethod" in log
    assert "quantization=awq_marlin" in log and "kv_cache_dtype=auto" in log
    assert "GPU KV cache size: 529,168 tokens" in log
    assert "Model loading took 5.33" in log


METRIC_TYPES = {
    "vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge", "vllm:kv_cache_usage_perc": "gauge",
    "vllm:num_preemptions": "counter", "vllm:prompt_tokens": "counter", "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter", "vllm:prefix_cache_queries": "counter", "vllm:prefix_cache_hits": "counter",
    "vllm:estimated_flops_per_gpu": "counter", "vllm:estimated_read_bytes_per_gpu": "counter",
    "vllm:estimated_write_bytes_per_gpu": "counter",
    "vllm:time_to_first_token_seconds": "histogram", "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram", "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_prefill_time_seconds": "histogram", "vllm:request_decode_time_seconds": "histogram",
    "vllm:request_time_per_output_token_seconds": "histogram", "vllm:iteration_tokens_total": "histogram",
    "vllm:request_prompt_tokens": "histogram", "vllm:request_generation_tokens": "histogram",
    "vllm:cache_config_info": "gauge", "ridgeline_emulator:gpu_power_watts": "gauge",
    "vllm:num_requests_waiting_by_reason": "gauge", "vllm:prompt_tokens_by_source": "counter",
    "vllm:request_prefill_kv_computed_tokens": "histogram",
    "ridgeline_emulator:gpu_energy_joules": "counter",
}


def _metrics(srv):
    fams = {f.name: f for f in text_string_to_metric_families(_get(srv.url + "/metrics")[1])}
    values = {}
    for f in fams.values():
        for s in f.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return fams, values


def _value(values, name, **labels):
    return sum(v for (n, lab), v in values.items() if n == name and all(dict(lab).get(k) == x
                                                                         for k, x in labels.items()))


def test_metrics_families_types_and_counters_move(emulator):
    srv = emulator("--kv-cache-dtype", "fp8")
    fams, before = _metrics(srv)
    for name, typ in METRIC_TYPES.items():
        assert name in fams, name
        assert fams[name].type == typ, (name, fams[name].type)
    run = fams["vllm:num_requests_running"].samples[0].labels
    assert run == {"model_name": "m", "engine": "0"}
    info = fams["vllm:cache_config_info"].samples[0].labels
    assert info["cache_dtype"] == "fp8" and info["block_size"] == "16" and int(info["num_gpu_blocks"]) > 50000
    assert [s.labels["le"] for s in fams["vllm:time_to_first_token_seconds"].samples[:3]] == ["0.001", "0.005", "0.01"]
    for _ in range(3):
        _post(srv.url + "/v1/completions", {"prompt": "a b c d e f g h", "max_tokens": 5, "stream": True})
    _, after = _metrics(srv)
    assert _value(after, "vllm:generation_tokens_total") - _value(before, "vllm:generation_tokens_total") == 15
    assert _value(after, "vllm:prompt_tokens_total") - _value(before, "vllm:prompt_tokens_total") == 24
    assert _value(after, "vllm:request_success_total", finished_reason="length") == 3
    assert _value(after, "vllm:time_to_first_token_seconds_count") == 3
    assert _value(after, "vllm:inter_token_latency_seconds_count") == 12
    assert _value(after, "vllm:e2e_request_latency_seconds_count") == 3
    # 3 x (8 prompt + 4 decode) tokens computed, 2 FLOPs per linear weight each
    assert _value(after, "vllm:estimated_flops_per_gpu_total") > 36 * 2 * 6.9e9
    assert _value(after, "vllm:estimated_read_bytes_per_gpu_total") > 3 * 5 * 15e9  # weights read every step
    assert _value(after, "ridgeline_emulator:gpu_energy_joules_total") > 0
    assert 70 <= _value(after, "ridgeline_emulator:gpu_power_watts") <= 700
    assert _value(after, "vllm:prefix_cache_queries_total") == 24


def test_streaming_timing_follows_the_model(shared):
    import time
    srv = shared
    t0 = time.perf_counter()
    status, _, text = _post(srv.url + "/v1/completions", {"prompt": "x " * 500, "max_tokens": 100, "stream": True})
    elapsed = time.perf_counter() - t0
    assert status == 200 and len(_events(text)) == 100
    # about 100 decode steps of the modelled H100 fp16 (~6.3 ms each) plus a prefill: 0.6-0.9 s
    assert 0.55 < elapsed < 1.5


def test_startup_failures_are_reported(tmp_path):
    port = launcher.free_port()
    cmd = launcher.ServerCommand("bad", [sys.executable, "-m", "deploy.emulator", "--port", str(port),
                                         "--kv-cache-dtype", "fp8", "--dtype", "float16"], port=port,
                                 startup_timeout_s=20)
    with pytest.raises(launcher.LaunchError, match="output must have dtype BF16"):
        launcher.start(cmd, tmp_path / "bad.log")
    cmd = launcher.ServerCommand("big", [sys.executable, "-m", "deploy.emulator", "--port", str(port),
                                         "--model", "llama-3-70b"], port=port, startup_timeout_s=20)
    with pytest.raises(launcher.LaunchError, match="out of memory"):
        launcher.start(cmd, tmp_path / "big.log")


def test_every_stream_gets_all_its_tokens_when_the_api_server_lags(shared):
    # 64 short requests at once: the modelled API server falls behind the engine, which finishes
    # requests before their earlier tokens are delivered; each stream must still carry all 16
    import concurrent.futures

    body = {"model": "m", "prompt": "alpha beta gamma delta " * 8, "max_tokens": 16, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}

    def one(i):
        _, _, text = _post(shared.url + "/v1/completions", dict(body, prompt=f"{i} " + body["prompt"]))
        evs = _events(text)
        tokens = [e for e in evs if isinstance(e, dict) and e.get("choices")]
        usage = [e["usage"] for e in evs if isinstance(e, dict) and e.get("usage")]
        return len(tokens), usage[0]["completion_tokens"], tokens[-1]["choices"][0]["finish_reason"]

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    assert all(r == (16, 16, "length") for r in results), [r for r in results if r != (16, 16, "length")]
