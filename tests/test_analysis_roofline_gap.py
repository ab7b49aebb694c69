"""Each step's gap to its roofline bound, split by vLLM's own counters; an all-zero counter is missing.

The modelled run's counters grow by known amounts per generated token, so the server's bytes per
decode step (its achieved rate times the measured step) and the bound's bytes (the roofline cost
of that batch and context) are known without the code under test.
"""

import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from analysis import analyze, render_reports
from analysis.roofline_gap import MISSING
from core.hardware.catalog import get_gpu, load_model
from core.hardware.roofline import decode_step_cost
from tests.test_analysis_roofline import BYTES_PER_TOKEN, run  # noqa: F401 - the modelled run, a fixture


def test_the_gap_is_the_extra_work_times_the_distance_to_the_ceiling(run):
    _, s = run
    gaps = s.data["roofline_gaps"]
    assert len(gaps) == 14
    roof = s.analysis.roofline.steps.set_index(["variant", "step"])
    model, gpu = load_model(s.analysis.info.model), get_gpu("h100-sxm")
    for g in gaps:
        r = roof.loc[(g["variant"], g["step"])]
        step = next(e for e in s.data["variants"][g["variant"]]["steps"] if e["step"] == g["step"])
        assert g["gap"] == pytest.approx(r.measured_s / r.bound_s)
        assert g["regime"] == "memory"  # small batches of an 8B model: bytes bind
        cost = decode_step_cost(model, g["variant"], "auto", r.batch, r.context_tokens)
        server_bytes = BYTES_PER_TOKEN * step["server_generation_tokens_per_s"] * r.measured_s
        assert g["work_ratio"] == pytest.approx(server_bytes / cost.total_bytes, rel=1e-6)
        assert g["ceiling_ratio"] == pytest.approx(gpu.bandwidth(True) / step["achieved_read_bytes_per_s"])
        assert g["work_ratio"] * g["ceiling_ratio"] == pytest.approx(g["gap"])
        assert "x the bytes the bound counts per step" in g["explanation"]


def test_counters_that_never_left_zero_are_missing_not_zero(run, tmp_path):
    path, _ = run
    dead = tmp_path / "dead"
    shutil.copytree(path, dead)
    for f in (dead / "metrics").rglob("*.parquet"):
        t = pq.read_table(f)
        counter = pc.is_in(t.column("metric"), value_set=pa.array(
            ["vllm:estimated_flops_per_gpu_total", "vllm:estimated_read_bytes_per_gpu_total"]))
        values = pc.if_else(counter, 0.0, t.column("value"))
        pq.write_table(t.set_column(t.schema.get_field_index("value"), "value", values), f)
    s = analyze(dead)
    for v in ("fp16", "awq"):
        for e in s.data["variants"][v]["steps"]:
            assert e["achieved_flops_per_s"] is None and e["achieved_read_bytes_per_s"] is None
            assert e["server_generation_tokens_per_s"] > 0  # the other counters still count
    assert all(g["explanation"].endswith(MISSING) for g in s.data["roofline_gaps"])
    render_reports(dead)
    assert "s gap to its bound</h3>" in (dead / "report.html").read_text()
    assert "## Roofline: each step's gap to its bound" in (dead / "report.md").read_text()
