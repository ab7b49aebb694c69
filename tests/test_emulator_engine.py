"""The emulator's engine core: continuous batching, chunked prefill, KV blocks, preemption, prefix cache."""

import pytest

from core.hardware.catalog import get_gpu, load_model
from deploy.emulator.engine import BLOCK_SIZE, EngineConfig, EngineCore, Request
from deploy.emulator.perf_model import PerfModel
from deploy.emulator.sim import build_core, simulate_closed_loop

M8 = load_model("llama-3-8b")
H100 = get_gpu("h100-sxm")


def _core(blocks=1000, seqs=256, budget=8192, weights="fp16", kv="auto", caching=True):
    perf = PerfModel(M8, H100, weights, kv)
    return EngineCore(EngineConfig(num_gpu_blocks=blocks, max_num_seqs=seqs, max_num_batched_tokens=budget,
                                   enable_prefix_caching=caching), perf)


def _run(core, reqs, t=0.0, max_steps=100_000):
    for r in reqs:
        core.add_request(r)
    steps = []
    while core.has_work():
        step = core.schedule()
        assert step is not None, "engine stalled"
        core.mark_scheduled(step, t)
        t += step.timing.time_s
        core.complete(step, t)
        steps.append(step)
        assert len(steps) < max_steps
    return steps, t


def test_throughput_rises_with_concurrency_then_saturates():
    tps = {}
    for c in (1, 4, 16, 64, 256):
        core = build_core(M8, H100, "fp16")
        tps[c] = simulate_closed_loop(core, c, max(12, 2 * c), 256, 64).output_throughput
    assert tps[1] < tps[4] < tps[16] < tps[64] < tps[256]
    assert tps[4] / tps[1] > 3.5  # nearly free while memory-bound
    assert tps[256] / tps[64] < 2.5  # far from 4x: the batch has become expensive


def test_decode_batches_all_running_requests_in_one_step():
    core = _core()
    reqs = [Request(str(i), prompt_len=100, max_tokens=10, arrival_time=0.0) for i in range(8)]
    steps, _ = _run(core, reqs)
    assert steps[0].num_tokens == 800  # all eight prompts prefill together
    assert all(s.num_tokens == 8 for s in steps[1:])  # then one token for each, every step
    assert len(steps) == 10
    assert all(r.num_output == 10 and r.finish_reason == "length" for r in reqs)
    assert core.pool.num_free == core.pool.num_blocks


def test_long_prompt_is_chunked_by_the_token_budget_and_decodes_go_first():
    core = _core(budget=512)
    short = Request("a", prompt_len=10, max_tokens=50, arrival_time=0.0)
    core.add_request(short)
    s = core.schedule()
    core.mark_scheduled(s, 0.0)
    core.complete(s, s.timing.time_s)
    long = Request("b", prompt_len=1200, max_tokens=2, arrival_time=0.0)
    core.add_request(long)
    chunks = []
    while long.num_output == 0:
        s = core.schedule()
        core.complete(s, 0.0)
        assert s.items[0][0] is short  # the running decode is scheduled first
        chunks.append(dict((r.request_id, n) for r, n, _ in s.items)["b"])
    assert chunks == [511, 511, 178]
    assert long.first_token_time is not None


def test_preemption_when_the_kv_cache_is_small_and_everything_still_finishes():
    core = _core(blocks=60)  # 960 tokens of KV for 8 requests that each grow to 300
    reqs = [Request(str(i), prompt_len=100, max_tokens=200, arrival_time=0.0) for i in range(8)]
    _run(core, reqs)
    assert core.num_preemptions > 0
    assert all(r.num_output == 200 for r in reqs)
    assert any(r.num_preemptions for r in reqs)
    assert core.pool.num_free == 60


def test_max_num_seqs_caps_the_running_batch():
    core = _core(seqs=4)
    for i in range(10):
        core.add_request(Request(str(i), prompt_len=20, max_tokens=5, arrival_time=0.0))
    s = core.schedule()
    assert len(s.items) == 4 and core.num_waiting == 6


def test_fp8_kv_cache_holds_twice_the_sequences():
    # a card with little memory left for KV after the weights: how many 1,000-token requests run at once
    small = get_gpu("h100-sxm", {"memory_gb": 24})
    admitted, tput = {}, {}
    for kv in ("auto", "fp8"):
        blocks = build_core(M8, small, "bf16", kv).pool.num_blocks
        core = build_core(M8, small, "bf16", kv, max_num_batched_tokens=1_000_000, num_gpu_blocks=blocks)
        for i in range(400):
            core.add_request(Request(str(i), prompt_len=1000, max_tokens=8, arrival_time=0.0))
        core.schedule()
        admitted[kv] = core.num_running
        tput[kv] = simulate_closed_loop(build_core(M8, small, "bf16", kv), 96, 96, 1000, 200).output_throughput
    assert 1.9 < admitted["fp8"] / admitted["auto"] <= 2.05
    assert tput["fp8"] > 1.2 * tput["auto"]  # more sequences per step once KV is the limit


def test_prefix_cache_hits_for_shared_prefixes():
    core = _core()
    hashes = tuple(range(1, 9))  # 8 full blocks of a shared prefix
    first = Request("a", prompt_len=8 * BLOCK_SIZE + 5, max_tokens=2, arrival_time=0.0, block_hashes=hashes)
    _run(core, [first])
    assert core.prefix_hits_total == 0
    second = Request("b", prompt_len=8 * BLOCK_SIZE + 5, max_tokens=2, arrival_time=0.0, block_hashes=hashes)
    steps, _ = _run(core, [second])
    assert core.prefix_hits_total == 8 * BLOCK_SIZE
    assert steps[0].num_tokens == 5  # only the uncached tail is prefilled
    assert core.prefix_queries_total == 2 * (8 * BLOCK_SIZE + 5)
    # a full-prompt hit still computes the last token
    third = Request("c", prompt_len=8 * BLOCK_SIZE, max_tokens=1, arrival_time=0.0, block_hashes=hashes)
    steps, _ = _run(core, [third])
    assert steps[0].num_tokens == BLOCK_SIZE


def test_abort_frees_blocks():
    core = _core()
    r = Request("a", prompt_len=100, max_tokens=100, arrival_time=0.0)
    core.add_request(r)
    s = core.schedule()
    core.complete(s, 1.0)
    assert core.pool.num_free < core.pool.num_blocks
    core.abort(r)
    assert core.pool.num_free == core.pool.num_blocks and not core.has_work()
    assert r.finish_reason == "abort"


def test_request_longer_than_max_model_len_is_refused():
    core = _core()
    with pytest.raises(ValueError, match="max_model_len"):
        core.add_request(Request("a", prompt_len=8000, max_tokens=500, arrival_time=0.0))


def test_step_time_grows_with_batch_and_int4_is_faster_when_small():
    fp16 = PerfModel(M8, H100, "fp16")
    awq = PerfModel(M8, H100, "awq")
    t1 = fp16.step_of([(1, 512)])
    t64 = fp16.step_of([(1, 512)] * 64)
    assert t64.time_s > t1.time_s
    assert t64.read_bytes > t1.read_bytes and t64.flops == pytest.approx(64 * t1.flops, rel=0.01)
    assert awq.step_of([(1, 512)]).time_s < 0.75 * t1.time_s
    # prefill of 8192 tokens: compute-bound, INT4 no faster than fp16
    big = [(512, 0)] * 16
    assert awq.step_of(big).time_s >= 0.95 * fp16.step_of(big).time_s
