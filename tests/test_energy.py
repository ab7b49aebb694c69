"""Energy per step on synthetic series with known answers: counters, wrap-around, resets, gaps, tokens/J."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from analysis import energy as en
from analysis import energy_chart, energy_text
from analysis.data import SLO
from analysis.steps import aggregate_step, window_output_tokens
from core.records import RequestRecord, StepInfo
from core.results import RunDir
from loadtest import telemetry as tm

W = 300.0  # watts
T = np.arange(0.0, 21.0, 1.0)  # one reading a second, 0..20 s
WINDOW = (5.0, 15.0)  # 10 s at 300 W: 3000 J


def test_constant_power_counter_gives_power_times_time():
    e = en.counter_energy(T, 1e6 + W * T, *WINDOW)
    assert e.method == "counter"
    assert e.joules == pytest.approx(3000.0)
    assert e.coverage == pytest.approx(1.0)


def test_window_edges_between_readings_are_interpolated():
    e = en.counter_energy(T, W * T, 5.25, 14.5)
    assert e.joules == pytest.approx(W * 9.25)


def test_counter_wrap_around_32_bit_millijoules():
    modulus = 2.0**32 * 1e-3  # a 32-bit mJ counter, in joules
    raw = (modulus - 1000.0) + W * T  # wraps after 3.33 s
    wrapped = np.mod(raw, modulus)
    assert (np.diff(wrapped) < 0).sum() == 1
    e = en.counter_energy(T, wrapped, 0.0, 10.0)
    assert e.joules == pytest.approx(3000.0)
    assert e.coverage == pytest.approx(1.0)


def test_wrap_inside_the_window_of_a_64_bit_counter():
    modulus = 2.0**64 * 1e-3
    wrapped = np.mod((modulus - 1500.0) + W * T, modulus)
    # float64 cannot hold 2**61 J to the joule: the answer is right to the precision the counter has
    assert en.counter_energy(T, wrapped, *WINDOW).joules == pytest.approx(3000.0, abs=2e3 * 2**-52 * modulus)


def test_missing_samples_cost_nothing_with_a_counter():
    keep = (T < 7) | (T > 11)
    e = en.counter_energy(T[keep], (W * T)[keep], *WINDOW)
    assert e.joules == pytest.approx(3000.0)
    assert e.coverage == pytest.approx(1.0)


def test_nan_readings_are_missing_samples():
    v = W * T
    v[[3, 8, 12]] = np.nan
    assert en.counter_energy(T, v, *WINDOW).joules == pytest.approx(3000.0)


def test_reset_is_filled_from_power_samples():
    v = W * T
    v[10:] = W * (T[10:] - 9.5)  # the counter restarted from 0 at t = 9.5
    power = np.full_like(T, W)
    e = en.counter_energy(T, v, *WINDOW, power_t=T, power_w=power)
    assert e.joules == pytest.approx(3000.0)
    assert e.coverage == pytest.approx(1.0)
    # without power, the reset interval takes the mean power of the rest
    assert en.counter_energy(T, v, *WINDOW).joules == pytest.approx(3000.0)


def test_a_glitch_spike_is_not_energy():
    v = W * T
    v[9] += 1e9  # one absurd reading: 1 GJ in a second
    e = en.counter_energy(T, v, *WINDOW, power_t=T, power_w=np.full_like(T, W))
    assert e.joules == pytest.approx(3000.0)


def test_readings_that_start_late_are_extrapolated_and_lower_the_coverage():
    late = T >= 8
    e = en.counter_energy(T[late], (W * T)[late], *WINDOW)
    assert e.joules == pytest.approx(3000.0)
    assert e.coverage == pytest.approx(0.7)


def test_power_integral_of_a_ramp_is_exact():
    p = 100.0 + 20.0 * T  # integral over [5, 15] = 1000 + 10 * (225 - 25) = 3000
    e = en.power_energy(T, p, *WINDOW)
    assert e.method == "power"
    assert e.joules == pytest.approx(3000.0)
    assert e.coverage == pytest.approx(1.0)


def test_power_gap_is_bridged_but_not_covered():
    keep = (T <= 7) | (T >= 12)  # 5 s without a reading
    e = en.power_energy(T[keep], (100.0 + 20.0 * T)[keep], *WINDOW)
    assert e.joules == pytest.approx(3000.0)  # linear power: the bridge is exact
    assert e.coverage == pytest.approx(0.5)


def test_gpu_energy_prefers_the_counter_and_falls_back_to_power():
    rows = [(t, tm.POWER, W + (50 if 8 <= t <= 9 else 0)) for t in T] + [(t, tm.ENERGY, W * t) for t in T]
    df = pd.DataFrame(rows, columns=["time", "metric", "value"])
    assert en.gpu_energy(df, *WINDOW).method == "counter"
    assert en.gpu_energy(df, *WINDOW).joules == pytest.approx(3000.0)
    only_power = df[df.metric == tm.POWER]
    got = en.gpu_energy(only_power, *WINDOW)
    assert got.method == "power" and got.joules == pytest.approx(3000.0 + 50.0 * 2)  # trapezoids: 25 + 50 + 25


def test_window_tokens_count_events_in_the_window_weighted_by_usage():
    req = pa.Table.from_pandas(pd.DataFrame({
        "send_time": [0.0, 100.0, 100.0], "ttft_s": [1.0, 1.0, 1.0], "itl_s": [[1.0] * 9, [1.0], [1.0]],
        "output_tokens": [20, 2, 6], "token_events": [10, 2, 2], "status": ["ok", "ok", "ok"]}))
    # token events of the first request at 1..10 s; [2.5, 7.5] holds 3,4,5,6,7; each event is 2 tokens
    assert window_output_tokens(req, 2.5, 7.5) == pytest.approx(10.0)
    # without its usage count it weighs the step's median tokens per event: of 2, 1 and 3
    req = req.set_column(3, "output_tokens", pa.array([None, 2, 6], pa.int32()))
    assert window_output_tokens(req, 2.5, 7.5) == pytest.approx(5 * 2.0)


# --- a whole results directory --------------------------------------------------------------------

def _requests(variant, step, t0, n_req, tokens_each, span):
    """n_req requests streaming `tokens_each` events evenly over [t0, t0 + span]."""
    gap = span / tokens_each
    return [RequestRecord(variant, step, 8, None, f"{variant}-{step}-{i}", "measure", send_time=t0 - gap,
                          ttft_s=gap, itl_s=[gap] * (tokens_each - 1), e2e_s=span + gap,
                          output_tokens=tokens_each, token_events=tokens_each) for i in range(n_req)]


def _telemetry(variant, step, t0, span, watts, gpus=("0",), reasons=0, source="nvml"):

    rows = []
    for g in gpus:
        lab = tm.labels_json({"gpu": g, "source": source})
        for t in np.arange(t0 - 2.0, t0 + span + 2.01, 0.5):
            rows += [(t, tm.POWER, lab, watts), (t, tm.ENERGY, lab, 5e5 + watts * (t - t0)),
                     (t, tm.CLOCK_REASONS, lab, float(reasons)), (t, tm.SM_CLOCK, lab, 1980.0)]
    t, m, lab, v = zip(*rows)
    return pa.table({"time": list(t), "variant": [variant] * len(t), "step": [step] * len(t), "metric": list(m),
                     "labels": list(lab), "value": list(v)})


def _run(tmp_path, spec):
    """spec: variant -> list of (watts, tokens per request, gpus, reasons) per step; 10 requests, 10 s."""
    run = RunDir(tmp_path / "run").create()
    steps = []
    t = 1000.0
    for variant, levels in spec.items():
        for i, (watts, tokens_each, gpus, reasons) in enumerate(levels):
            t0, span = t, 10.0
            steps.append(StepInfo(variant, i, [8, 64][i], None, "complete", t0 - 2, t0 + span + 2,
                                  window_start=t0, window_end=t0 + span).to_dict())
            run.write_requests(variant, i, _requests(variant, i, t0, 10, tokens_each, span))
            tm.write_telemetry(run, variant, i, _telemetry(variant, i, t0, span, watts, gpus, reasons))
            t += 100.0
    run.write_manifest({"steps": steps, "plan": {"baseline": "fp16"}})
    return run


def test_energy_table_known_answer(tmp_path):
    run = _run(tmp_path, {
        "fp16": [(400.0, 100, ("0",), 0), (600.0, 200, ("0",), 0)],
        "awq": [(350.0, 120, ("0",), 0x4), (500.0, 232, ("0", "1"), 0)],
    })
    df = en.energy_table(run.path)
    assert list(df.columns) == en.COLUMNS
    assert len(df) == 4
    r = df.set_index(["variant", "level"])
    # fp16 at 8: 10 requests x 100 tokens in 10 s at 400 W -> 1000 tokens / 4000 J
    a = r.loc[("fp16", 8)]
    assert a.output_tokens == pytest.approx(1000.0)
    assert a.energy_j == pytest.approx(4000.0)
    assert a.tokens_per_joule == pytest.approx(0.25)
    assert a.mean_power_w == pytest.approx(400.0)
    assert a.max_power_w == pytest.approx(400.0)
    assert a.tokens_per_s_per_gpu == pytest.approx(100.0)
    assert a.energy_method == "counter" and a.source == "nvml" and a.comparable
    # awq at 64 runs on two GPUs at 500 W each
    b = r.loc[("awq", 64)]
    assert b.gpus == 2
    assert b.energy_j == pytest.approx(10000.0)
    assert b.max_power_w == pytest.approx(1000.0)
    assert b.tokens_per_s_per_gpu == pytest.approx(2320.0 / 10 / 2)
    # the software power cap is reported, not treated as throttling
    c = r.loc[("awq", 8)]
    assert c.power_capped_share == pytest.approx(1.0)
    assert not c.throttled and c.comparable
    s = energy_text.energy_sentence(df, "awq", "fp16", level=8)
    # 1200 vs 1000 tokens; 3500/1200 vs 4000/1000 J/token: 27% less
    assert s.startswith("awq at concurrency 8 gives 1.20x the tokens of fp16 for 27% less energy per token")
    assert "measured by nvml" in s
    # default level: the highest both reached; 10000/2320 vs 6000/2000 J/token is 44% more
    assert "at concurrency 64 gives 1.16x the tokens of fp16 for 44% more energy per token" in energy_text.energy_sentence(
        df, "awq", "fp16")


def test_throttled_step_is_flagged_and_left_out(tmp_path):
    run = _run(tmp_path, {
        "fp16": [(400.0, 100, ("0",), 0), (600.0, 200, ("0",), 0)],
        "awq": [(350.0, 120, ("0",), 0), (500.0, 232, ("0",), 0x40 | 0x4)],
    })
    df = en.energy_table(run)
    bad = df[(df.variant == "awq") & (df.level == 64)].iloc[0]
    assert bad.throttled and not bad.comparable
    assert bad.throttle_reasons == "hw_thermal_slowdown"
    assert energy_text.energy_sentence(df, "awq", "fp16", level=64) is None
    lines = energy_text.energy_sentences(df, "fp16")
    assert lines[0].startswith("awq at concurrency 8 ")
    assert "throttled in awq step 1" in lines[-1]


def test_modelled_source_says_so_and_chart_is_written(tmp_path):
    run = RunDir(tmp_path / "run").create()
    steps = []
    for i, variant in enumerate(["fp16", "awq"]):
        t0 = 1000.0 + 100 * i
        steps.append(StepInfo(variant, 0, 4, None, "complete", t0, t0 + 10, window_start=t0, window_end=t0 + 10).to_dict())
        run.write_requests(variant, 0, _requests(variant, 0, t0, 4, 50 + 10 * i, 10.0))
        tm.write_telemetry(run, variant, 0, _telemetry(variant, 0, t0, 10.0, 300.0 - 50 * i, source="modelled"))
    run.write_manifest({"steps": steps})
    df = en.energy_table(run)
    assert set(df.source) == {"modelled"}
    assert "modelled power, not measured" in energy_text.energy_sentence(df, "awq", "fp16")
    out = energy_chart.write_energy(run)
    assert out["chart"].exists() and out["chart"].stat().st_size > 5000
    assert pd.read_csv(out["csv"]).shape[0] == 2


def test_run_without_telemetry_gives_an_empty_table(tmp_path):
    run = RunDir(tmp_path / "run").create()
    run.write_manifest({"steps": [StepInfo("a", 0, 1, None, "complete", 0.0, 1.0).to_dict()]})
    df = en.energy_table(run)
    assert df.empty and list(df.columns) == en.COLUMNS
    assert energy_chart.write_energy(run) == {"table": None, "csv": None, "chart": None}
    assert energy_chart.plot_energy(df, tmp_path / "x.png") is None


# --- a real series: NVML on an H100, 3 s idle, 8 s of bf16 matmuls, 2 s idle, read every 0.1 s ----

REAL = Path(__file__).parent / "data" / "nvml" / "h100-idle-then-bf16-matmul.parquet"


def test_real_h100_series_counter_and_power_agree():
    df = pd.read_parquet(REAL)
    util = df[df.metric == tm.UTIL]
    busy = util[util.value >= 99].time
    b0, b1 = busy.min() + 1.0, busy.max() - 0.5  # leave the ramps out
    i0, i1 = df.time.min() + 0.5, busy.min() - 0.5
    e, p = df[df.metric == tm.ENERGY], df[df.metric == tm.POWER]
    for w0, w1, lo, hi in ((i0, i1, 50.0, 120.0), (b0, b1, 550.0, 710.0)):
        c = en.counter_energy(e.time, e.value, w0, w1)
        q = en.power_energy(p.time, p.value, w0, w1)
        assert c.coverage == pytest.approx(1.0) and q.coverage == pytest.approx(1.0)
        assert lo <= c.joules / (w1 - w0) <= hi
        assert q.joules == pytest.approx(c.joules, rel=0.03)  # NVML's power reading and its counter agree
    # at full load the board sat at its software power cap: reported, never counted as throttling
    reasons = df[(df.metric == tm.CLOCK_REASONS) & (df.time >= b0) & (df.time <= b1)].value.astype(int)
    assert ((reasons & tm.POWER_CAP_MASK) != 0).mean() > 0.5
    assert ((reasons & tm.THROTTLE_MASK) == 0).all()


# --- the vectorised paths -------------------------------------------------------------------------

def _window_tokens_by_loop(req, t0, t1):
    """The definition, one request at a time: every event time inside [t0, t1], weighted by its
    request's usage tokens per event, or by the median of those where the request has no usage."""
    ratios = [o / e for o, e, st in zip(req.output_tokens, req.token_events, req.status)
              if st == "ok" and np.isfinite(o) and o > 0 and e > 0]
    median = float(np.median(ratios)) if ratios else 1.0
    total = 0.0
    for send, ttft, gaps, out_tok, events, st in zip(req.send_time, req.ttft_s, req.itl_s, req.output_tokens,
                                                      req.token_events, req.status):
        if not np.isfinite(ttft):
            continue
        times = send + ttft + np.concatenate(([0.0], np.cumsum(np.asarray(gaps, dtype=np.float32), dtype=float)))
        w = out_tok / events if st == "ok" and np.isfinite(out_tok) and out_tok > 0 and events > 0 else median
        total += np.count_nonzero((times >= t0) & (times <= t1)) * w
    return total


