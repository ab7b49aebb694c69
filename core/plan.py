"""The experiment plan: one YAML file validated into typed objects before anything starts.

A wrong plan must fail before a single server is launched, naming the file, the key path, the
line and what was expected, because a load test that dies an hour in on a typo wastes GPU hours.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core import defaults
from core.backends import backend
from core.errors import RidgelineError
from core.levels import Level, profile
from core.plan_quality import QualitySpec
from core.scenario_builtins import apply_builtin

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


class PlanError(RidgelineError, ValueError):
    """A plan that cannot be run; the message names the file, the key path and the reason."""

    def __init__(self, source: str, problems: list[tuple[str, Optional[int], str]]):
        self.source = source
        self.problems = problems
        lines = [f"invalid plan {source}:"]
        for path, line, why in problems:
            where = f"{path}" + (f" (line {line})" if line else "")
            lines.append(f"  - {where}: {why}")
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


# --- traffic ---------------------------------------------------------------------------------

class LengthSpec(_Strict):
    """A token-length distribution; `dataset` takes lengths from the scenario's dataset."""

    dist: Literal["fixed", "uniform", "normal", "lognormal", "dataset"] = "fixed"
    value: Optional[int] = Field(default=None, ge=1, description="fixed length")
    min: Optional[int] = Field(default=None, ge=1)
    max: Optional[int] = Field(default=None, ge=1)
    mean: Optional[float] = Field(default=None, gt=0)
    std: Optional[float] = Field(default=None, ge=0)
    sigma: Optional[float] = Field(default=None, gt=0, description="log-normal shape")

    @model_validator(mode="after")
    def _complete(self) -> "LengthSpec":
        need = {
            "fixed": ["value"],
            "uniform": ["min", "max"],
            "normal": ["mean", "std"],
            "lognormal": ["mean", "sigma"],
            "dataset": [],
        }[self.dist]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"dist '{self.dist}' needs {', '.join(missing)}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self

    @classmethod
    def fixed(cls, n: int) -> "LengthSpec":
        return cls(dist="fixed", value=n)


def _coerce_length(v: Any) -> Any:
    return {"dist": "fixed", "value": v} if isinstance(v, int) and not isinstance(v, bool) else v


class SharedPrefixSpec(_Strict):
    """N system prompts x M questions, to exercise prefix caching."""

    prefixes: int = Field(default=4, ge=1)
    prefix_tokens: int = Field(default=256, ge=1)
    questions: Optional[int] = Field(default=None, ge=1, description="questions per prefix (none: a new one each request)")


class ScenarioSpec(_Strict):
    """What the traffic looks like; `builtin` names one of `ridgeline scenarios list`."""

    builtin: Optional[str] = None
    api: Literal["completions", "chat"] = "completions"
    prompt_tokens: LengthSpec = Field(default_factory=lambda: LengthSpec.fixed(512))
    output_tokens: LengthSpec = Field(default_factory=lambda: LengthSpec.fixed(256))
    ignore_eos: bool = True
    min_tokens: bool = Field(default=False, description="also send min_tokens = max_tokens (for servers that do "
                                                        "not honour ignore_eos; vLLM adds a logits processor for it)")
    dataset: Optional[str] = Field(default=None, description="ShareGPT JSON/JSONL or prompts JSONL")
    dataset_format: Literal["auto", "sharegpt", "prompts"] = "auto"
    tokenizer: Optional[str] = Field(default=None, description="Hugging Face tokenizer directory")
    shared_prefix: Optional[SharedPrefixSpec] = None
    turns: int = Field(default=1, ge=1, description="multi-turn chat sessions resend the history")
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    extra_body: dict[str, Any] = Field(default_factory=dict)

    _len = field_validator("prompt_tokens", "output_tokens", mode="before")(_coerce_length)

    @property
    def expects_prefix_hits(self) -> bool:
        """Whether this traffic reuses prefixes on purpose (shared system prompts, resent chat history);
        otherwise a prefix-cache hit is a leak between requests that the numbers should not contain."""
        return self.shared_prefix is not None or self.turns > 1

    @model_validator(mode="before")
    @classmethod
    def _builtin(cls, data: Any) -> Any:
        """A built-in scenario's defaults, under the keys the plan gives."""
        if isinstance(data, dict) and data.get("builtin") is not None:
            return apply_builtin(data)
        return data

    @model_validator(mode="after")
    def _coherent(self) -> "ScenarioSpec":
        if self.turns > 1 and self.api != "chat":
            raise ValueError("turns > 1 (multi-turn sessions) needs api: chat")
        if not self.dataset and "dataset" in (self.prompt_tokens.dist, self.output_tokens.dist):
            raise ValueError("dist 'dataset' needs scenario.dataset (a ShareGPT or prompts file)")
        if self.dataset and self.shared_prefix is not None:
            raise ValueError("shared_prefix and dataset cannot be combined")
        return self


