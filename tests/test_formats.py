"""The weight-format table: bits per weight with group metadata, and every reader agreeing with it."""

from __future__ import annotations

import pytest

from core.hardware import formats
from core.hardware.catalog import CatalogError, load_model, weight_bits
from core.hardware.variants import resolve
from core.plan import VariantSpec


def test_int4_bits_count_an_fp16_scale_and_a_4bit_zero_per_group():
    # 4 payload bits + (16-bit scale + 4-bit zero) / 128 weights = 4 + 20/128 = 4.15625
    assert formats.weight_format("awq").bits(128) == 4.15625
    assert formats.weight_format("gptq").bits(64) == 4.3125  # 4 + 20/64
    assert formats.weight_format("fp8").bits() == 8.0
    assert formats.weight_format("bf16").bits() == 16.0
    with pytest.raises(formats.FormatError, match="group_size must be positive"):
        formats.weight_format("awq").bits(0)


def test_the_manifest_and_the_catalogue_give_the_same_bits():
    awq = resolve(VariantSpec(name="awq", preset="awq"))
    assert awq.to_dict()["weight_bits"] == 4.15625 == weight_bits("awq")
    assert resolve(VariantSpec(name="fp16")).to_dict()["weight_bits"] == 16.0
    # an 8B model's INT4 linear weights: the catalogue's bytes use the same figure
    m = load_model("llama-3-8b")
    assert m.linear_weight_bytes("awq") == pytest.approx(m.linear_params * 4.15625 / 8, rel=1e-12)


def test_unknown_names_are_refused_naming_the_known_ones():
    with pytest.raises(formats.FormatError, match="unknown weight format 'int3'.*awq"):
        formats.weight_format("int3")
    with pytest.raises(formats.FormatError, match="unknown kv_cache_dtype 'int8'"):
        formats.kv_bytes("int8")
    with pytest.raises(CatalogError, match="unknown weight format 'int3'"):
        weight_bits("int3")


def test_quantization_methods_map_back_to_their_format():
    assert formats.format_of_method("awq_marlin") == "awq"
    assert formats.format_of_method("gptq") == "gptq"
    assert formats.format_of_method("bitsandbytes") is None
    assert formats.INT4_FORMATS == ("awq", "gptq", "w4a16")
    assert formats.weight_format("w4a16").bits() == 4.125  # 4 + 16/128: a scale per group, no zero point
    assert formats.format_of_method("compressed-tensors") == "w4a16"
    assert formats.kv_bytes("fp8_e5m2") == 1.0 and formats.kv_bytes("auto") == 2.0
