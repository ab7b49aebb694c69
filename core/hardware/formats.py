"""The weight-format table: one row per format every part of ridgeline reads.

The variant presets, the catalogue's byte counts, the plan checks, the served-variant verification,
the emulator (its startup log and its performance model), the roofline bound and the summary all
ask this table what a format is; none keeps its own list.

Bits per weight are what a decode step streams from memory, so they include the per-group
quantization metadata, not only the 4-bit payload. AWQ and GPTQ checkpoints as vLLM loads them
store, for every group of ``group_size`` input channels of a linear layer, one fp16 scale (16 bits)
and one 4-bit zero point (packed into ``qzeros``). At the usual group size of 128 that is
4 + (16 + 4) / 128 = 4.156 bits per weight, not 4.0: an 8B model's INT4 linear weights are ~3.9%
larger than the payload alone, which the roofline bound and the emulator's memory sizing must
count (vLLM's own "Model loading took ... GiB" line counts it too). The manifest's ``weight_bits``
is this same figure at group size 128, so the report and the bound agree. GPTQ's optional
``g_idx`` (one int32 per input row, for act-order checkpoints) is per row, not per weight, and is
left out (under 0.01 bit per weight for any real layer). compressed-tensors W4A16 checkpoints
(llm-compressor, symmetric) keep only the scale: 4 + 16 / 128 = 4.125 bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from core.errors import RidgelineError

DEFAULT_GROUP_SIZE = 128
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")


class FormatError(RidgelineError, ValueError):
    """A weight format or KV-cache dtype this table does not know."""


@dataclass(frozen=True)
class WeightFormat:
    """One weight format: its storage, its names in vLLM and in checkpoints, its label."""

    name: str  # the plan's and the presets' name: fp16 | bf16 | awq | gptq | fp8
    payload_bits: float  # bits of the weight itself
    group_bits: float  # bits of quantization metadata per group (scale + zero point); 0 for none
    label: str  # how reports and messages name it
    int4: bool  # a weight-only INT4 format (dequantized to 16 bits before the multiply)
    vllm_methods: tuple[str, ...] = ()  # --quantization values that serve it (first: the preset's)
    reported_methods: tuple[str, ...] = ()  # quantization names a running server may report for it
    checkpoint_methods: tuple[Optional[str], ...] = (None,)  # config.json quant_method (None: unquantized)

    def bits(self, group_size: int = DEFAULT_GROUP_SIZE) -> float:
        """Stored bits per linear-layer weight, group metadata included."""
        if not self.group_bits:
            return self.payload_bits
        if group_size <= 0:
            raise FormatError(f"group_size must be positive, got {group_size}")
        return self.payload_bits + self.group_bits / group_size

    @property
    def vllm_method(self) -> Optional[str]:
        """The --quantization value the presets (and the emulator) use; None: unquantized."""
        return self.vllm_methods[0] if self.vllm_methods else None


_INT4_GROUP_BITS = 16.0 + 4.0  # an fp16 scale and a 4-bit zero point per group

FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("fp16", 16.0, 0.0, "FP16", False),
    WeightFormat("bf16", 16.0, 0.0, "BF16", False),
    WeightFormat("awq", 4.0, _INT4_GROUP_BITS, "AWQ INT4", True,
                 vllm_methods=("awq_marlin", "awq"), reported_methods=("awq", "awq_marlin", "auto_awq"),
                 checkpoint_methods=("awq",)),
    WeightFormat("gptq", 4.0, _INT4_GROUP_BITS, "GPTQ INT4", True,
                 vllm_methods=("gptq_marlin", "gptq"), reported_methods=("gptq", "gptq_marlin", "auto_gptq"),
                 checkpoint_methods=("gptq",)),
    # llm-compressor's compressed-tensors W4A16, symmetric: a 16-bit scale per group and no zero point
    WeightFormat("w4a16", 4.0, 16.0, "W4A16 INT4", True,
                 vllm_methods=("compressed-tensors",), reported_methods=("compressed-tensors",),
                 checkpoint_methods=("compressed-tensors",)),
    WeightFormat("fp8", 8.0, 0.0, "FP8", False,
                 vllm_methods=("fp8",),
                 reported_methods=("fp8", "fbgemm_fp8", "compressed-tensors", "modelopt", "fp8_per_tensor",
                                   "fp8_per_channel", "fp8_per_block"),
                 checkpoint_methods=("fp8", None)),
)}
WEIGHT_FORMATS = tuple(FORMATS)
INT4_FORMATS = tuple(n for n, f in FORMATS.items() if f.int4)


def weight_format(name: str) -> WeightFormat:
    """The table's row for a format name; FormatError naming the known ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise FormatError(f"unknown weight format '{name}' (known: {', '.join(WEIGHT_FORMATS)})") from None


def format_of_method(quantization: str) -> Optional[str]:
    """The weight format a vLLM --quantization value serves, or None when no format lists it."""
    for f in FORMATS.values():
        if quantization in f.vllm_methods:
            return f.name
    return None


def vllm_methods() -> list[str]:
    """Every --quantization value some format lists, sorted (for error messages)."""
    return sorted(m for f in FORMATS.values() for m in f.vllm_methods)


def kv_bytes(kv_cache_dtype: str) -> float:
    """Bytes per KV-cache element: 1 for any fp8 cache, else 2 (the model's 16-bit dtype)."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise FormatError(f"unknown kv_cache_dtype '{kv_cache_dtype}' (known: {', '.join(KV_CACHE_DTYPES)})")
    return 1.0 if kv_cache_dtype.startswith("fp8") else 2.0
