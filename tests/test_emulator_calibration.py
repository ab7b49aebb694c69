"""The perf model against ridgeline's own H100 and H200 sweeps, in simulated time: the story the emulator must tell."""

import pytest

from deploy.emulator.calibration import H100_MEASURED, check, speedups
from deploy.emulator.sim import run_point


@pytest.fixture(scope="module")
def rows():
    return check(variants=("fp16", "awq", "gptq", "fp8kv"), concurrencies=(1, 4, 16, 64, 128, 256))


def test_int4_gain_at_low_concurrency_fades_by_128(rows):
    sp = speedups(rows)
    for v in ("awq", "gptq"):
        assert 1.4 <= sp[(v, 1)] <= 2.5, (v, sp[(v, 1)])
        assert min(sp[(v, c)] for c in (4, 16, 64, 128)) < 1.2, [sp[(v, c)] for c in (4, 16, 64, 128)]
        assert sp[(v, 1)] > sp[(v, 16)] > sp[(v, 64)]


def test_gptq_behaves_like_awq(rows):
    sp = speedups(rows)
    for c in (1, 4, 16, 64, 128, 256):
        assert sp[("gptq", c)] == pytest.approx(sp[("awq", c)], rel=0.05)


def test_fp8_kv_costs_a_little_alone_and_pays_at_high_concurrency(rows):
    sp = speedups(rows)
    assert abs(sp[("fp8kv", 1)] - 1.0) <= 0.05
    assert sp[("fp8kv", 1)] < 1.0  # the conversion is not free
    assert sp[("fp8kv", 256)] > 1.05


def test_measured_throughput_and_itl_within_15_percent(rows):
    checked = 0
    for r in rows:
        if r.anchor is None:
            continue
        # GPTQ is modelled as AWQ's INT4 kernel; on the H100 GPTQ decoded 2-3% faster than AWQ up to 16
        bound = 0.20 if r.variant == "gptq" else 0.15
        for key in ("tok_s", "itl_ms"):
            err = r.error(key)
            if err is not None:
                checked += 1
                assert abs(err) <= bound, (r.variant, r.concurrency, key, err)
    assert checked == 40
    # and time to first token on an idle server (ridgeline's client read 18.9-20.0 ms there)
    for r in rows:
        if r.concurrency == 1 and r.anchor:
            assert abs(r.error("ttft_ms")) <= 0.15, (r.variant, r.error("ttft_ms"))
            assert 18 <= r.predicted.median_ttft_ms <= 24


def test_the_emulated_h100_tells_the_measured_int4_story(rows):
    # AWQ over fp16 on the real H100 (ridgeline's sweep, no prefix-cache hits): 1.57x at 1, 1.16x at
    # 64 (the same server's vllm bench serve: 1.16x), 1.06x at 256
    sp = speedups(rows)
    assert sp[("awq", 1)] == pytest.approx(1.57, abs=0.03)
    assert sp[("awq", 64)] == pytest.approx(1.16, abs=0.03)
    assert sp[("awq", 256)] == pytest.approx(1.06, abs=0.03)


def test_h100_table_is_the_measured_one():
    # docs/results/h100-llama3-8b: awq 238 against fp16 152 tok/s at 1; fp8kv 10,192 against 9,269 at 256
    assert H100_MEASURED[("awq", 1)]["tok_s"] / H100_MEASURED[("fp16", 1)]["tok_s"] == pytest.approx(1.57, abs=0.01)
    assert H100_MEASURED[("fp8kv", 256)]["tok_s"] / H100_MEASURED[("fp16", 256)]["tok_s"] == pytest.approx(1.10, abs=0.01)


def test_other_gpus_and_models_are_physically_consistent():
    def tps(gpu, model="llama-3-8b", w="fp16", c=1):
        return run_point(w, "auto", c, gpu=gpu, model=model, num_prompts=max(12, c), max_model_len=4096,
                         output_len=64).output_throughput

    h100, a100, h200, l4 = tps("h100-sxm"), tps("a100-80gb"), tps("h200"), tps("l4", w="awq")
    assert a100 < h100 < h200
    assert l4 < a100
    assert tps("h200", "llama-3-70b", "awq") < tps("h200", "llama-3-8b", "awq") / 4
    assert tps("a100-80gb", c=64) < tps("h100-sxm", c=64)
    # on a GPU with far less bandwidth per FLOP the INT4 gain at C=1 is at least as large
    assert tps("a100-80gb", w="awq") / a100 > 1.4


@pytest.fixture(scope="module")
def h200_rows():
    return check(gpu="h200", concurrencies=(1, 2, 4, 8, 16, 32, 64, 128, 256))


def test_h200_throughput_within_15_percent_of_the_measured_sweep(h200_rows):
    from deploy.emulator.calibration import H200_BENCH

    checked = 0
    for r in h200_rows:
        assert r.anchor is not None, (r.variant, r.concurrency)
        if r.concurrency == 256 and r.variant in ("fp16", "fp8kv"):
            # where the sweep and vllm bench serve on the same server disagree, the reference client's
            ref = H200_BENCH[("fp16", 256)]["tok_s"]
            assert abs(r.predicted.output_throughput / ref - 1) <= 0.15, (r.variant, r.predicted.output_throughput, ref)
            continue
        assert abs(r.error("tok_s")) <= 0.15, (r.variant, r.concurrency, r.error("tok_s"))
        if r.concurrency <= 64:
            assert abs(r.error("itl_ms")) <= 0.15, (r.variant, r.concurrency, r.error("itl_ms"))
        checked += 1
    assert checked == 34


def test_h200_int4_gain_is_smaller_than_the_h100s_and_gone_by_128(rows, h200_rows):
    h100, h200 = speedups(rows), speedups(h200_rows)
    for v in ("awq", "gptq"):
        assert h200[(v, 1)] < h100[(v, 1)]  # more bandwidth shortens fp16's step, not the INT4 kernel's
        assert h200[(v, 128)] < 1.1


def test_gpu_refits_touch_only_their_gpu_and_yield_to_overrides():
    from deploy.emulator.perf_model import DEFAULT_CALIBRATION, GPU_CALIBRATION, calibration_for

    assert calibration_for("h100-sxm") == DEFAULT_CALIBRATION
    assert calibration_for("h200").int4_dq0_s == GPU_CALIBRATION["h200"]["int4_dq0_s"] != DEFAULT_CALIBRATION.int4_dq0_s
    assert calibration_for("h200", {"int4_hide_exp": 2.0}).int4_hide_exp == 2.0
