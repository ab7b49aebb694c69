"""GPU telemetry during every step: power, energy, utilisation, clocks, memory, temperature, throttling.

Quantization is chosen for cost as much as for speed, so each step records what the served GPUs
drew while it ran. Three sources, one output:

- ``nvml``: the NVIDIA management library (``pynvml`` from the ``nvidia-ml-py`` package, imported
  only when used) when ridgeline runs on the GPU host;
- ``dcgm``: a DCGM exporter's Prometheus page, given its URL, when it does not;
- ``modelled``: the emulator's modelled power from its own /metrics (labelled as modelled, never
  passed off as a measurement).

Samples use the scraped-series schema (``records.METRIC_SCHEMA``) with ``gpu:`` metric names and
labels ``{gpu, source}``, and live beside the scraped vLLM series, one file per step:
``<run>/telemetry/<variant>/step-NNN.parquet``. A sample that fails leaves a gap row (like the
scraper), and a run with no source at all says so once in the manifest and goes on.
"""

from __future__ import annotations

import os
import re
import time
import urllib.error
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import pyarrow as pa
from prometheus_client.parser import text_string_to_metric_families

from core.backends import backend
from core import parallel
from core.records import METRIC_SCHEMA
from core.telemetry import (  # noqa: F401 - the vocabulary, re-read by the samplers below
    CLOCK_REASONS,
    DRAM_ACTIVE,
    ENERGY,
    GAP,
    MEM_CLOCK,
    MEM_USED,
    MEM_UTIL,
    POWER,
    POWER_CAP_MASK,
    POWER_LIMIT,
    POWER_VIOLATION,
    REASON_BITS,
    SM_ACTIVE,
    SM_CLOCK,
    SOURCES,
    TELEMETRY_DIR,
    TEMP,
    THERMAL_VIOLATION,
    THROTTLE_MASK,
    UTIL,
    Reading,
    TelemetryError,
    labels_json,
    read_telemetry,
    reasons_text,
    telemetry_path,
    write_telemetry,
)
from deploy.render.kubernetes import k8s_name
from loadtest.scraper import fetch

# DCGM exporter field -> (our metric, factor to our unit)
DCGM_FIELDS: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_POWER_USAGE": (POWER, 1.0),  # W
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": (ENERGY, 1e-3),  # mJ since boot
    "DCGM_FI_DEV_GPU_UTIL": (UTIL, 1.0),  # %
    "DCGM_FI_DEV_MEM_COPY_UTIL": (MEM_UTIL, 1.0),  # %
    "DCGM_FI_DEV_SM_CLOCK": (SM_CLOCK, 1.0),  # MHz
    "DCGM_FI_DEV_MEM_CLOCK": (MEM_CLOCK, 1.0),  # MHz
    "DCGM_FI_DEV_FB_USED": (MEM_USED, 1024.0 * 1024.0),  # MiB
    "DCGM_FI_DEV_GPU_TEMP": (TEMP, 1.0),  # C
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": (CLOCK_REASONS, 1.0),  # bitmask (DCGM < 3.3)
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": (CLOCK_REASONS, 1.0),  # bitmask (DCGM >= 3.3)
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": (POWER_LIMIT, 1.0),  # W
    "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": (POWER_LIMIT, 1.0),  # W
    "DCGM_FI_PROF_SM_ACTIVE": (SM_ACTIVE, 1.0),  # ratio
    "DCGM_FI_PROF_DRAM_ACTIVE": (DRAM_ACTIVE, 1.0),  # ratio
    "DCGM_FI_DEV_POWER_VIOLATION": (POWER_VIOLATION, 1.0),  # us
    "DCGM_FI_DEV_THERMAL_VIOLATION": (THERMAL_VIOLATION, 1.0),  # us
}
# DCGM writes "blank" sentinels for values a GPU does not support
_DCGM_BLANK_64 = 140737488355328.0  # DCGM_FP64_BLANK; DCGM_INT64_BLANK is larger still
_DCGM_BLANK_32 = 2147483632.0  # DCGM_INT32_BLANK, only for 32-bit fields (not the counters)
_DCGM_64BIT = {ENERGY, POWER_VIOLATION, THERMAL_VIOLATION, MEM_USED}

# the emulator's modelled series (its /metrics), and ours
EMULATOR_FIELDS: dict[str, str] = {
    "ridgeline_emulator:gpu_power_watts": POWER,
    "ridgeline_emulator:gpu_energy_joules_total": ENERGY,
}


