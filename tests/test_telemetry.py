"""GPU telemetry: DCGM exporter pages, NVML readings, the sampler, and telemetry beside a real sweep."""

import json
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from analysis.energy import energy_table
from core.plan import parse_plan
from deploy import launcher
from deploy.launcher import ServerCommand
from loadtest import telemetry as tm
from loadtest.runner import Sweep, new_run_dir

DATA = Path(__file__).parent / "data" / "dcgm"


# --- DCGM exporter pages --------------------------------------------------------------------------

def _by(readings):
    return {(m, lab["gpu"]): v for m, lab, v in readings}


def test_parse_dcgm_default_counters_units_and_labels():
    readings, devices = tm.parse_dcgm((DATA / "h100x2.prom").read_text())
    r = _by(readings)
    assert r[(tm.POWER, "0")] == pytest.approx(512.337)
    assert r[(tm.POWER, "1")] == pytest.approx(698.904)
    assert r[(tm.ENERGY, "0")] == pytest.approx(31035686.671)  # mJ -> J
    assert r[(tm.UTIL, "1")] == 100.0 and r[(tm.MEM_UTIL, "0")] == 64.0
    assert r[(tm.SM_CLOCK, "0")] == 1980.0 and r[(tm.MEM_CLOCK, "1")] == 2619.0
    assert r[(tm.MEM_USED, "0")] == 76250 * 1024 * 1024  # MiB -> bytes
    assert r[(tm.TEMP, "1")] == 83.0
    assert r[(tm.CLOCK_REASONS, "1")] == 72.0  # 0x40 | 0x8: hardware thermal slowdown
    assert tm.reasons_text(72) == ["hw_slowdown", "hw_thermal_slowdown"]
    assert r[(tm.SM_ACTIVE, "0")] == pytest.approx(0.912345)
    assert r[(tm.POWER_LIMIT, "0")] == 700.0
    # every reading says where it came from, and nothing else is in its labels
    assert {json.dumps(lab, sort_keys=True) for _, lab, _ in readings} == {
        '{"gpu": "0", "source": "dcgm"}', '{"gpu": "1", "source": "dcgm"}'}
    # fields we do not map (memory temperature, PCIe, XID) are not read
    assert {m for m, _, _ in readings} <= set(f for f, _ in tm.DCGM_FIELDS.values())
    assert devices == [
        {"gpu": "0", "uuid": "GPU-5b6c2f0e-8a1d-4c3e-9f27-1d2b3c4d5e6f", "name": "NVIDIA H100 80GB HBM3", "host": "gpu-node-07"},
        {"gpu": "1", "uuid": "GPU-a1f3e9d2-77c0-4b8e-b2a4-6e5d4c3b2a19", "name": "NVIDIA H100 80GB HBM3", "host": "gpu-node-07"},
    ]


def test_parse_dcgm_selects_gpus_by_index_or_uuid():
    text = (DATA / "h100x2.prom").read_text()
    by_index, _ = tm.parse_dcgm(text, ["1"])
    by_uuid, _ = tm.parse_dcgm(text, ["GPU-a1f3e9d2-77c0-4b8e-b2a4-6e5d4c3b2a19"])
    assert {lab["gpu"] for _, lab, _ in by_index} == {"1"}
    assert by_index == by_uuid


def test_parse_dcgm_older_exporter_in_kubernetes_drops_blank_sentinels():
    readings, devices = tm.parse_dcgm((DATA / "a100-k8s.prom").read_text())
    r = _by(readings)
    assert r[(tm.CLOCK_REASONS, "0")] == 4.0  # DCGM_FI_DEV_CLOCK_THROTTLE_REASONS: software power cap
    assert r[(tm.ENERGY, "0")] == pytest.approx(1820034.551)
    assert (tm.POWER_LIMIT, "0") not in r  # 140737488355328 is DCGM's "blank", not 140 TW
    assert devices[0]["name"] == "NVIDIA A100-SXM4-80GB"


