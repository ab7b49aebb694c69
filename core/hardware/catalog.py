"""The hardware and model catalogue: what the roofline and the emulator know about GPUs and models.

GPU figures are datasheet numbers (dense tensor-core peaks, no sparsity) plus `achievable` fractions:
the share of a peak a real kernel reaches. Where the project measured a ceiling (H100 SXM: 3.02 TB/s
device copy, 680 TFLOP/s bf16 and about 1,200 TFLOP/s fp8 matrix product, see
shared/anchors/h100_linear_layer_int4_fp8_vs_bf16.json) the fraction comes from that measurement;
elsewhere it is an assumption, flagged in `measured`.

Model shapes are the published config.json values; `load_model` reads any Llama/Qwen/Mistral-style
config.json so a plan can name a directory instead of a catalogue entry.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Optional, Union

from core.errors import RidgelineError
from core.hardware.formats import FormatError, kv_bytes, weight_format

GiB = 1024**3
MiB = 1024**2

DTYPES = ("bf16", "fp16", "fp8", "int8")


class CatalogError(RidgelineError, ValueError):
    """An unknown GPU or model, a bad override, or an unreadable config.json."""


# ---------------------------------------------------------------------------------------------
# GPUs


@dataclass(frozen=True)
class GPUSpec:
    """One GPU: datasheet peaks, the fraction of them kernels reach, memory and power."""

    name: str
    memory_gb: float  # datasheet capacity
    memory_total_mib: float  # what the driver reports as total (what vLLM sizes the KV cache from)
    mem_bw_tbps: float  # datasheet memory bandwidth, TB/s
    peak_tflops: dict[str, float]  # dense tensor-core peak per dtype (0: no hardware support)
    achievable: dict[str, float]  # fraction of each peak reached: keys mem_bw and the DTYPES
    idle_w: float
    tdp_w: float
    arch: str = ""
    measured: tuple[str, ...] = ()  # which `achievable` fractions were measured, not assumed

    @property
    def memory_bytes(self) -> float:
        return self.memory_total_mib * MiB

    def bandwidth(self, measured_ceilings: bool = True) -> float:
        """Memory bandwidth in bytes/s: the achievable ceiling or the datasheet figure."""
        f = self.achievable.get("mem_bw", 1.0) if measured_ceilings else 1.0
        return self.mem_bw_tbps * 1e12 * f

    def supports(self, dtype: str) -> bool:
        return self.peak_tflops.get(dtype, 0.0) > 0

    def flops(self, dtype: str, measured_ceilings: bool = True) -> float:
        """Tensor-core FLOP/s for `dtype`; a dtype the GPU lacks falls back to fp16 (how kernels run it)."""
        if dtype not in DTYPES:
            raise CatalogError(f"GPU {self.name}: unknown dtype '{dtype}' (known: {', '.join(DTYPES)})")
        if not self.supports(dtype):
            dtype = "fp16"
        f = self.achievable.get(dtype, 1.0) if measured_ceilings else 1.0
        return self.peak_tflops[dtype] * 1e12 * f


def _gpu(name, memory_gb, total_mib, bw, bf16, fp8, int8, idle_w, tdp_w, arch, mem_f, bf16_f, fp8_f,
         measured=()) -> GPUSpec:
    return GPUSpec(
        name=name, memory_gb=memory_gb, memory_total_mib=total_mib, mem_bw_tbps=bw,
        peak_tflops={"bf16": bf16, "fp16": bf16, "fp8": fp8, "int8": int8},
        achievable={"mem_bw": mem_f, "bf16": bf16_f, "fp16": bf16_f, "fp8": fp8_f, "int8": fp8_f},
        idle_w=idle_w, tdp_w=tdp_w, arch=arch, measured=tuple(measured),
    )


# Assumed fractions where nothing was measured: HBM/GDDR copy kernels reach about 88% of the
# datasheet, large bf16 GEMMs about 70%, fp8 GEMMs about 60% (what the H100 measurement shows).
_MEM_F, _BF16_F, _FP8_F = 0.88, 0.70, 0.61
# H100 SXM, measured (anchors/h100_linear_layer_int4_fp8_vs_bf16.json): 3.0205 TB/s copy,
# 679.7 TFLOP/s bf16; fp8 `_scaled_mm` at M=2048 ran 893 GFLOP per decoder layer in 746 us = 1,197 TFLOP/s.
_H100_MEM_F = 3.0205 / 3.35
_H100_BF16_F = 679.7 / 989.4
_H100_FP8_F = 1197.0 / 1978.9

GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in [
        _gpu("h100-sxm", 80, 81559, 3.35, 989.4, 1978.9, 1978.9, 70, 700, "hopper",
             _H100_MEM_F, _H100_BF16_F, _H100_FP8_F, measured=("mem_bw", "bf16", "fp16", "fp8")),
        # same die as the H100 SXM: its measured kernel fractions are assumed to carry over
        _gpu("h200", 141, 143771, 4.8, 989.4, 1978.9, 1978.9, 75, 700, "hopper",
             _H100_MEM_F, _H100_BF16_F, _H100_FP8_F),
        _gpu("a100-80gb", 80, 81920, 2.039, 312.0, 0.0, 624.0, 55, 400, "ampere", _MEM_F, _BF16_F, _FP8_F),
        _gpu("l40s", 48, 46068, 0.864, 362.05, 733.0, 733.0, 35, 350, "ada", _MEM_F, _BF16_F, _FP8_F),
        _gpu("l4", 24, 23034, 0.300, 121.0, 242.5, 242.5, 16, 72, "ada", _MEM_F, _BF16_F, _FP8_F),
        # GeForce: fp16/bf16 with fp32 accumulation (what inference GEMMs use) runs at half rate
        _gpu("rtx-4090", 24, 24564, 1.008, 165.2, 330.3, 660.6, 20, 450, "ada", _MEM_F, _BF16_F, _FP8_F),
    ]
}
GPU_ALIASES = {"h100": "h100-sxm", "h100-80gb": "h100-sxm", "a100": "a100-80gb", "4090": "rtx-4090",
               "h200-sxm": "h200"}

_SCALAR_OVERRIDES = ("memory_gb", "memory_total_mib", "mem_bw_tbps", "idle_w", "tdp_w")


def override_keys() -> list[str]:
    """Every key `get_gpu(..., overrides=...)` accepts."""
    keys = list(_SCALAR_OVERRIDES)
    keys += [f"{d}_tflops" for d in DTYPES]
    keys += [f"achievable_{k}" for k in ("mem_bw",) + DTYPES]
    return keys


def get_gpu(name: str, overrides: Optional[dict[str, float]] = None) -> GPUSpec:
    """A catalogue GPU, optionally with figures replaced (e.g. {"mem_bw_tbps": 3.0})."""
    key = GPU_ALIASES.get(name.lower(), name.lower())
    if key not in GPUS:
        raise CatalogError(f"unknown GPU '{name}' (known: {', '.join(sorted(GPUS))})")
    gpu = GPUS[key]
    if not overrides:
        return gpu
    changes: dict = {}
    peaks = dict(gpu.peak_tflops)
    ach = dict(gpu.achievable)
    for k, v in overrides.items():
        try:
            val = float(v)
        except (TypeError, ValueError):
            raise CatalogError(f"GPU override '{k}': {v!r} is not a number") from None
        if not math.isfinite(val) or val < 0:
            raise CatalogError(f"GPU override '{k}': {v!r} must be a finite number >= 0")
        if k in _SCALAR_OVERRIDES:
            changes[k] = val
        elif k.endswith("_tflops") and k[: -len("_tflops")] in DTYPES:
            d = k[: -len("_tflops")]
            peaks[d] = val
            if d == "fp16":  # a single 16-bit figure sets both
                peaks["bf16"] = val
            if d == "bf16":
                peaks["fp16"] = val
        elif k.startswith("achievable_") and k[len("achievable_"):] in ("mem_bw",) + DTYPES:
            if not 0 < val <= 1:
                raise CatalogError(f"GPU override '{k}': {val} must be a fraction in (0, 1]")
            ach[k[len("achievable_"):]] = val
        else:
            raise CatalogError(f"unknown GPU override '{k}' (known: {', '.join(override_keys())})")
    if "memory_gb" in changes and "memory_total_mib" not in changes:
        # keep the driver-reported total in proportion to the datasheet figure
        changes["memory_total_mib"] = gpu.memory_total_mib * changes["memory_gb"] / gpu.memory_gb
    return replace(gpu, peak_tflops=peaks, achievable=ach, measured=(), **changes)


# ---------------------------------------------------------------------------------------------
# Models


def weight_bits(weights: str, group_size: int = 128) -> float:
    """Stored bits per linear-layer weight, group scales included (the table in core.hardware.formats)."""
    try:
        return weight_format(weights).bits(group_size)
    except FormatError as exc:
        raise CatalogError(str(exc)) from None


def kv_dtype_bytes(kv_cache_dtype: str) -> float:
    """Bytes per KV element: 1 for any fp8 cache, else 2 (the model's 16-bit dtype)."""
    try:
        return kv_bytes(kv_cache_dtype)
    except FormatError as exc:
        raise CatalogError(str(exc)) from None


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shape, enough for bytes and FLOPs per step."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tie_embeddings: bool = False
    max_position: int = 8192
    params: int = 0  # total parameters; 0: derived from the shape
    attention_bias: bool = False
    architecture: str = "LlamaForCausalLM"

    def __post_init__(self) -> None:
        for f in ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab", "max_position"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise CatalogError(f"model {self.name}: {f} must be a positive integer, got {v!r}")
        if self.heads % self.kv_heads:
            raise CatalogError(f"model {self.name}: heads ({self.heads}) is not a multiple of kv_heads ({self.kv_heads})")
        if self.params == 0:
            object.__setattr__(self, "params", self.derived_params)

    # --- parameter counts
    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def linear_params_per_layer(self) -> int:
        h = self.hidden
        return h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h + 3 * h * self.intermediate

    @property
    def linear_params(self) -> int:
        """Parameters of the projection matrices (q, k, v, o, gate, up, down): the quantizable part."""
        return self.layers * self.linear_params_per_layer

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        """Separate output-projection parameters (0 when tied to the embedding)."""
        return 0 if self.tie_embeddings else self.vocab * self.hidden

    @property
    def norm_params(self) -> int:
        bias = self.layers * (self.q_dim + 2 * self.kv_dim) if self.attention_bias else 0
        return self.layers * 2 * self.hidden + self.hidden + bias

    @property
    def derived_params(self) -> int:
        return self.linear_params + self.embedding_params + self.lm_head_params + self.norm_params

    @property
    def other_params(self) -> int:
        """Whatever is neither a projection nor an embedding (norms, biases): kept in 16 bits."""
        return max(0, self.params - self.linear_params - self.embedding_params - self.lm_head_params)

    # --- bytes
    def kv_bytes_per_token(self, byte_width: float = 2.0) -> float:
        """K and V of every layer for one token, at `byte_width` bytes per element."""
        return 2.0 * self.layers * self.kv_dim * byte_width

    def linear_weight_bytes(self, weights: str, group_size: int = 128) -> float:
        return self.linear_params * weight_bits(weights, group_size) / 8.0

    def weight_bytes(self, weights: str, group_size: int = 128) -> float:
        """Bytes the weights occupy in GPU memory (embedding and lm_head stay 16-bit in every format)."""
        return (self.linear_weight_bytes(weights, group_size)
                + 2.0 * (self.embedding_params + self.lm_head_params + self.other_params))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        # meta-llama/Meta-Llama-3-8B config.json
        ModelSpec("llama-3-8b", layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128,
                  vocab=128256, tie_embeddings=False, max_position=8192),
        # meta-llama/Meta-Llama-3-70B config.json
        ModelSpec("llama-3-70b", layers=80, hidden=8192, intermediate=28672, heads=64, kv_heads=8, head_dim=128,
                  vocab=128256, tie_embeddings=False, max_position=8192),
        # Qwen/Qwen2.5-7B config.json (q/k/v projections carry biases)
        ModelSpec("qwen2.5-7b", layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, head_dim=128,
                  vocab=152064, tie_embeddings=False, max_position=32768, attention_bias=True,
                  architecture="Qwen2ForCausalLM"),
    ]
}
MODEL_ALIASES = {"llama3-8b": "llama-3-8b", "meta-llama-3-8b": "llama-3-8b", "llama3-70b": "llama-3-70b",
                 "meta-llama-3-70b": "llama-3-70b", "qwen2.5-7b-instruct": "qwen2.5-7b"}