# --- sources -----------------------------------------------------------------------------------

class Source(Protocol):
    """Something that can be asked, at any moment, what the GPUs read now."""

    name: str

    def read(self) -> list[Reading]: ...

    def devices(self) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


def _selected(gpu: str, uuid: Optional[str], wanted: Optional[set[str]]) -> bool:
    return wanted is None or gpu in wanted or (uuid is not None and uuid in wanted)


class NvmlSource:
    """Reads the local GPUs through NVML. `nvml` is the pynvml module (or a stand-in with its names)."""

    name = "nvml"

    def __init__(self, gpus: Optional[list[str]] = None, nvml: Any = None):
        if nvml is None:
            try:
                import pynvml as nvml  # the nvidia-ml-py package; optional extra [gpu]
            except ImportError:
                raise TelemetryError("NVML: the nvidia-ml-py package is not installed "
                                     "(pip install 'ridgeline[gpu]')") from None
        self.nvml = nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise TelemetryError(f"NVML cannot start: {exc}") from None
        self._open = True
        self.unsupported: set[str] = set()
        try:
            count = nvml.nvmlDeviceGetCount()
            wanted = set(gpus) if gpus else None
            self._handles: list[tuple[str, Any]] = []
            self._devices: list[dict[str, Any]] = []
            for i in range(count):
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(self._get(nvml.nvmlDeviceGetUUID, h, what="uuid"))
                if not _selected(str(i), uuid, wanted):
                    continue
                self._handles.append((str(i), h))
                limit = self._get(nvml.nvmlDeviceGetEnforcedPowerLimit, h, what="power_limit")
                self._devices.append({
                    "gpu": str(i), "uuid": uuid, "name": _text(self._get(nvml.nvmlDeviceGetName, h, what="name")),
                    "power_limit_w": limit / 1000.0 if limit is not None else None,
                })
            if wanted is not None:
                found = {d["gpu"] for d in self._devices} | {d["uuid"] for d in self._devices if d["uuid"]}
                missing = sorted(wanted - found)
                if missing:
                    raise TelemetryError(f"NVML: GPU {', '.join(missing)} not found on this host "
                                         f"({count} GPU(s); NVML numbers them in PCI bus order)")
            if not self._handles:
                raise TelemetryError("NVML: no GPU on this host")
        except BaseException:
            self.close()
            raise

    def _get(self, fn: Callable[..., Any], *args: Any, what: str) -> Any:
        """One NVML call; a field this GPU or driver does not support is skipped from then on."""
        if what in self.unsupported:
            return None
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            not_supported = getattr(self.nvml, "NVMLError_NotSupported", None)
            if not_supported is not None and isinstance(exc, not_supported):
                self.unsupported.add(what)
                return None
            raise

    def read(self) -> list[Reading]:
        n = self.nvml
        reasons_fn = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            getattr(n, "nvmlDeviceGetCurrentClocksThrottleReasons")
        out: list[Reading] = []
        for gpu, h in self._handles:
            lab = {"gpu": gpu, "source": self.name}
            power = self._get(n.nvmlDeviceGetPowerUsage, h, what="power")  # mW
            if power is not None:
                out.append((POWER, lab, power / 1000.0))
            energy = self._get(n.nvmlDeviceGetTotalEnergyConsumption, h, what="energy")  # mJ
            if energy is not None:
                out.append((ENERGY, lab, energy / 1000.0))
            util = self._get(n.nvmlDeviceGetUtilizationRates, h, what="util")
            if util is not None:
                out.append((UTIL, lab, float(util.gpu)))
                out.append((MEM_UTIL, lab, float(util.memory)))
            sm = self._get(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM, what="sm_clock")
            if sm is not None:
                out.append((SM_CLOCK, lab, float(sm)))
            mem = self._get(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_MEM, what="mem_clock")
            if mem is not None:
                out.append((MEM_CLOCK, lab, float(mem)))
            info = self._get(n.nvmlDeviceGetMemoryInfo, h, what="memory")
            if info is not None:
                out.append((MEM_USED, lab, float(info.used)))
            temp = self._get(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU, what="temperature")
            if temp is not None:
                out.append((TEMP, lab, float(temp)))
            reasons = self._get(reasons_fn, h, what="clock_reasons")
            if reasons is not None:
                out.append((CLOCK_REASONS, lab, float(reasons)))
            limit = self._get(n.nvmlDeviceGetEnforcedPowerLimit, h, what="power_limit")
            if limit is not None:
                out.append((POWER_LIMIT, lab, limit / 1000.0))
        return out

    def devices(self) -> list[dict[str, Any]]:
        return list(self._devices)

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError:
                pass


