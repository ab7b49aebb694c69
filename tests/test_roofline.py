"""The roofline: bytes and FLOPs per step, the bound, the ridge and KV capacity against vLLM's numbers."""

import math

import pytest

from core.hardware.catalog import get_gpu, load_model
from core.hardware.roofline import (
    Bound,
    StepCost,
    bound,
    compute_dtype,
    decode_step_cost,
    kv_capacity_tokens,
    prefill_cost,
    ridge_batch,
)

M8 = load_model("llama-3-8b")
H100 = get_gpu("h100-sxm")


def test_fp16_weights_at_measured_bandwidth():
    # the whole 16.06 GB of fp16 weights need 5.3 ms at the H100's measured 3.02 TB/s
    assert M8.weight_bytes("fp16") / H100.bandwidth() == pytest.approx(5.3e-3, rel=0.01)


def test_decode_at_batch_one_is_memory_bound_and_int4_reads_less():
    fp16 = decode_step_cost(M8, "fp16", "auto", 1, 512)
    awq = decode_step_cost(M8, "awq", "auto", 1, 512)
    b16, b4 = bound(fp16, H100, "fp16"), bound(awq, H100, "awq")
    assert b16.regime == b4.regime == "memory"
    # one step streams the projections and the lm_head but not the whole embedding table
    assert 14.9e9 < fp16.weight_bytes < 15.1e9
    assert 4.6e9 < awq.weight_bytes < 4.8e9  # "about 4.7 GB read per step"
    assert b4.time_s == pytest.approx(1.55e-3, rel=0.03)
    assert b16.time_s / b4.time_s > 3


def test_kv_bytes_scale_with_batch_context_and_dtype():
    a = decode_step_cost(M8, "fp16", "auto", 8, 1000)
    b = decode_step_cost(M8, "fp16", "fp8", 8, 1000)
    c = decode_step_cost(M8, "fp16", "auto", 16, 1000)
    assert a.kv_bytes == pytest.approx(8 * 1001 * 131072)
    assert b.kv_bytes == pytest.approx(a.kv_bytes / 2)
    assert c.kv_bytes == pytest.approx(2 * a.kv_bytes)
    assert a.weight_bytes == pytest.approx(c.weight_bytes, rel=1e-4)
    assert c.flops == pytest.approx(2 * a.flops)


def test_large_batch_turns_compute_bound_and_ridge_is_consistent():
    for w, kv in [("fp16", "fp8"), ("awq", "fp8"), ("fp16", "auto")]:
        r = ridge_batch(M8, H100, w, kv, 128)
        assert math.isfinite(r)
        below = bound(decode_step_cost(M8, w, kv, max(1, int(r * 0.9)), 128), H100, w)
        above = bound(decode_step_cost(M8, w, kv, int(r * 1.1) + 1, 128), H100, w)
        assert below.regime == "memory" and above.regime == "compute"
    # INT4 turns compute-bound far sooner than fp16: its bytes are 3x fewer, its FLOPs the same
    assert ridge_batch(M8, H100, "awq", "auto", 0) < ridge_batch(M8, H100, "fp16", "auto", 0) / 2.5
    # with long contexts and a 16-bit cache, attention bytes outgrow the FLOPs: never compute-bound
    assert ridge_batch(M8, H100, "fp16", "auto", 2048) == math.inf


def test_compute_dtype_per_format():
    assert compute_dtype("awq", H100) == "fp16"
    assert compute_dtype("fp8", H100) == "fp8"
    assert compute_dtype("fp8", get_gpu("a100-80gb")) == "fp16"  # no fp8 tensor cores: W8A16
    assert compute_dtype("bf16") == "bf16"


def test_prefill_is_compute_bound():
    p = prefill_cost(M8, "fp16", "auto", 512, 0)
    b = bound(p, H100, "fp16")
    assert b.regime == "compute"
    assert b.compute_s == pytest.approx(2 * M8.linear_params * 512 / 680e12, rel=0.05)
    chunk2 = prefill_cost(M8, "fp16", "auto", 512, 512)
    assert chunk2.flops > p.flops and chunk2.kv_bytes > p.kv_bytes


def test_bound_types():
    b = bound(StepCost(1e9, 0, 0, 1e9), H100, "fp16", measured_ceilings=False)
    assert isinstance(b, Bound)
    assert b.memory_s == pytest.approx(1e9 / 3.35e12)
    assert b.time_s == max(b.memory_s, b.compute_s)


@pytest.mark.parametrize("weights,kv,vllm_tokens", [("fp16", "auto", 450_336), ("awq", "auto", 528_288),
                                                    ("bf16", "fp8", 900_160)])
def test_kv_capacity_matches_vllm_on_h100(weights, kv, vllm_tokens):
    got = kv_capacity_tokens(M8, H100, weights, kv, gpu_memory_utilization=0.9)
    assert got == pytest.approx(vllm_tokens, rel=0.005)
    assert got % 16 == 0


def test_kv_capacity_edges():
    assert kv_capacity_tokens(load_model("llama-3-70b"), H100, "fp16", "auto") == 0  # 141 GB do not fit in 80
    assert kv_capacity_tokens(M8, get_gpu("h200"), "fp16", "auto") > 1.9 * kv_capacity_tokens(M8, H100, "fp16", "auto")
    low = kv_capacity_tokens(M8, H100, "fp16", "auto", gpu_memory_utilization=0.5)
    assert 0 < low < 450_336
    explicit = kv_capacity_tokens(M8, H100, "fp16", "auto", activation_reserve_gb=10)
    assert explicit < 450_336
    with pytest.raises(ValueError):
        kv_capacity_tokens(M8, H100, "fp16", "auto", gpu_memory_utilization=1.5)