def test_dcgm_labels_keep_the_variants_own_pod():
    text = (DATA / "a100-k8s.prom").read_text()  # GPU 0 serves pod vllm-awq-6d9f8b7c5-q2w3e
    templates = {"namespace": "ridgeline", "pod": "vllm-{k8s_name}-[a-z0-9]+-[a-z0-9]+"}
    mine, _ = tm.parse_dcgm(text, match=tm.label_patterns(templates, "awq"))
    assert len(mine) == 9
    for other in ("awq+fp8kv", "aw", "fp16"):
        assert tm.parse_dcgm(text, match=tm.label_patterns(templates, other))[0] == []
    with pytest.raises(tm.TelemetryError, match="pod=~vllm-fp16"):
        tm.DcgmSource("http://exporter:9400/metrics", fetch=lambda url, timeout: text,
                      match=tm.label_patterns(templates, "fp16"))


def test_parse_dcgm_rejects_a_page_that_is_not_prometheus_text():
    with pytest.raises(tm.TelemetryError, match="cannot be parsed"):
        tm.parse_dcgm("DCGM_FI_DEV_POWER_USAGE{gpu=\"0\" 12\n")


# --- NVML through a small stand-in of its calls -----------------------------------------------------

class FakeNvml:
    """The pynvml names ridgeline calls, for two GPUs; GPU 1 does not support the energy counter."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    def __init__(self, fail_init=False):
        self.fail_init = fail_init
        self.inits = self.shutdowns = 0
        self.energy_calls = 0

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("h", i)

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-0000-{h[1]}"

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700000  # mW

    def nvmlDeviceGetPowerUsage(self, h):
        return 412345 + h[1]  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if h[1] == 1:
            raise self.NVMLError_NotSupported("Not Supported")
        self.energy_calls += 1
        return 123456789  # mJ

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=93, memory=58)

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1980 if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=85899345920, used=79456894976, free=6442450944)

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 66

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return 0x4


def test_nvml_readings_in_our_units():
    fake = FakeNvml()
    src = tm.NvmlSource(nvml=fake)
    r = _by(src.read())
    assert r[(tm.POWER, "0")] == pytest.approx(412.345)
    assert r[(tm.ENERGY, "0")] == pytest.approx(123456.789)
    assert r[(tm.UTIL, "0")] == 93 and r[(tm.MEM_UTIL, "0")] == 58
    assert r[(tm.SM_CLOCK, "1")] == 1980 and r[(tm.MEM_CLOCK, "1")] == 2619
    assert r[(tm.MEM_USED, "0")] == 79456894976
    assert r[(tm.TEMP, "0")] == 66 and r[(tm.CLOCK_REASONS, "0")] == 4 and r[(tm.POWER_LIMIT, "0")] == 700
    assert src.devices()[0] == {"gpu": "0", "uuid": "GPU-0000-0", "name": "NVIDIA H100 80GB HBM3", "power_limit_w": 700.0}
    src.close()
    src.close()
    assert fake.shutdowns == 1


def test_nvml_unsupported_field_is_skipped_from_then_on():
    fake = FakeNvml()
    src = tm.NvmlSource(["1"], nvml=fake)
    first = _by(src.read())
    assert (tm.ENERGY, "1") not in first and (tm.POWER, "1") in first
    assert "energy" in src.unsupported
    src.read()
    assert fake.energy_calls == 0  # GPU 0 is not selected; GPU 1 is not asked again


def test_nvml_selects_by_uuid_and_names_a_missing_gpu():
    src = tm.NvmlSource(["GPU-0000-1"], nvml=FakeNvml())
    assert [d["gpu"] for d in src.devices()] == ["1"]
    with pytest.raises(tm.TelemetryError, match="GPU 5 not found"):
        tm.NvmlSource(["0", "5"], nvml=FakeNvml())


def test_nvml_that_cannot_start_is_a_telemetry_error():
    with pytest.raises(tm.TelemetryError, match="Driver Not Loaded"):
        tm.NvmlSource(nvml=FakeNvml(fail_init=True))


def test_sampler_keeps_readings_and_marks_failures_as_gaps():
    class Flaky:
        name = "nvml"
        calls = 0

        def read(self):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("GPU is lost")
            return [(tm.POWER, {"gpu": "0", "source": "nvml"}, 100.0 * self.calls)]

    # the clock: when polled, then (for a reading) before and after it
    clock = iter([10.0, 10.0, 10.2, 10.5, 11.0, 11.0, 11.1, 11.2, 12.0, 12.0, 12.4]).__next__
    s = tm.GpuSampler(Flaky(), "awq", interval_s=1.0, clock=clock)
    s.new_step(3)
    assert s.poll(force=True)  # t=10.0
    assert not s.poll()  # 10.5: not due
    assert not s.poll()  # 11.0: due, fails -> gap
    assert not s.poll()  # 11.2: not due
    assert s.poll()  # 12.0
    df = s.table().to_pandas()
    assert list(df.metric) == [tm.POWER, tm.GAP, tm.POWER]
    assert list(df.value) == [100.0, 1.0, 300.0]
    assert df.time.tolist() == pytest.approx([10.1, 11.05, 12.2])  # halfway through each reading
    assert set(df.variant) == {"awq"} and set(df.step) == {3}
    assert s.buffer.failures == 1 and "GPU is lost" in s.buffer.last_error


def test_parallel_sizes_and_served_gpus():
    assert tm.gpus_per_replica(["vllm", "serve", "m", "--tensor-parallel-size", "2"]) == 2
    assert tm.gpus_per_replica(["x", "-tp=4", "--pipeline-parallel-size", "2"]) == 8
    with pytest.raises(tm.TelemetryError, match="whole number"):
        tm.gpus_per_replica(["x", "--tensor-parallel-size", "two"])
    plan = parse_plan("backend: vllm\nvariants: [{name: a}, {name: b, gpus: [2, 3]}]\n")
    argv = ["python", "-m", "vllm", "--tensor-parallel-size", "2"]
    assert tm.served_gpus(plan, "b", argv, {}) == ["2", "3"]
    assert tm.served_gpus(plan, "a", argv, {"CUDA_VISIBLE_DEVICES": "5,6,7"}) == ["5", "6"]
    assert tm.served_gpus(plan, "a", argv, {"CUDA_VISIBLE_DEVICES": ""}) == ["0", "1"]
    assert tm.served_gpus(plan, "a", [], {}) is None  # external server: every GPU the source sees


def test_no_source_is_said_once_and_the_run_goes_on():
    plan = parse_plan("backend: external\ntelemetry: {dcgm_url: 'http://127.0.0.1:9'}\n"
                      "variants: [{name: a, url: 'http://x'}, {name: b, url: 'http://y'}]\n")
    manifest = {"warnings": []}
    tel = tm.Telemetry(plan, manifest, nvml=FakeNvml(fail_init=True))
    a = tel.sampler("a", "http://x", [], {})
    b = tel.sampler("b", "http://y", [], {})
    assert not a.active and not b.active and not a.poll(force=True)
    assert len(manifest["warnings"]) == 1
    w = manifest["warnings"][0]
    assert w.startswith("no GPU telemetry") and "127.0.0.1:9" in w and "Driver Not Loaded" in w
    assert manifest["telemetry"]["variants"]["a"] == {"source": None}


def test_auto_falls_back_from_dcgm_to_nvml_and_says_so():
    plan = parse_plan("backend: external\ntelemetry: {dcgm_url: 'http://127.0.0.1:9'}\n"
                      "variants: [{name: a, url: 'http://x'}]\n")
    manifest = {"warnings": []}
    tel = tm.Telemetry(plan, manifest, nvml=FakeNvml())
    s = tel.sampler("a", "http://x", [], {})
    assert s.active and s.source.name == "nvml"
    assert manifest["warnings"][0].startswith("GPU telemetry fell back to nvml")
    assert [d["gpu"] for d in manifest["telemetry"]["variants"]["a"]["devices"]] == ["0", "1"]
    tel.close()


def test_a_resumed_manifest_gets_its_telemetry_entry_back():
    plan = parse_plan("backend: external\nvariants: [{name: a, url: 'http://x'}]\n")
    manifest = {"warnings": []}
    tel = tm.Telemetry(plan, manifest, nvml=FakeNvml())
    manifest.clear()  # a resume folds the stored manifest into this one, replacing its contents
    manifest.update({"warnings": [], "steps": []})
    s = tel.sampler("a", "http://x", [], {})
    tel.finish(s)
    assert manifest["telemetry"]["variants"]["a"]["source"] == "nvml"
    tel.close()


# --- a DCGM exporter stand-in beside a real sweep ---------------------------------------------------

EXPORTER = textwrap.dedent('''
    import sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    page, port, watts = open(sys.argv[1]).read(), int(sys.argv[2]), float(sys.argv[3])
    t0 = time.time()
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            # the sample page with its energy counters advancing at `watts` per GPU, as a live exporter's would
            mj = int((time.time() - t0) * watts * 1000)
            body = page.replace("} 31035686671", "} %d" % (31035686671 + mj)).replace(
                "} 45120338904", "} %d" % (45120338904 + mj)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
''')


@pytest.fixture
def dcgm_exporter(tmp_path):
    """A stand-in exporter serving tests/data/dcgm/h100x2.prom at 350 W per GPU; stopped by PID."""
    port = launcher.free_port()
    cmd = ServerCommand("dcgm", [sys.executable, "-c", EXPORTER, str(DATA / "h100x2.prom"), str(port), "350"],
                        port=port, startup_timeout_s=20)
    srv = launcher.start(cmd, tmp_path / "dcgm.log")
    try:
        yield srv
    finally:
        launcher.stop(srv)
        assert not srv.alive()


PLAN = """
name: energy
backend: external
variants:
  - {{name: a, url: "{url}"}}