def _text(v: Any) -> Optional[str]:
    if v is None:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def parse_dcgm(text: str, gpus: Optional[list[str]] = None, match: Optional[dict[str, "re.Pattern[str]"]] = None,
               ) -> tuple[list[Reading], list[dict[str, Any]]]:
    """Readings and devices from a DCGM exporter page; `gpus` keeps only those indices or UUIDs, and
    `match` only samples whose labels fully match (e.g. the pod a variant runs in, in Kubernetes).

    Blank sentinels (what DCGM writes for a field the GPU does not support) and NaN are dropped.
    """
    wanted = set(gpus) if gpus else None
    out: list[Reading] = []
    devices: dict[str, dict[str, Any]] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise TelemetryError(f"DCGM exporter page cannot be parsed: {exc}") from None
    for fam in families:
        for s in fam.samples:
            mapped = DCGM_FIELDS.get(s.name)
            if mapped is None:
                continue
            metric, factor = mapped
            gpu = s.labels.get("gpu")
            if gpu is None:
                continue
            uuid = s.labels.get("UUID")
            if not _selected(gpu, uuid, wanted):
                continue
            if match and not all(p.fullmatch(s.labels.get(k, "")) for k, p in match.items()):
                continue
            v = float(s.value)
            if v != v or v >= _DCGM_BLANK_64 or (metric not in _DCGM_64BIT and v >= _DCGM_BLANK_32):
                continue
            out.append((metric, {"gpu": gpu, "source": "dcgm"}, v * factor))
            if gpu not in devices:
                devices[gpu] = {"gpu": gpu, "uuid": uuid, "name": s.labels.get("modelName"),
                                "host": s.labels.get("Hostname")}
    return out, [devices[k] for k in sorted(devices, key=_gpu_order)]


def _gpu_order(g: str) -> tuple[int, str]:
    return (int(g), "") if g.isdigit() else (1 << 30, g)


def _fetch(url: str, timeout: float, headers: Optional[dict[str, str]] = None) -> str:
    return fetch(url, timeout, headers)


class DcgmSource:
    """Reads a DCGM exporter's Prometheus page (default port 9400)."""

    name = "dcgm"

    def __init__(self, url: str, gpus: Optional[list[str]] = None, timeout: float = 5.0,
                 fetch: Callable[[str, float], str] = _fetch, match: Optional[dict[str, "re.Pattern[str]"]] = None):
        self.url = url
        self.gpus = gpus
        self.match = match
        self.timeout = timeout
        self._fetch = fetch
        self._devices: list[dict[str, Any]] = []
        try:
            readings, self._devices = parse_dcgm(self._fetch(url, timeout), gpus, match)
        except (urllib.error.URLError, OSError, ValueError, UnicodeError) as exc:
            raise TelemetryError(f"DCGM exporter {url} cannot be read: {type(exc).__name__}: {exc}") from None
        if not readings:
            which = f" for GPU {', '.join(gpus)}" if gpus else ""
            if match:
                which += " with " + ", ".join(f"{k}=~{p.pattern}" for k, p in match.items())
            raise TelemetryError(f"DCGM exporter {url} has no DCGM_FI_ samples{which}")

    def read(self) -> list[Reading]:
        readings, devices = parse_dcgm(self._fetch(self.url, self.timeout), self.gpus, self.match)
        if devices:
            self._devices = devices
        return readings

    def devices(self) -> list[dict[str, Any]]:
        return list(self._devices)

    def close(self) -> None:
        pass


def parse_modelled(text: str) -> list[Reading]:
    """The emulator's modelled power and energy from its /metrics page, labelled as modelled."""
    out: list[Reading] = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            metric = EMULATOR_FIELDS.get(s.name)
            if metric is None:
                continue
            out.append((metric, {"gpu": str(s.labels.get("gpu", "0")), "source": "modelled"}, float(s.value)))
    return out


