"""The variant registry: what each deployment variant is, in vLLM flags and in bytes.

A variant is a weight format (fp16, bf16, awq, gptq, fp8) and a KV-cache dtype. The same record
feeds the real server's command line, the emulator's performance model and the roofline bound, so
the three can never disagree about what "awq+fp8kv" means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from core.errors import RidgelineError
from core.hardware.formats import KV_CACHE_DTYPES, format_of_method, kv_bytes, vllm_methods, weight_format
from core.plan import VariantSpec


class VariantError(RidgelineError, ValueError):
    """A variant that cannot be built from the plan."""


@dataclass(frozen=True)
class Preset:
    name: str
    weights: str  # fp16 | bf16 | awq | gptq | w4a16 | fp8
    quantization: Optional[str]  # vLLM --quantization value (None: unquantized)
    kv_cache_dtype: str = "auto"  # auto | fp8 | fp8_e4m3 | fp8_e5m2
    dtype: Optional[str] = None  # vLLM --dtype
    description: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("fp16", "fp16", None, dtype="float16", description="16-bit weights and KV cache (float16)"),
        Preset("bf16", "bf16", None, dtype="bfloat16", description="16-bit weights and KV cache (bfloat16)"),
        Preset("awq", "awq", "awq_marlin", dtype="float16", description="AWQ INT4 weights, Marlin kernels"),
        Preset("gptq", "gptq", "gptq_marlin", dtype="float16", description="GPTQ INT4 weights, Marlin kernels"),
        Preset("w4a16", "w4a16", "compressed-tensors", dtype="bfloat16",
               description="INT4 weight-only, compressed-tensors format (llm-compressor's GPTQ/AWQ/RTN W4A16 output)"),
        Preset("fp8", "fp8", "fp8", dtype="bfloat16", description="FP8 weights (W8A8)"),
        Preset("fp8kv", "bf16", None, kv_cache_dtype="fp8", dtype="bfloat16",
               description="16-bit weights, FP8 KV cache (bfloat16: float16 with FP8 KV fails on Hopper)"),
        Preset("awq-fp8kv", "awq", "awq_marlin", kv_cache_dtype="fp8", dtype="bfloat16",
               description="AWQ INT4 weights and FP8 KV cache"),
        Preset("gptq-fp8kv", "gptq", "gptq_marlin", kv_cache_dtype="fp8", dtype="bfloat16",
               description="GPTQ INT4 weights and FP8 KV cache"),
    ]
}
ALIASES = {"awq+fp8kv": "awq-fp8kv", "gptq+fp8kv": "gptq-fp8kv", "fp16+fp8kv": "fp8kv", "bf16+fp8kv": "fp8kv"}



@dataclass(frozen=True)
class Variant:
    """A plan's variant resolved against the registry."""

    name: str
    weights: str
    quantization: Optional[str]
    kv_cache_dtype: str
    dtype: Optional[str]
    model: Optional[str] = None
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    gpus: Optional[tuple[int, ...]] = None
    url: Optional[str] = None
    preset: Optional[str] = None

    @property
    def weight_bits(self) -> float:
        """Bits per weight at the usual group size, group scales included (see core.hardware.formats)."""
        return weight_format(self.weights).bits()

    @property
    def kv_bytes(self) -> float:
        return kv_bytes(self.kv_cache_dtype)

    @property
    def is_int4(self) -> bool:
        return weight_format(self.weights).int4

    def to_dict(self) -> dict:
        return {
            "name": self.name, "preset": self.preset, "weights": self.weights,
            "quantization": self.quantization, "kv_cache_dtype": self.kv_cache_dtype,
            "dtype": self.dtype, "model": self.model, "weight_bits": self.weight_bits,
        }


def preset_for(spec: VariantSpec) -> Optional[Preset]:
    key = spec.preset or spec.name
    key = ALIASES.get(key, key)
    if spec.preset is not None and key not in PRESETS:
        raise VariantError(
            f"variant {spec.name}: unknown preset '{spec.preset}' (known: {', '.join(sorted(PRESETS))})"
        )
    return PRESETS.get(key)


def resolve(spec: VariantSpec) -> Variant:
    """Merge a plan's variant with its preset; explicit keys in the plan win."""
    p = preset_for(spec)
    quant = spec.quantization if spec.quantization is not None else (p.quantization if p else None)
    weights = p.weights if p else "fp16"
    if spec.quantization is not None:
        weights = _weights_of(spec.quantization, spec.name)
    kv = spec.kv_cache_dtype if spec.kv_cache_dtype is not None else (p.kv_cache_dtype if p else "auto")
    if kv not in KV_CACHE_DTYPES:
        known = ", ".join(sorted(KV_CACHE_DTYPES))
        raise VariantError(f"variant {spec.name}: kv_cache_dtype '{kv}' is not one of {known}")
    dtype = spec.dtype if spec.dtype is not None else (p.dtype if p else None)
    if dtype == "bfloat16" and weights == "fp16":
        weights = "bf16"
    return Variant(
        name=spec.name, weights=weights, quantization=quant, kv_cache_dtype=kv, dtype=dtype,
        model=spec.model, extra_args=tuple(spec.extra_args), env=tuple(sorted(spec.env.items())),
        gpus=tuple(spec.gpus) if spec.gpus else None, url=spec.url, preset=p.name if p else None,
    )


def _weights_of(quantization: str, name: str) -> str:
    weights = format_of_method(quantization)
    if weights is not None:
        return weights
    known = vllm_methods()
    raise VariantError(f"variant {name}: quantization '{quantization}' is not one of {', '.join(known)}")
