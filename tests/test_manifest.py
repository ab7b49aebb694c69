"""What a run's manifest records of the host's accelerators and of each model served."""

from __future__ import annotations

import shutil

from core.plan import Plan, parse_plan
from deploy import gpu_info
from deploy.gpu_info import HostGpus, parse_nvidia_smi
from loadtest.manifest import new_manifest
from loadtest.runner import Sweep, new_run_dir

H100X2_CSV = ("name, memory.total [MiB], compute_cap, driver_version\n"
              "NVIDIA H100 80GB HBM3, 81559 MiB, 9.0, 580.95.05\nNVIDIA H100 80GB HBM3, 81559 MiB, 9.0, 580.95.05\n")


def test_gpu_record_of_an_nvidia_smi_listing():
    rec = gpu_info.record(HostGpus("cuda", tuple(parse_nvidia_smi(H100X2_CSV))))
    assert rec["kind"] == "cuda" and rec["name"] == "2x NVIDIA H100 80GB HBM3 (compute capability 9.0)"
    assert [g["driver_version"] for g in rec["gpus"]] == ["580.95.05"] * 2
    assert rec["gpus"][1]["index"] == 1 and rec["gpus"][0]["memory_total_mib"] == 81559
    assert "cpu_isa" not in rec


def test_gpu_record_of_a_host_without_a_gpu():
    rec = gpu_info.record(HostGpus("cpu", (), "nvidia-smi not found", frozenset({"avx2", "fma", "avx512f"})))
    assert rec == {"kind": "cpu", "gpus": [], "note": "nvidia-smi not found", "name": "cpu",
                   "cpu_isa": ["avx2", "avx512f"]}


def test_new_manifest_records_this_hosts_gpu():
    man = new_manifest(Plan.model_validate({"variants": [{"name": "fp16", "preset": "fp16"}]}), None, 0.0)
    assert man["gpu"] == gpu_info.record()
    if shutil.which("nvidia-smi") is None:
        assert man["gpu"]["kind"] == "cpu" and man["gpu"]["name"] == "cpu"


def test_a_sweep_writes_the_gpu_and_the_served_model_config(tmp_path):
    """The emulator end to end: manifest.json carries the detected GPU and each variant's model config."""
    plan = parse_plan(f"""
name: man
backend: emulator
variants: [{{name: fp16, preset: fp16}}]
scenario: {{prompt_tokens: 16, output_tokens: 8}}
sweep: {{concurrency: [1], warmup_s: 0, duration_s: 0.5, drain_s: 5}}
output_dir: "{tmp_path}"
""", "man.yaml")
    run = new_run_dir(plan)
    sweep = Sweep(plan, run)
    try:
        sweep.execute()
    finally:
        sweep.stop_all()
    man = run.read_manifest()
    assert man["status"] == "complete" and man["gpu"] == gpu_info.record()
    model = man["servers"]["fp16"]["served"]["model"]
    assert model["architecture"] == "LlamaForCausalLM" and model["source"] == "catalog"
    assert (model["hidden_size"], model["num_layers"], model["num_heads"], model["num_kv_heads"],
            model["vocab_size"], model["quantization"]) == (4096, 32, 32, 8, 128256, None)