_REQUIRED = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")


def model_from_config(cfg: dict, name: str, source: str = "config.json") -> ModelSpec:
    """A ModelSpec from a Hugging Face config dict (Llama, Qwen2, Mistral and similar keys)."""
    if not isinstance(cfg, dict):
        raise CatalogError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
    if "text_config" in cfg and "hidden_size" not in cfg and isinstance(cfg["text_config"], dict):
        cfg = cfg["text_config"]  # multimodal wrappers keep the language model's shape here
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise CatalogError(f"{source}: missing key(s) {', '.join(missing)} (needed for the model's shape)")

    def as_int(key: str, default: Optional[int] = None) -> int:
        v = cfg.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise CatalogError(f"{source}: '{key}' must be a positive integer, got {v!r}")
        return v

    heads = as_int("num_attention_heads")
    hidden = as_int("hidden_size")
    kv_heads = as_int("num_key_value_heads", heads) if cfg.get("num_key_value_heads") is not None else heads
    head_dim_raw = cfg.get("head_dim")
    head_dim = as_int("head_dim") if head_dim_raw is not None else hidden // heads
    if head_dim <= 0:
        raise CatalogError(f"{source}: hidden_size {hidden} / num_attention_heads {heads} gives no head_dim")
    maxpos = cfg.get("max_position_embeddings") or cfg.get("max_sequence_length") or cfg.get("seq_length") or 8192
    try:
        return ModelSpec(
            name=name, layers=as_int("num_hidden_layers"), hidden=hidden, intermediate=as_int("intermediate_size"),
            heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=as_int("vocab_size"),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), max_position=int(maxpos),
            attention_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
            architecture=_architecture(cfg),
        )
    except CatalogError as exc:
        raise CatalogError(f"{source}: {exc}") from None