def test_window_tokens_match_the_per_request_definition_and_the_step_table():
    rng = np.random.default_rng(7)
    n = 300
    lengths = rng.integers(0, 40, n)
    req = pd.DataFrame({"send_time": rng.uniform(0, 20, n), "ttft_s": rng.uniform(0.01, 1.0, n),
                        "itl_s": [list(rng.uniform(0.0, 0.5, k)) for k in lengths],
                        "output_tokens": np.where(rng.random(n) < 0.8, rng.integers(1, 3, n) * (lengths + 1), np.nan),
                        "token_events": lengths + 1,
                        "status": np.where(rng.random(n) < 0.9, "ok", "error"), "phase": "measure"})
    req.loc[::17, "ttft_s"] = np.nan  # no first token: nothing counts
    table = pa.Table.from_pandas(req, preserve_index=False)
    for t0, t1 in ((5.0, 15.0), (0.0, 40.0), (10.0, 10.5)):
        want = _window_tokens_by_loop(req, t0, t1)
        assert window_output_tokens(table, t0, t1) == pytest.approx(want)
        row, _, _ = aggregate_step(table, t0, t1, SLO())
        assert row["output_tokens_per_s"] * (t1 - t0) == pytest.approx(want)


def test_the_analysis_step_table_spares_reading_the_request_rows(tmp_path):
    import shutil

    run = _run(tmp_path, {"fp16": [(400.0, 100, ("0",), 0)], "awq": [(350.0, 120, ("0",), 0)]})
    full = en.energy_table(run)
    steps = full[["variant", "step"]].assign(output_tokens_per_s=full.tokens_per_s * 1.5)
    shutil.rmtree(run.path / "requests")  # nothing left to read: the table's own counts are used
    got = en.energy_table(run, steps)
    assert got.output_tokens.tolist() == pytest.approx((full.output_tokens * 1.5).tolist())
    assert got.energy_j.tolist() == pytest.approx(full.energy_j.tolist())
    assert got.tokens_per_joule.tolist() == pytest.approx((full.tokens_per_joule * 1.5).tolist())