scenario: {{prompt_tokens: 16, output_tokens: 20}}
sweep: {{concurrency: [1, 4], warmup_s: 0.2, duration_s: 1.5, drain_s: 5}}
telemetry: {{source: dcgm, dcgm_url: "{dcgm}", interval_s: 0.25}}
output_dir: "{out}"
"""


def test_sweep_writes_dcgm_telemetry_beside_the_scraped_series(null_server, dcgm_exporter, tmp_path):
    srv = null_server(ttft_ms=20, gap_ms=5)
    plan = parse_plan(PLAN.format(url=srv.url, dcgm=dcgm_exporter.url, out=tmp_path), "t.yaml")
    run = new_run_dir(plan)
    Sweep(plan, run, commands=[ServerCommand("a", [], port=srv.command.port)]).execute()

    man = run.read_manifest()
    assert man["status"] == "complete"
    assert man["telemetry"]["variants"]["a"]["source"] == "dcgm"
    assert [d["gpu"] for d in man["telemetry"]["variants"]["a"]["devices"]] == ["0", "1"]
    assert not any("telemetry" in w for w in man["warnings"])
    for step in (0, 1):
        assert tm.telemetry_path(run, "a", step).exists()
    df = tm.read_telemetry(run)
    assert set(df.source) == {"dcgm"} and set(df.gpu) == {"0", "1"}
    assert (df.metric == tm.GAP).sum() == 0
    per_step = df[df.metric == tm.POWER].groupby("step").time.nunique()
    assert (per_step >= 5).all()  # 1.7 s at 0.25 s, plus the readings at both ends (fewer on a busy host)

    table = energy_table(run.path)
    assert len(table) == 2 and (table.energy_method == "counter").all()
    # two GPUs whose counters advance at 350 W each (the page's own power reading says 512 + 699 W)
    assert table.mean_power_w.tolist() == pytest.approx([700.0, 700.0], rel=0.08)
    assert (table.tokens_per_joule > 0).all()
    # GPU 1 of the sample page reports a hardware thermal slowdown: no step is comparable
    assert table.throttled.all() and not table.comparable.any()
    assert set(table.throttle_reasons) == {"hw_slowdown,hw_thermal_slowdown"}