class ModelledSource:
    """The emulator's modelled GPU power, read from its own /metrics."""

    name = "modelled"

    def __init__(self, metrics_url: str, headers: Optional[dict[str, str]] = None, timeout: float = 5.0,
                 fetch: Callable[..., str] = _fetch):
        self.url = metrics_url
        self.headers = headers
        self.timeout = timeout
        self._fetch = fetch
        self._gpus: set[str] = set()

    def read(self) -> list[Reading]:
        rows = parse_modelled(self._fetch(self.url, self.timeout, self.headers))
        self._gpus.update(lab["gpu"] for _, lab, _ in rows)
        return rows

    def devices(self) -> list[dict[str, Any]]:
        return [{"gpu": g, "uuid": None, "name": "modelled"} for g in sorted(self._gpus, key=_gpu_order)]

    def close(self) -> None:
        pass


# --- sampling one step -------------------------------------------------------------------------

@dataclass
class TelemetryBuffer:
    """Columns of one step's samples."""

    time: list[float] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    samples: int = 0
    failures: int = 0
    last_error: Optional[str] = None

    def add(self, t: float, rows: list[tuple[str, str, float]]) -> None:
        for name, lab, v in rows:
            self.time.append(t)
            self.metric.append(name)
            self.labels.append(lab)
            self.value.append(v)

    def table(self, variant: str, step: int) -> pa.Table:
        n = len(self.time)
        return pa.table({"time": self.time, "variant": [variant] * n, "step": [step] * n,
                         "metric": self.metric, "labels": self.labels, "value": self.value},
                        schema=METRIC_SCHEMA)


class GpuSampler:
    """Samples one variant's GPUs every `interval_s`; the sweep's loop calls `poll` as it goes."""

    def __init__(self, source: Optional[Source], variant: str, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.time):
        self.source = source
        self.variant = variant
        self.interval_s = interval_s
        self.clock = clock
        self.step = -1
        self.buffer = TelemetryBuffer()
        self._next = 0.0

    @property
    def active(self) -> bool:
        return self.source is not None

    def new_step(self, step: int) -> None:
        self.step = step
        self.buffer = TelemetryBuffer()
        self._next = 0.0

    def poll(self, now: Optional[float] = None, force: bool = False) -> bool:
        """Take a sample if one is due (or forced); never raises: a failure is a gap row."""
        if self.source is None:
            return False
        now = self.clock() if now is None else now
        if not force and now < self._next:
            return False
        self._next = now + self.interval_s
        return self.sample()

    def sample(self) -> bool:
        """Read the source now, stamped halfway through the reading (an HTTP fetch takes a while)."""
        if self.source is None:
            return False
        t0 = self.clock()
        self.buffer.samples += 1
        try:
            rows = self.source.read()
        except Exception as exc:  # noqa: BLE001 - a failed reading is a gap, never a failed step
            self.buffer.failures += 1
            self.buffer.last_error = f"{type(exc).__name__}: {exc}"
            self.buffer.add((t0 + self.clock()) / 2, [(GAP, labels_json({"source": self.source.name}), 1.0)])
            return False
        self.buffer.add((t0 + self.clock()) / 2, [(m, labels_json(lab), v) for m, lab, v in rows])
        return True

    def table(self) -> pa.Table:
        return self.buffer.table(self.variant, self.step)


# --- choosing a source for a run ---------------------------------------------------------------

def gpus_per_replica(argv: list[str]) -> int:
    """GPUs one vLLM server uses: tensor-parallel size times pipeline-parallel size in its argv."""
    try:
        return parallel.gpus_per_replica(argv)
    except parallel.ParallelSizeError as exc:
        raise TelemetryError(str(exc)) from None


def served_gpus(plan: Any, variant: str, argv: list[str], env: dict[str, str]) -> Optional[list[str]]:
    """Which GPUs (indices or UUIDs) serve a variant; None: every GPU the source sees.

    The variant's `gpus`, else the first GPUs of CUDA_VISIBLE_DEVICES, else the first
    tensor-parallel x pipeline-parallel indices (what vLLM takes). For a server ridgeline did not
    start (external backend) only `gpus` can say, so without it every GPU is counted.
    """
    spec = plan.variant(variant)
    if spec.gpus:
        return [str(g) for g in spec.gpus]
    if not argv:
        return None
    n = gpus_per_replica(argv)
    visible = env.get("CUDA_VISIBLE_DEVICES", spec.env.get("CUDA_VISIBLE_DEVICES",
                                                            os.environ.get("CUDA_VISIBLE_DEVICES", "")))
    ids = [x.strip() for x in visible.split(",") if x.strip()]
    if ids:
        return ids[:n]
    return [str(i) for i in range(n)]