def test_the_analysis_keeps_the_same_energy_table(tmp_path):
    from analysis.pipeline import compute

    run = _run(tmp_path, {"fp16": [(400.0, 100, ("0",), 0), (600.0, 200, ("0",), 0)],
                          "awq": [(350.0, 120, ("0",), 0x4), (500.0, 232, ("0", "1"), 0)]})
    a = compute(run.path)
    alone = en.energy_table(run).set_index(["variant", "step"])
    kept = a.energy.set_index(["variant", "step"]).loc[alone.index]
    for col in ("energy_j", "output_tokens", "tokens_per_joule", "max_power_w", "gpus"):
        assert kept[col].astype(float).tolist() == pytest.approx(alone[col].astype(float).tolist()), col
    assert list(a.energy.variant) == ["fp16", "fp16", "awq", "awq"]  # in the run's order of variants
    row = a.steps.set_index(["variant", "step"]).loc[("awq", 1)]
    assert row.gpus == 2 and row.energy_j == pytest.approx(10000.0) and row.energy_label == "measured"
    assert row.power_capped_share == 0 and not row.throttled


def test_telemetry_labels_are_decoded_per_label_set(tmp_path):

    path = tmp_path / "t.parquet"
    lab = [tm.labels_json({"gpu": "1", "source": "dcgm"}), tm.labels_json({"gpu": "0", "source": "dcgm"}), "", "{",
           None]
    pa.table({"time": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "variant": ["v"] * 6, "step": [0] * 6,
              "metric": [tm.POWER] * 5 + [tm.GAP], "labels": lab + [lab[0]],
              "value": [1.0, 2.0, 3.0, 4.0, 5.0, 1.0]}).to_pandas().to_parquet(path)
    df = en.read_step_telemetry(path)

    def values(col):
        return [None if pd.isna(x) else x for x in col]

    assert values(df.gpu) == ["1", "0", None, None, None]
    assert values(df.source) == ["dcgm", "dcgm", None, None, None]
    assert df.value.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert tm.GAP not in set(df.metric)
    assert en.read_step_telemetry(tmp_path / "absent.parquet").empty


def test_an_unreadable_telemetry_file_is_a_warning_not_a_failure(tmp_path):
    from analysis.pipeline import compute

    run = _run(tmp_path, {"fp16": [(400.0, 100, ("0",), 0)], "awq": [(350.0, 120, ("0",), 0)]})
    bad = tm.telemetry_path(run, "awq", 0)
    bad.write_bytes(b"not parquet")
    a = compute(run.path)
    assert any(w.startswith(str(bad)) and "that step has no energy figures" in w for w in a.warnings)
    row = a.energy.set_index("variant").loc["awq"]
    assert row.gpus is None or np.isnan(row.gpus)
    assert a.energy.set_index("variant").loc["fp16"].energy_j == pytest.approx(4000.0)


@pytest.mark.parametrize("sources, label", [(["modelled"], "modelled"), (["nvml"], "measured"),
                                            ("dcgm,nvml", "measured"), (["nvml", "modelled"], "measured and modelled"),
                                            ([], None), (None, None)])
def test_energy_label(sources, label):
    assert en.energy_label(sources) == label