def _architecture(cfg: dict) -> str:
    arch = cfg.get("architectures")
    if isinstance(arch, list) and arch and isinstance(arch[0], str):
        return arch[0]
    return "LlamaForCausalLM"


def catalog_model(name: Union[str, Path]) -> Optional[ModelSpec]:
    """The catalogue entry a name (or alias) stands for, else None."""
    s = str(name).lower()
    return MODELS.get(MODEL_ALIASES.get(s, s))


def load_model(name_or_dir: Union[str, Path]) -> ModelSpec:
    """A catalogue model by name, or the shape in a directory's config.json (or a config.json path)."""
    s = str(name_or_dir)
    known = catalog_model(s)
    if known is not None:
        return known
    p = Path(s).expanduser()
    if p.is_dir():
        p = p / "config.json"
    elif not p.exists():
        raise CatalogError(
            f"unknown model '{s}': not a catalogue name ({', '.join(sorted(MODELS))}) and no such directory")
    if not p.is_file():
        raise CatalogError(f"model '{s}': {p} not found (a model directory needs a config.json)")
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{p}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{p}: not valid JSON: {exc}") from None
    return model_from_config(cfg, name=p.parent.name or s, source=str(p))


def gpu_names() -> list[str]:
    return sorted(GPUS)


def model_names() -> list[str]:
    return sorted(MODELS)