def _telemetry_spec(plan: Any) -> tuple[str, Optional[str], float]:
    spec = getattr(plan, "telemetry", None)
    if spec is None:
        return "auto", None, float(plan.scrape.interval_s)
    return spec.source, spec.dcgm_url, float(spec.interval_s)


def label_patterns(templates: dict[str, str], variant: str) -> dict[str, "re.Pattern[str]"]:
    """The plan's telemetry.dcgm_labels for one variant: {variant} and {k8s_name} filled in, compiled."""
    out = {}
    for label, t in templates.items():
        out[label] = re.compile(t.replace("{variant}", re.escape(variant)).replace("{k8s_name}", re.escape(k8s_name(variant))))
    return out


class Telemetry:
    """Run-level: picks a source per variant, records what it picked (and what it could not) in the manifest."""

    def __init__(self, plan: Any, manifest: dict[str, Any],
                 nvml: Any = None, fetch: Callable[..., str] = _fetch):
        self.plan = plan
        self.manifest = manifest
        self.source_name, self.dcgm_url, self.interval_s = _telemetry_spec(plan)
        self._nvml = nvml
        self._fetch = fetch
        self._warned: set[str] = set()
        self._open: list[Source] = []
        self._section()

    def _section(self) -> dict[str, Any]:
        """The manifest's telemetry entry (set again if the manifest was replaced, as a resume does)."""
        sec = self.manifest.setdefault("telemetry", {"source": self.source_name, "dcgm_url": self.dcgm_url,
                                                     "interval_s": self.interval_s, "variants": {}})
        sec.setdefault("variants", {})
        return sec

    def _warn(self, key: str, text: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        self.manifest.setdefault("warnings", []).append(text)

    def _open_source(self, variant: str, url: str, argv: list[str], env: dict[str, str],
                     headers: Optional[dict[str, str]]) -> tuple[Optional[Source], list[str]]:
        why: list[str] = []
        if self.source_name == "none":
            return None, why
        gpus = served_gpus(self.plan, variant, argv, env)
        if backend(self.plan.backend).modelled and self.source_name == "auto":
            return ModelledSource(url.rstrip("/") + "/metrics", headers, fetch=self._fetch), why
        order = {"auto": ["dcgm", "nvml"] if self.dcgm_url else ["nvml"],
                 "nvml": ["nvml"], "dcgm": ["dcgm"]}[self.source_name]
        for name in order:
            try:
                if name == "dcgm":
                    match = label_patterns(getattr(self.plan.telemetry, "dcgm_labels", {}) or {}, variant)
                    return DcgmSource(self.dcgm_url, gpus, fetch=self._fetch, match=match or None), why
                return NvmlSource(gpus, nvml=self._nvml), why
            except TelemetryError as exc:
                why.append(str(exc))
        return None, why

    def sampler(self, variant: str, url: str, argv: list[str], env: dict[str, str],
                headers: Optional[dict[str, str]] = None) -> GpuSampler:
        """A sampler for one variant's server (inactive when no source can be had; said once)."""
        try:
            source, why = self._open_source(variant, url, argv, env, headers)
        except Exception as exc:  # noqa: BLE001 - telemetry never stops a run
            source, why = None, [f"{type(exc).__name__}: {exc}"]
        entry: dict[str, Any] = {"source": source.name if source else None}
        if source is None:
            if self.source_name != "none":
                self._warn("none", "no GPU telemetry: " + "; ".join(why or ["no source"])
                           + " (energy per token is not reported; set telemetry.dcgm_url or install "
                             "nvidia-ml-py on the GPU host)")
        else:
            self._open.append(source)
            entry["devices"] = source.devices()
            if source.name == "modelled":
                self._warn("modelled", "GPU power is the emulator's model, not a measurement")
            elif why:
                self._warn("fallback", "GPU telemetry fell back to " + source.name + ": " + "; ".join(why))
        self._section()["variants"][variant] = entry
        return GpuSampler(source, variant, self.interval_s)

    def finish(self, sampler: GpuSampler) -> None:
        """Record what the source learned while sampling (devices, unsupported fields)."""
        if sampler.source is None:
            return
        entry = self._section()["variants"].setdefault(sampler.variant, {})
        entry["devices"] = sampler.source.devices()
        unsupported = sorted(getattr(sampler.source, "unsupported", set()))
        if unsupported:
            entry["unsupported"] = unsupported

    def close(self) -> None:
        for s in self._open:
            try:
                s.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._open.clear()
