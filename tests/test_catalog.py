"""The GPU and model catalogue: datasheet figures, overrides, config.json loading and its errors."""

import json

import pytest

from core.hardware.catalog import (
    GPUS,
    MODELS,
    CatalogError,
    get_gpu,
    kv_dtype_bytes,
    load_model,
    override_keys,
    weight_bits,
)


def test_every_catalogue_gpu_is_physically_ordered():
    h100, a100, h200 = get_gpu("h100-sxm"), get_gpu("a100-80gb"), get_gpu("h200")
    assert h100.bandwidth() < h200.bandwidth()
    assert a100.bandwidth() < h100.bandwidth()
    assert a100.flops("bf16") < h100.flops("bf16")
    for g in GPUS.values():
        assert 0 < g.idle_w < g.tdp_w
        assert g.memory_bytes > 0.9 * g.memory_gb * 1e9 * 0.9
        assert g.bandwidth() < g.bandwidth(measured_ceilings=False)
        assert g.flops("fp16") == g.flops("bf16")


def test_h100_ceilings_are_the_measured_ones():
    g = get_gpu("h100-sxm")
    assert g.bandwidth() == pytest.approx(3.02e12, rel=0.01)
    assert g.flops("bf16") == pytest.approx(680e12, rel=0.01)
    assert g.flops("bf16", measured_ceilings=False) == pytest.approx(989.4e12)
    assert "mem_bw" in g.measured


def test_gpu_without_fp8_falls_back_to_fp16_peak():
    a100 = get_gpu("a100-80gb")
    assert not a100.supports("fp8")
    assert a100.flops("fp8") == a100.flops("fp16")


def test_unknown_gpu_lists_known_names():
    with pytest.raises(CatalogError) as e:
        get_gpu("b300")
    for name in GPUS:
        assert name in str(e.value)


def test_overrides_replace_figures_and_reject_unknown_keys():
    g = get_gpu("h100-sxm", {"mem_bw_tbps": 4.0, "bf16_tflops": 1000, "achievable_mem_bw": 0.5})
    assert g.bandwidth() == pytest.approx(2.0e12)
    assert g.peak_tflops["fp16"] == 1000
    assert get_gpu("H100").name == "h100-sxm"
    with pytest.raises(CatalogError, match="unknown GPU override 'bandwidth'"):
        get_gpu("h100-sxm", {"bandwidth": 3})
    with pytest.raises(CatalogError, match="fraction"):
        get_gpu("h100-sxm", {"achievable_bf16": 1.5})
    with pytest.raises(CatalogError, match="not a number"):
        get_gpu("h100-sxm", {"idle_w": "lots"})
    assert "achievable_mem_bw" in override_keys()


def test_catalogue_models_match_published_parameter_counts():
    assert load_model("llama-3-8b").params == 8_030_261_248
    assert load_model("llama-3-70b").params == 70_553_706_496
    assert load_model("qwen2.5-7b").params == 7_615_616_512


def test_llama3_8b_bytes():
    m = load_model("llama-3-8b")
    assert m.weight_bytes("fp16") == pytest.approx(16.06e9, rel=0.001)
    assert m.kv_bytes_per_token(2) == 131072  # 128 KiB: 2 x 32 layers x 8 heads x 128 x 2 bytes
    assert m.kv_bytes_per_token(kv_dtype_bytes("fp8")) == 65536
    # INT4 with group-128 scales: the projections shrink about 3.85x, embeddings stay 16-bit
    assert m.linear_weight_bytes("fp16") / m.linear_weight_bytes("awq") == pytest.approx(16 / 4.15625)
    assert 5.0e9 < m.weight_bytes("awq") < 6.0e9
    assert m.weight_bytes("fp8") < m.weight_bytes("bf16")


def test_weight_bits_and_kv_dtype_errors():
    assert weight_bits("gptq", 64) > weight_bits("gptq", 128) > 4
    with pytest.raises(CatalogError, match="unknown weight format 'int3'"):
        weight_bits("int3")
    with pytest.raises(CatalogError, match="kv_cache_dtype"):
        kv_dtype_bytes("int8")


def _write(tmp_path, cfg):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_load_model_from_directory(tmp_path):
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
           "max_position_embeddings": 2048, "tie_word_embeddings": True}
    m = load_model(_write(tmp_path, cfg))
    assert (m.layers, m.hidden, m.kv_heads, m.head_dim, m.vocab, m.max_position) == (2, 256, 2, 64, 512, 2048)
    assert m.tie_embeddings and m.lm_head_params == 0
    assert load_model(tmp_path / "m" / "config.json").hidden == 256


def test_load_model_same_shape_as_catalogue(tmp_path):
    ref = MODELS["llama-3-8b"]
    cfg = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192}
    assert load_model(_write(tmp_path, cfg)).params == ref.params


def test_load_model_errors_name_file_and_key(tmp_path):
    d = _write(tmp_path, {"hidden_size": 256, "num_hidden_layers": 2})
    with pytest.raises(CatalogError) as e:
        load_model(d)
    assert str(d / "config.json") in str(e.value)
    assert "intermediate_size" in str(e.value) and "vocab_size" in str(e.value)
    with pytest.raises(CatalogError, match="unknown model 'nope'"):
        load_model("nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match="config.json"):
        load_model(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CatalogError, match="not valid JSON"):
        load_model(bad)
    d2 = tmp_path / "neg"
    d2.mkdir()
    (d2 / "config.json").write_text(json.dumps({"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 0,
                                                "num_attention_heads": 4, "vocab_size": 512}))
    with pytest.raises(CatalogError, match="num_hidden_layers"):
        load_model(d2)