# --- sweep -----------------------------------------------------------------------------------

def _at(value: Any, level: int) -> Any:
    """A per-step setting at one level: the list's entry, or the one value for all."""
    return value[level] if isinstance(value, list) else value


class SweepSpec(_Strict):
    """Which load levels to run and how long each step lasts."""

    mode: str = Field(default="concurrency", description="the load profile (core.levels): concurrency | rate")
    concurrency: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128, 256])
    rates: list[float] = Field(default_factory=list, description="requests/s per step (mode: rate)")
    arrival: Literal["constant", "poisson", "gamma"] = "poisson"
    burstiness: float = Field(default=1.0, gt=0, description="gamma shape; <1 is burstier")
    max_concurrency: Optional[int] = Field(default=None, ge=1, description="cap for open loop")
    warmup_s: Union[float, list[float]] = Field(default=2.0, description="excluded from the figures: one for "
                                                                          "every step, or one per level")
    duration_s: Optional[Union[float, list[Optional[float]]]] = Field(
        default=10.0, description="measured window length: one for every step, or one per level")
    requests: Optional[Union[int, list[Optional[int]]]] = Field(
        default=None, description="measured window by count: one for every step, or one per level (null: that "
                                  "level's window is duration_s)")
    drain_s: Union[float, list[float]] = Field(default=60.0, description="time to let in-flight requests finish: "
                                                                          "one for every step, or one per level")
    ramp_s: float = Field(default=0.0, ge=0, description="spread user starts over this time")
    repeats: int = Field(default=1, ge=1)
    variants_at_once: Union[int, Literal["auto"]] = Field(
        default=1, description="variants swept side by side, each against its own server (auto: as many as the "
                               "host's CPUs carry for the emulator, else one; see loadtest/lanes.py)")

    @field_validator("variants_at_once")
    @classmethod
    def _at_once(cls, v: Union[int, str]) -> Union[int, str]:
        if isinstance(v, int) and v < 1:
            raise ValueError("variants_at_once is at least 1 (or auto)")
        return v

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        profile(v)  # ProfileError (a ValueError) names the known modes
        return v

    @field_validator("concurrency")
    @classmethod
    def _conc(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise ValueError("every concurrency must be at least 1")
        if len(set(v)) != len(v):
            raise ValueError("concurrency steps repeat")
        return v

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if any(r <= 0 for r in v):
            raise ValueError("every rate must be above 0 requests/s")
        return v

    @field_validator("requests")
    @classmethod
    def _counts(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("an empty list of request counts; give one count per level, or one for all")
        if any(n is not None and n < 1 for n in (v if isinstance(v, list) else [v])):
            raise ValueError("every request count must be at least 1")
        return v

    @field_validator("warmup_s", "duration_s", "drain_s")
    @classmethod
    def _times(cls, v: Any, info: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("an empty list; give one value per level, or one for all")
        for x in (v if isinstance(v, list) else [v]):
            if x is None:
                continue
            if info.field_name in ("warmup_s", "drain_s") and x < 0:
                raise ValueError(f"{info.field_name} cannot be negative")
            if info.field_name == "duration_s" and x <= 0:
                raise ValueError("a measured window must be longer than 0 s")
        return v

    @model_validator(mode="after")
    def _steps(self) -> "SweepSpec":
        if not self.levels():
            raise ValueError(profile(self.mode).no_levels)
        n = len(self.levels())
        for key in ("warmup_s", "duration_s", "requests", "drain_s"):
            v = getattr(self, key)
            if isinstance(v, list) and len(v) != n:
                raise ValueError(f"{key} has {len(v)} values for {n} levels; give one per level, or one for all")
        missing = [i for i in range(n) if self.requests_at(i) is None and self.duration_at(i) is None]
        if missing:
            raise ValueError("give duration_s or requests for the measured window"
                             + (f" (missing at levels {', '.join(str(i + 1) for i in missing)})" if n > 1 else ""))
        return self

    def requests_at(self, level: int) -> Optional[int]:
        """The measured window's request count at the level with this position (None: a timed window)."""
        return _at(self.requests, level)

    def duration_at(self, level: int) -> Optional[float]:
        return _at(self.duration_s, level)

    def warmup_at(self, level: int) -> float:
        return float(_at(self.warmup_s, level) or 0.0)

    def drain_at(self, level: int) -> float:
        return float(_at(self.drain_s, level) or 0.0)

    def levels(self) -> list[float]:
        """The level values in plan order (the profile's own list: concurrency or rates)."""
        return [lv.value for lv in self.load_levels()]

    def load_levels(self) -> list[Level]:
        """The levels in plan order, as typed values (core.levels)."""
        return profile(self.mode).from_sweep(self)


class SLOSpec(_Strict):
    """Per-request service levels; goodput counts requests meeting all of them."""

    ttft_s: Optional[float] = Field(default=defaults.DEFAULT_TTFT_S, gt=0)
    itl_s: Optional[float] = Field(default=defaults.DEFAULT_ITL_S, gt=0, description="per-request p99 inter-token gap")
    tpot_s: Optional[float] = Field(default=defaults.DEFAULT_TPOT_S, gt=0)
    e2e_s: Optional[float] = Field(default=defaults.DEFAULT_E2E_S, gt=0)


class TimeoutSpec(_Strict):
    connect_s: float = Field(default=10.0, gt=0)
    first_token_s: float = Field(default=300.0, gt=0)
    total_s: float = Field(default=900.0, gt=0)


# --- servers ---------------------------------------------------------------------------------

class VariantSpec(_Strict):
    """One deployment variant. `preset` picks flags from the registry (fp16, bf16, awq, gptq, fp8kv...)."""

    name: str
    preset: Optional[str] = None
    model: Optional[str] = Field(default=None, description="checkpoint (path or hub id) for vllm")
    quantization: Optional[str] = None
    kv_cache_dtype: Optional[str] = None
    dtype: Optional[str] = None
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    gpus: Optional[list[int]] = None
    url: Optional[str] = Field(default=None, description="external backend: this variant's base URL")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("names use letters, digits and _ . + - (at most 64), starting with a letter or digit")
        return v


class CpuSplit(_Strict):
    """Which CPUs the engine spins on and which answer the requests (deploy/cpu_split.py says why)."""

    engine: list[int] = Field(min_length=1, description="the CPU engine's worker and engine-core processes")
    frontend: list[int] = Field(min_length=1, description="the API server, ridgeline's client and the cross-check")

    @model_validator(mode="after")
    def _disjoint(self) -> "CpuSplit":
        bad = [c for c in self.engine + self.frontend if c < 0]
        if bad:
            raise ValueError(f"CPU numbers must be 0 or more, got {bad}")
        both = sorted(set(self.engine) & set(self.frontend))
        if both:
            raise ValueError(f"CPU(s) {both} are in both engine and frontend: the split must not overlap")
        return self


class ServerSpec(_Strict):
    """How real vLLM servers are started (backend: vllm)."""

    program: list[str] = Field(default_factory=lambda: ["python", "-m", "vllm.entrypoints.openai.api_server"])
    host: str = "127.0.0.1"
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    placement: Literal["sequential", "parallel"] = "sequential"
    startup_timeout_s: float = Field(default=900.0, gt=0)
    on_failure: Literal["skip", "restart"] = "skip"
    load_format: Optional[str] = None
    # a start that fails is tried again this many times, after a pause, before on_failure applies
    # (GPU hosts see starts die for a passing reason: a library that fails to load once)
    start_retries: int = Field(default=1, ge=0, le=10)
    start_retry_pause_s: float = Field(default=30.0, ge=0)
    # --enable-mfu-metrics fills vLLM's FLOP and byte counters; auto: where the installed vLLM accepts it
    mfu_metrics: Literal["auto", "on", "off"] = "auto"
    # vLLM's prefix cache: on (its default), off (--no-enable-prefix-caching), or reset before every step
    # and cross-check level (POST /reset_prefix_cache, development mode) for a strict A/B
    prefix_cache: Literal["on", "off", "reset"] = "on"
    # a CPU engine's cores apart from the API server's and the client's (None: wherever the kernel puts them)
    cpus: Optional[CpuSplit] = None


class ScrapeSpec(_Strict):
    """Where server metrics come from, and whether the client serves its own (docs/metrics.md)."""

    interval_s: float = Field(default=1.0, gt=0)
    max_server_share: float = Field(default=0.05, ge=0, le=1,
                                    description="scrape less often than interval_s when needed so that serving "
                                                "/metrics takes at most this share of the server's time (0: never)")
    timeout_s: float = Field(default=5.0, gt=0, description="a scrape (or Prometheus query) slower than this is a gap")
    prometheus_url: Optional[str] = Field(default=None, description="read series from this Prometheus instead")
    prometheus_labels: dict[str, str] = Field(
        default_factory=dict,
        description="label matchers picking a variant's server in Prometheus; values may hold {variant} and "
                    "{instance}; empty: instance=host:port of the variant's URL")
    direct: bool = Field(default=True, description="also poll /metrics directly; with prometheus_url, the "
                                                   "fallback when Prometheus has nothing for a step")
    exporter_port: Optional[int] = Field(default=None, ge=0, le=65535,
                                         description="serve the client's metrics on this port (0: any free one)")
    exporter_host: str = Field(default="127.0.0.1", description="address the client's metrics are served on")
    targets_dir: Optional[str] = Field(default=None, description="publish the live servers and the exporter here "
                                                                 "for Prometheus's file discovery")

    @field_validator("prometheus_url")
    @classmethod
    def _prom_url(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"prometheus_url {v!r} is not an http(s) URL")
        return v

    @field_validator("prometheus_labels")
    @classmethod
    def _prom_labels(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", k)]
        if bad:
            raise ValueError(f"not Prometheus label names: {', '.join(bad)}")
        return v

    @model_validator(mode="after")
    def _source(self) -> "ScrapeSpec":
        if not self.direct and self.prometheus_url is None:
            raise ValueError("direct: false needs a prometheus_url, or no server metrics would be kept")
        return self


class CrossCheckSpec(_Strict):
    """`vllm bench serve` against the same live server after a variant's sweep (docs/crosscheck.md).

    A second, independent client measuring the same server and traffic: when its throughput and
    medians agree with ridgeline's, the numbers belong to the server, not to either client.
    """

    python: Optional[str] = Field(default=None, description="interpreter that imports vllm; default: the "
                                                              "server program's, else python3")
    variants: Optional[list[str]] = Field(default=None, description="which variants (default: all)")
    concurrency: list[int] = Field(default_factory=lambda: [1, 16, 256], min_length=1)
    num_prompts: Optional[Union[int, list[int]]] = Field(
        default=None, description="requests per level: one for all, or one per level (default: max(12, 4c))")
    timeout_s: float = Field(default=900.0, gt=0, description="for all levels of one variant together")
    interleave: bool = Field(default=False, description="run each level right after ridgeline's step at that "
                                                        "concurrency (the two read the server seconds apart, "
                                                        "not minutes: a host whose speed drifts still compares)")
    retries: int = Field(default=1, ge=0, le=10, description="new bench processes for levels whose process died "
                                                             "before reporting them (e.g. a failed import)")
    retry_pause_s: float = Field(default=30.0, ge=0, description="wait before each such retry")

    @field_validator("concurrency")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise ValueError("every concurrency must be at least 1")
        return v

    @model_validator(mode="after")
    def _prompts(self) -> "CrossCheckSpec":
        n = self.num_prompts
        if isinstance(n, list) and len(n) != len(self.concurrency):
            raise ValueError(f"num_prompts has {len(n)} counts for {len(self.concurrency)} levels")
        if any(x < 1 for x in (n if isinstance(n, list) else [n] if n is not None else [])):
            raise ValueError("every num_prompts must be at least 1")
        return self

    def prompts_at(self, i: int) -> int:
        n = _at(self.num_prompts, i)
        return n if n is not None else max(12, 4 * self.concurrency[i])


class TelemetrySpec(_Strict):
    """Where GPU power, clocks and throttling come from during each step (loadtest.telemetry)."""

    source: Literal["auto", "nvml", "dcgm", "none"] = Field(
        default="auto", description="auto: the emulator's model, else the DCGM exporter if dcgm_url, else NVML")
    dcgm_url: Optional[str] = Field(default=None, description="a DCGM exporter's /metrics URL")
    dcgm_labels: dict[str, str] = Field(
        default_factory=dict, description="keep DCGM samples whose labels fully match these regular expressions; "
                                          "{variant} and {k8s_name} stand for the variant's names")
    interval_s: float = Field(default=1.0, gt=0)

    @field_validator("dcgm_labels")
    @classmethod
    def _patterns(cls, v: dict[str, str]) -> dict[str, str]:
        for label, pattern in v.items():
            try:
                re.compile(pattern.replace("{variant}", "x").replace("{k8s_name}", "x"))
            except re.error as exc:
                raise ValueError(f"dcgm_labels.{label}: {pattern!r} is not a regular expression ({exc})") from None
        return v

    @field_validator("dcgm_url")
    @classmethod
    def _url(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        u = v.strip()
        if "://" not in u:
            u = "http://" + u
        if not re.match(r"^https?://[^\s/]+", u):
            raise ValueError(f"dcgm_url {v!r} is not an http(s) URL")
        return u + "/metrics" if u.count("/") == 2 else u

    @model_validator(mode="after")
    def _need_url(self) -> "TelemetrySpec":
        if self.source == "dcgm" and not self.dcgm_url:
            raise ValueError("source dcgm needs dcgm_url (the exporter's /metrics, usually port 9400)")
        return self


K8S_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _k8s_name(v: Optional[str]) -> Optional[str]:
    if v is not None and not K8S_NAME_RE.match(v):
        raise ValueError(f"{v!r} is not a Kubernetes name (lower-case letters, digits and -, at most 63)")
    return v


class ModelCacheSpec(_Strict):
    """Where vLLM pods keep downloaded checkpoints, so a restart does not download them again."""

    kind: Literal["pvc", "hostPath", "emptyDir"] = "pvc"
    claim_name: str = "ridgeline-model-cache"
    create: bool = Field(default=True, description="render the PersistentVolumeClaim (false: it exists)")
    size: str = "200Gi"
    storage_class: Optional[str] = None
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"] = "ReadWriteMany"
    host_path: Optional[str] = None
    mount_path: str = "/root/.cache/huggingface"

    _names = field_validator("claim_name")(_k8s_name)

    @model_validator(mode="after")
    def _host(self) -> "ModelCacheSpec":
        if self.kind == "hostPath" and not (self.host_path and self.host_path.startswith("/")):
            raise ValueError("kind hostPath needs host_path, an absolute path on the node")
        return self


class KubernetesSpec(_Strict):
    """What `ridgeline deploy render --target kubernetes` writes besides the engine arguments (from the plan)."""

    namespace: str = "ridgeline"
    vllm_image: Optional[str] = Field(default=None, description="default vllm/vllm-openai:v<vllm_version>")
    vllm_version: str = "0.11.0"
    ridgeline_image: str = Field(default="ridgeline:0.1.0", description="image with ridgeline and its scenarios")
    ridgeline_workdir: str = Field(default="/app", description="the ridgeline checkout inside that image")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    locust_workers: int = Field(default=2, ge=0, description="Locust worker replicas")
    port: int = Field(default=8000, ge=1, le=65535)
    gpu_resource: str = "nvidia.com/gpu"
    model_cache: ModelCacheSpec = Field(default_factory=ModelCacheSpec)
    results_claim: str = "ridgeline-results"
    results_size: str = "10Gi"
    storage_class: Optional[str] = Field(default=None, description="for the results claim")
    api_key_secret: str = Field(default="ridgeline-api-key", description="Secret holding the API key")
    api_key_secret_key: str = "api-key"
    hf_token_secret: Optional[str] = Field(default=None, description="Secret with key 'token' for HF_TOKEN")
    shm_size: str = Field(default="16Gi", description="/dev/shm for tensor-parallel workers")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    resources: dict[str, dict[str, str]] = Field(default_factory=dict, description="extra vLLM container requests/limits")
    scrape_interval: str = "15s"

    _names = field_validator("namespace", "results_claim", "api_key_secret", "hf_token_secret")(_k8s_name)


class Plan(_Strict):
    """A whole experiment."""

    name: str = "run"
    backend: str = Field(default="emulator", description="emulator | vllm | external (core.backends)")
    model: str = Field(default=defaults.DEFAULT_MODEL, description="catalogue name or a directory with config.json")
    served_model_name: Optional[str] = None
    gpu: str = Field(default=defaults.DEFAULT_GPU, description="GPU catalogue name (roofline and emulator)")
    gpu_overrides: dict[str, float] = Field(default_factory=dict)
    variants: list[VariantSpec]
    baseline: Optional[str] = None
    scenario: ScenarioSpec = Field(default_factory=ScenarioSpec)
    sweep: SweepSpec = Field(default_factory=SweepSpec)
    slo: SLOSpec = Field(default_factory=SLOSpec)
    thresholds: list[float] = Field(default_factory=lambda: list(defaults.DEFAULT_THRESHOLDS))
    timeouts: TimeoutSpec = Field(default_factory=TimeoutSpec)
    server: ServerSpec = Field(default_factory=ServerSpec)
    scrape: ScrapeSpec = Field(default_factory=ScrapeSpec)
    api_key_env: Optional[str] = Field(default=None, description="environment variable holding the API key")
    api_key_file: Optional[str] = None
    output_dir: str = "results"
    workers: int = Field(default=0, ge=0, description="Locust worker processes (0: in-process)")
    emulator: dict[str, Any] = Field(default_factory=dict, description="emulator overrides")
    telemetry: TelemetrySpec = Field(default_factory=TelemetrySpec)
    crosscheck: Optional[CrossCheckSpec] = Field(default=None, description="vllm bench serve beside the sweep")
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)
    quality: Optional[QualitySpec] = Field(default=None, description="eval sets asked of each live server")

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        backend(v)  # BackendError (a ValueError) names the known backends
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("run names use letters, digits and _ . + - and cannot hold a path")
        return v

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[VariantSpec]) -> list[VariantSpec]:
        if not v:
            raise ValueError("at least one variant is needed")
        names = [x.name for x in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variant names repeat: {', '.join(dup)}")
        return v

    @field_validator("thresholds")
    @classmethod
    def _thr(cls, v: list[float]) -> list[float]:
        if any(t <= 0 for t in v):
            raise ValueError("thresholds are speedups above 0")
        return sorted(v, reverse=True)

    @model_validator(mode="after")
    def _baseline(self) -> "Plan":
        names = [x.name for x in self.variants]
        if self.baseline is None:
            self.__dict__["baseline"] = names[0]
        elif self.baseline not in names:
            raise ValueError(f"baseline '{self.baseline}' is not one of the variants ({', '.join(names)})")
        if backend(self.backend).needs_url:
            missing = [x.name for x in self.variants if not x.url]
            if missing:
                raise ValueError(f"backend {self.backend} needs a url for every variant "
                                 f"(missing: {', '.join(missing)})")
        if self.quality is not None:
            self.quality.check_names(names, self.baseline)
        at_once = self.sweep.variants_at_once
        if isinstance(at_once, int) and at_once > 1:
            if self.backend == "vllm" and self.server.placement != "parallel":
                raise ValueError("sweep.variants_at_once above 1 needs server.placement: parallel with backend vllm "
                                 "(sequential variants share one GPU)")
            if self.scrape.exporter_port is not None or self.scrape.targets_dir is not None:
                raise ValueError("sweep.variants_at_once above 1 cannot be combined with scrape.exporter_port or "
                                 "scrape.targets_dir (they follow one variant at a time)")
        cc = self.crosscheck
        if cc is not None:
            unknown = [v for v in cc.variants or [] if v not in names]
            if unknown:
                raise ValueError(f"crosscheck.variants names {', '.join(unknown)}, not among the variants "
                                 f"({', '.join(names)})")
            sc = self.scenario
            if (sc.dataset or sc.shared_prefix is not None or sc.turns > 1 or sc.prompt_tokens.dist != "fixed"
                    or sc.output_tokens.dist != "fixed"):
                raise ValueError("crosscheck replays fixed prompt and output lengths of random text; the scenario "
                                 "must have fixed prompt_tokens and output_tokens, no dataset, shared prefix or turns")
            if not sc.tokenizer:
                raise ValueError("crosscheck needs scenario.tokenizer: vllm bench serve builds its prompts with it")
            if cc.interleave and isinstance(self.sweep.variants_at_once, int) and self.sweep.variants_at_once > 1:
                raise ValueError("crosscheck.interleave reads each server twice seconds apart; with "
                                 f"sweep.variants_at_once {self.sweep.variants_at_once} the other lanes load the "
                                 "host between the two: set variants_at_once to 1, or leave interleave off")
        return self

    def variant(self, name: str) -> VariantSpec:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=False), sort_keys=False)


# --- loading with errors that point at the file ----------------------------------------------

def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path of a YAML document to its 1-based line, for error messages."""
    index: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return index

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = path + (str(k.value),)
                index[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                p = path + (str(i),)
                index[p] = v.start_mark.line + 1
                walk(v, p)

    if root is not None:
        walk(root, ())
    return index


_TAG_PREFIXES = ("literal[", "list[", "dict[", "function-", "tagged-union[", "union[", "nullable[", "json-or-python[",
                 "lax-or-strict[", "default[", "constrained-")
_TAG_NAMES = {"int", "float", "str", "bool", "bytes", "none", "is-instance"}


def _key_path(raw: tuple[Any, ...], extra: bool) -> tuple[str, ...]:
    """The keys of an error's location: pydantic puts union and validator tags among them; drop those.

    The last element of an unknown-key error is the user's own key, whatever it looks like
    (`interval_sec` must not vanish because it starts like the tag `int`).
    """
    parts = [str(x) for x in raw]
    last = parts.pop() if extra and parts else None
    keep = tuple(x for x in parts if x not in _TAG_NAMES and not x.startswith(_TAG_PREFIXES))
    return keep + ((last,) if last is not None else ())


def _problems(err: ValidationError, lines: dict[tuple[str, ...], int]) -> list[tuple[str, Optional[int], str]]:
    out = []
    for e in err.errors():
        loc = _key_path(tuple(e["loc"]), e["type"] == "extra_forbidden")
        line = None
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1] if loc else ''}'" + _suggest(loc, e)
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append((".".join(loc) or "(top)", line, msg))
    return out


def _suggest(loc: tuple[str, ...], e: dict) -> str:
    import difflib

    if not loc:
        return ""
    model: Any = Plan
    for part in loc[:-1]:
        if part.isdigit():
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        ann = field.annotation
        for cand in _models_in(ann):
            model = cand
            break
        else:
            return ""
    known = list(getattr(model, "model_fields", {}).keys())
    close = difflib.get_close_matches(loc[-1], known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (expected one of: {', '.join(known)})"


def _models_in(ann: Any) -> list[type]:
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type] = []
    for a in typing.get_args(ann):
        out.extend(_models_in(a))
    return out


def parse_plan(text: str, source: str = "<plan>") -> Plan:
    """Validate a plan from YAML text; raise PlanError naming source, key path and line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise PlanError(source, [("(yaml)", line, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if data is None:
        raise PlanError(source, [("(top)", None, "the plan is empty")])
    if not isinstance(data, dict):
        raise PlanError(source, [("(top)", 1, f"expected a mapping of keys, got {type(data).__name__}")])
    try:
        plan = Plan.model_validate(data)
    except ValidationError as err:
        raise PlanError(source, _problems(err, _line_index(text))) from None
    bad = plan.quality.eval_file_problems() if plan.quality is not None else []
    if bad:  # the eval files are read now, before anything starts
        lines = _line_index(text)
        raise PlanError(source, [(key, lines.get(tuple(key.split("."))), why) for key, why in bad])
    return plan


def load_plan(path: Union[str, Path]) -> Plan:
    """Read and validate a plan file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(str(p), [("(file)", None, "no such file")]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise PlanError(str(p), [("(file)", None, f"cannot be read: {exc}")]) from None
    return parse_plan(text, str(p))
