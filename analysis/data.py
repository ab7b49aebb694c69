"""What the analysis needs from a results directory: the plan's settings, the steps and their files.

The manifest's plan is read leniently: a results directory written by an older or newer version
of the plan schema (or edited by hand) must still be analysable, so a plan that no longer validates
falls back to the few settings the analysis uses, with the schema's defaults, and a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from core.hardware.variants import resolve
from core.levels import Level, from_fields, mode_of, profile
from core.plan import Plan, SLOSpec
from core.records import StepInfo
from core.results import ResultsError, RunDir
from core.defaults import (
    DEFAULT_E2E_S, DEFAULT_GPU, DEFAULT_ITL_S, DEFAULT_MODEL, DEFAULT_THRESHOLDS, DEFAULT_TPOT_S, DEFAULT_TTFT_S,
)
from core.telemetry import telemetry_path

_STEP_FILE = re.compile(r"^step-(\d+)\.parquet$")


class AnalysisError(ResultsError):
    """A results directory the analysis cannot make sense of; the message says what and where."""


@dataclass(frozen=True)
class SLO:
    """Per-request service levels (None: not checked)."""

    ttft_s: Optional[float] = DEFAULT_TTFT_S
    itl_s: Optional[float] = DEFAULT_ITL_S
    tpot_s: Optional[float] = DEFAULT_TPOT_S
    e2e_s: Optional[float] = DEFAULT_E2E_S

    def describe(self) -> str:
        parts = []
        if self.ttft_s is not None:
            parts.append(f"TTFT <= {self.ttft_s:g} s")
        if self.itl_s is not None:
            parts.append(f"p99 inter-token gap <= {self.itl_s * 1000:g} ms")
        if self.tpot_s is not None:
            parts.append(f"TPOT <= {self.tpot_s * 1000:g} ms")
        if self.e2e_s is not None:
            parts.append(f"end-to-end <= {self.e2e_s:g} s")
        return ", ".join(parts) or "none"


@dataclass
class VariantInfo:
    """A variant as the manifest recorded it: what was asked for and what was verified."""

    name: str
    weights: str = "fp16"
    kv_cache_dtype: str = "auto"
    argv: list[str] = field(default_factory=list)
    url: Optional[str] = None
    served: Optional[dict[str, Any]] = None
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def served_verdict(self) -> Optional[str]:
        return (self.served or {}).get("verdict") if isinstance(self.served, dict) else None

    @property
    def served_reasons(self) -> list[str]:
        reasons = (self.served or {}).get("reasons") if isinstance(self.served, dict) else None
        return [str(r) for r in reasons] if isinstance(reasons, list) else []


@dataclass
class RunInfo:
    """The manifest, read once, with the plan settings the analysis uses."""

    run: RunDir
    manifest: dict[str, Any]
    name: str
    backend: str
    baseline: str
    variants: list[str]
    mode: str  # concurrency | rate
    slo: SLO
    thresholds: list[float]
    model: str
    gpu: str
    gpu_overrides: dict[str, float]
    prompt_tokens_hint: Optional[float]
    output_tokens_hint: Optional[float]
    steps: list[StepInfo]
    variant_info: dict[str, VariantInfo]
    plan: Optional[Plan] = None
    warnings: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def profile(self) -> type[Level]:
        """The load profile of the sweep (core.levels): its level's name, axis label, record columns."""
        return profile(self.mode)

    def level_name(self) -> str:
        return self.profile.word

    def request_file(self, variant: str, step: int) -> Optional[Path]:
        try:
            p = self.run.requests_path(variant, step)
        except ResultsError:
            return None
        return p if p.exists() else None

    def metrics_file(self, variant: str, step: int) -> Optional[Path]:
        try:
            p = self.run.metrics_path(variant, step)
        except ResultsError:
            return None
        return p if p.exists() else None

    def telemetry_file(self, variant: str, step: int) -> Optional[Path]:
        try:
            p = telemetry_path(self.run, variant, step)
        except ResultsError:
            return None
        return p if p.exists() else None


