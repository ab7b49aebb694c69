"""The roofline in the analysis: achieved TFLOP/s and TB/s next to the bound, and the verdict's roofline sentence."""

import math
import re

import numpy as np
import pytest

from analysis import analyze, render_reports
from core.hardware.catalog import get_gpu
from tests.support.synthetic import RunModel, StepModel, build_run, plan_dict

LEVELS = (1, 2, 4, 8, 16, 32, 64)
FLOPS_PER_TOKEN = 1.6e10  # about 2 x 8e9 parameters
BYTES_PER_TOKEN = 2.0e9


def speed(c: int) -> float:
    """awq's speedup over fp16 at concurrency c: 1.55x at 1, falling through 1.2x between 16 and 32."""
    return 1 + 0.6 / (1 + c / 10)


def _steps(variant: str) -> list[StepModel]:
    out = []
    for c in LEVELS:
        gap = 0.005 * (1 + c / 32) / (speed(c) if variant == "awq" else 1.0)
        out.append(StepModel(c, gap, gap, output_tokens=(32, 64), warmup_s=0.5, duration_s=4.0))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("roofline")
    plan = plan_dict(["fp16", "awq"], baseline="fp16")
    servers = {v: {"variant": {"weights": v, "kv_cache_dtype": "auto"}} for v in ("fp16", "awq")}
    r = build_run(root / "run", RunModel(steps={v: _steps(v) for v in ("fp16", "awq")}, plan=plan, servers=servers,
                                         flops_per_token=FLOPS_PER_TOKEN, read_bytes_per_token=BYTES_PER_TOKEN))
    s = analyze(r.path)
    render_reports(r.path)
    return r.path, s


def test_achieved_rates_are_the_counters_increase_over_the_window(run):
    _, s = run
    h100 = get_gpu("h100-sxm")
    roof = s.analysis.roofline.steps.set_index(["variant", "level"])
    for v in ("fp16", "awq"):
        for e in s.data["variants"][v]["steps"]:
            gen = e["server_generation_tokens_per_s"]
            assert gen > 0
            assert e["achieved_flops_per_s"] == pytest.approx(FLOPS_PER_TOKEN * gen)
            assert e["achieved_read_bytes_per_s"] == pytest.approx(BYTES_PER_TOKEN * gen)
            r = roof.loc[(v, e["level"])]
            # both run their matmuls in fp16 (INT4 weights are dequantized): shares of the datasheet peaks
            assert r.achieved_flops_share == pytest.approx(e["achieved_flops_per_s"] / h100.flops("fp16", False))
            assert r.achieved_bandwidth_share == pytest.approx(e["achieved_read_bytes_per_s"] / h100.bandwidth(False))


def test_report_shows_absolute_tflops_and_tbs_beside_the_bound(run):
    path, s = run
    html = (path / "report.html").read_text()
    assert "<th>achieved TFLOP/s (of peak)</th><th>achieved TB/s (of peak)</th>" in html
    e = next(x for x in s.data["variants"]["awq"]["steps"] if x["concurrency"] == 64)
    peak = get_gpu("h100-sxm").flops("fp16", False)
    tflops = e["achieved_flops_per_s"] / 1e12
    cell = f"<td>{tflops:.3g} ({e['achieved_flops_per_s'] / peak * 100:.1f}%)</td>"
    assert cell in html
    tbs = e["achieved_read_bytes_per_s"] / 1e12
    assert f"<td>{tbs:.3g} ({e['achieved_read_bytes_per_s'] / get_gpu('h100-sxm').bandwidth(False) * 100:.0f}%)</td>" \
        in html
    assert f"{peak / 1e12:.3g} TFLOP/s (fp16: fp16, awq)" in html


def _interp_log2(levels, values, at):
    return float(np.interp(math.log2(at), np.log2(levels), values))


def test_the_verdicts_roofline_sentence_explains_the_crossover(run):
    _, s = run
    c = s.analysis.crossings["awq"][1.2]
    assert 16 < c.level < 32
    v = s.verdict
    assert "In roofline terms: awq fell below 1.2x at concurrency " + f"{c.level:.0f}, where fp16 ran batches of about" in v
    # the batch is fp16's own server gauge at the crossing (closed loop: about the concurrency)
    fp16 = s.data["variants"]["fp16"]["steps"]
    batch = _interp_log2([x["level"] for x in fp16], [x["server_running_mean"] for x in fp16], c.level)
    assert batch == pytest.approx(c.level, rel=0.1)
    said = float(re.search(r"fp16 ran batches of about (\d+)", v).group(1))
    assert said == round(batch)
    # the context is the mean prompt (512) plus half the mean output (48)
    ctx = s.data["roofline_context_tokens"]
    assert ctx == pytest.approx(512 + 48 / 2, abs=1.5)
    assert f"context {ctx:.0f} tokens" in v
    # regime, weights' share and the bound's own speedup, worked out by hand for llama-3-8b (32 layers,
    # hidden 4096, MLP 14336, 32 query and 8 KV heads of 128, vocab 128256, untied lm_head) with a
    # 16-bit KV cache: both variants memory-bound, so the predicted speedup is the ratio of bytes read
    projections = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)  # 6,979,321,856 weights
    fixed = 128256 * 4096 * 2 + 65 * 4096 * 2  # lm_head and the 65 norm vectors, 16-bit
    per_seq = (4096 * 2  # the gathered embedding row
               + (ctx + 1) * 2 * 32 * 8 * 128 * 2  # K and V of every cached token and the new one
               + 32 * (8 * 4096 + 2 * (4096 + 2 * 1024) + 3 * 14336 + 4096) * 2 + 128256 * 4)  # activations, logits
    weights16 = projections * 2 + fixed + batch * 4096 * 2
    total16 = projections * 2 + fixed + batch * per_seq
    total4 = projections * (4 + 20 / 128) / 8 + fixed + batch * per_seq  # AWQ: 4 bits + fp16 scale, 4-bit zero / 128
    share = re.search(r"the step was still memory-bound with the weights (\d+)% of the bytes", v)
    assert share and abs(int(share.group(1)) - 100 * weights16 / total16) <= 1
    predicted = re.search(r"the bound alone predicts ([\d.]+)x at that batch\.", v)
    assert predicted and float(predicted.group(1)) == pytest.approx(total16 / total4, abs=0.011)
    assert "no ridge: its KV-cache reads grow faster than its FLOPs" in v  # fp16 weights, 16-bit cache at 536


def test_no_crossing_means_no_roofline_sentence(tmp_path):
    steps = {v: [StepModel(c, 0.005 / sp, 0.005 / sp, output_tokens=40, warmup_s=0.5, duration_s=3.0) for c in (1, 8)]
             for v, sp in (("fp16", 1.0), ("awq", 1.6))}
    r = build_run(tmp_path / "run", RunModel(steps=steps, plan=plan_dict(["fp16", "awq"], baseline="fp16",
                                                                          thresholds=[1.2])))
    s = analyze(r.path)
    assert s.crossover["awq"]["1.2"] is None
    assert "In roofline terms" not in s.verdict