def _num(d: dict, key: str, default: Any) -> Any:
    v = d.get(key, default) if isinstance(d, dict) else default
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _length_hint(spec: Any) -> Optional[float]:
    """A typical length from a plan's length distribution (fixed value, mean, or mid-range)."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return float(spec)
    if not isinstance(spec, dict):
        return None
    for key in ("value", "mean"):
        if isinstance(spec.get(key), (int, float)):
            return float(spec[key])
    if isinstance(spec.get("min"), (int, float)) and isinstance(spec.get("max"), (int, float)):
        return (spec["min"] + spec["max"]) / 2.0
    return None


def _variant_info(name: str, entry: Any, plan: Optional[Plan]) -> VariantInfo:
    info = VariantInfo(name=name)
    if isinstance(entry, dict):
        argv = entry.get("argv")
        info.argv = [str(a) for a in argv] if isinstance(argv, list) else []
        info.url = str(entry["url"]) if entry.get("url") is not None else None
        info.served = entry.get("served") if isinstance(entry.get("served"), dict) else None
        info.env = entry.get("env") if isinstance(entry.get("env"), dict) else {}
        v = entry.get("variant")
        if isinstance(v, dict):
            info.weights = str(v.get("weights") or info.weights)
            info.kv_cache_dtype = str(v.get("kv_cache_dtype") or info.kv_cache_dtype)
            return info
    if plan is not None:  # no record of the resolved variant: resolve the plan's again
        try:
            r = resolve(plan.variant(name))
            info.weights, info.kv_cache_dtype = r.weights, r.kv_cache_dtype
        except (KeyError, ValueError):
            pass
    return info


def load_run(run_dir: Union[str, Path, RunDir]) -> RunInfo:
    """Read a results directory's manifest into the settings the analysis needs."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if not run.path.is_dir():
        raise AnalysisError(f"{run.path}: no such results directory")
    manifest = run.read_manifest()
    if not isinstance(manifest, dict):
        raise AnalysisError(f"{run.manifest_path}: expected a JSON object, got {type(manifest).__name__}")
    warnings: list[str] = []
    raw = manifest.get("plan") if isinstance(manifest.get("plan"), dict) else {}
    plan: Optional[Plan] = None
    if raw:
        try:
            plan = Plan.model_validate(raw)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            warnings.append(f"the manifest's plan does not validate against this version's schema ({first}); "
                            f"its settings are read as they are")
    else:
        warnings.append(f"{run.manifest_path} has no plan: defaults used for SLOs and thresholds")

    try:
        steps = [StepInfo.from_dict(s) for s in manifest.get("steps", []) if isinstance(s, dict)]
    except TypeError as exc:
        raise AnalysisError(f"{run.manifest_path}: a step entry cannot be read ({exc})") from None
    steps = _with_unlisted_steps(run, steps, warnings)

    raw_variants = [v.get("name") for v in raw.get("variants", []) if isinstance(v, dict) and v.get("name")]
    servers = manifest.get("servers") if isinstance(manifest.get("servers"), dict) else {}
    names: list[str] = []
    for n in [*raw_variants, *servers.keys(), *(s.variant for s in steps)]:
        if n not in names:
            names.append(str(n))
    if not names:
        raise AnalysisError(f"{run.path}: the manifest names no variants and no steps were recorded")

    baseline = plan.baseline if plan is not None else raw.get("baseline")
    if baseline not in names:
        if baseline is not None:
            warnings.append(f"baseline {baseline!r} has no results; {names[0]!r} is the baseline instead")
        baseline = names[0]

    sweep = raw.get("sweep") if isinstance(raw.get("sweep"), dict) else {}
    mode = mode_of(sweep.get("mode"), [from_fields(s.concurrency, s.rate) for s in steps])

    slo_raw = raw.get("slo") if isinstance(raw.get("slo"), dict) else {}
    d = SLOSpec()
    slo = SLO(ttft_s=_num(slo_raw, "ttft_s", d.ttft_s), itl_s=_num(slo_raw, "itl_s", d.itl_s),
              tpot_s=_num(slo_raw, "tpot_s", d.tpot_s), e2e_s=_num(slo_raw, "e2e_s", d.e2e_s))
    thr_raw = raw.get("thresholds", list(DEFAULT_THRESHOLDS))
    try:
        thresholds = sorted({float(t) for t in thr_raw if float(t) > 0}, reverse=True) or list(DEFAULT_THRESHOLDS)
    except (TypeError, ValueError):
        warnings.append(f"plan thresholds {thr_raw!r} are not numbers; {list(DEFAULT_THRESHOLDS)} used")
        thresholds = list(DEFAULT_THRESHOLDS)

    scenario = raw.get("scenario") if isinstance(raw.get("scenario"), dict) else {}
    overrides = raw.get("gpu_overrides") if isinstance(raw.get("gpu_overrides"), dict) else {}
    variant_info = {n: _variant_info(n, servers.get(n), plan) for n in names}
    backend = str(manifest.get("backend") or raw.get("backend") or "unknown")
    return RunInfo(
        run=run, manifest=manifest, name=str(raw.get("name") or run.path.name), backend=backend,
        baseline=str(baseline), variants=names, mode=mode, slo=slo, thresholds=thresholds,
        model=str(raw.get("model") or DEFAULT_MODEL), gpu=str(raw.get("gpu") or DEFAULT_GPU),
        gpu_overrides=overrides, prompt_tokens_hint=_length_hint(scenario.get("prompt_tokens")),
        output_tokens_hint=_length_hint(scenario.get("output_tokens")), steps=steps,
        variant_info=variant_info, plan=plan, warnings=warnings,
    )


def _with_unlisted_steps(run: RunDir, steps: list[StepInfo], warnings: list[str]) -> list[StepInfo]:
    """Steps whose request file exists but the manifest never listed (a crash before it was saved)."""
    known = {(s.variant, s.step) for s in steps}
    root = run.path / "requests"
    if not root.is_dir():
        return steps
    extra = []
    for p in sorted(root.glob("*/step-*.parquet")):
        m = _STEP_FILE.match(p.name)
        if not m:
            continue
        key = (p.parent.name, int(m.group(1)))
        if key in known:
            continue
        extra.append(StepInfo(variant=key[0], step=key[1], concurrency=None, rate=None, status="unlisted",
                              started=0.0))
    if extra:
        warnings.append(f"{len(extra)} request file(s) have no step in the manifest "
                        f"({', '.join(f'{s.variant} step {s.step}' for s in extra[:5])}); their windows and "
                        f"load levels are taken from the records")
    return steps + extra
