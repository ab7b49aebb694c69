"""Before any server starts on the H100 host: is every module importable, and will GPTQ really be INT4?

Run with PYTHONPATH=/tmp/site:<repo>. It imports what the sweep needs (vLLM's server entry point
included, so a missing dependency shows now rather than four minutes into a start) and names every
module that fails. With --gptq-model it asks the installed vLLM's own code which linear layers of
that model directory it will quantize: vLLM 0.24.0 keeps every layer 16-bit when the GPTQ config
does not name them and the directory holds no safetensors (README.md), and this says so up front.

    python3 benchmarks/h100/preflight.py --gptq-model /tmp/models/gptq

Exit status: 0 ready, 1 a module is missing or broken, 2 only the GPTQ check failed (the other
variants can still run).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

# two processes, as on the host: the vLLM server, and ridgeline's client (which patches the standard
# library with gevent before anything else, as loadtest.cli does; vLLM never runs in such a process)
GROUPS = {
    "vllm": ["vllm", "vllm.entrypoints.openai.api_server"],
    "ridgeline": ["loadtest.cli", "locust", "gevent", "geventhttpclient", "zmq", "pydantic", "typer", "rich",
                  "pandas", "pyarrow", "prometheus_client", "matplotlib", "yaml", "aiohttp", "psutil", "tokenizers",
                  "numpy", "core.plan", "loadtest.runner", "deploy.launcher", "deploy.servers",
                  "scenarios.workload", "analysis"],
}

# a Llama decoder block's linear layers as vLLM names them (fused where vLLM fuses them)
LLAMA_LINEARS = ["model.layers.0.self_attn.qkv_proj", "model.layers.0.self_attn.o_proj",
                 "model.layers.0.mlp.gate_up_proj", "model.layers.0.mlp.down_proj"]


def check_imports(names: list[str]) -> list[str]:
    failed = []
    for name in names:
        t0 = time.time()
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report every kind of import failure by name
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"FAIL   {name}: {type(exc).__name__}: {exc}")
            continue
        print(f"ok     {name} ({time.time() - t0:.1f}s)")
    return failed


def gptq_layers(model_dir: Path) -> dict[str, bool]:
    """Which Llama linear layers the installed vLLM will build as GPTQ INT4 for this directory."""
    from vllm.model_executor.layers.quantization.auto_gptq import AutoGPTQConfig
    from vllm.model_executor.layers.quantization.utils.gptq_utils import is_layer_gptq_quantized
    from vllm.model_executor.models.llama import LlamaForCausalLM

    qc = json.loads((model_dir / "config.json").read_text())["quantization_config"]
    cfg = AutoGPTQConfig.from_config(qc)
    cfg.maybe_update_config(str(model_dir))  # what vLLM does at engine start (config/vllm.py)
    mapping = dict(LlamaForCausalLM.packed_modules_mapping)
    return {p.rsplit(".", 1)[1]: bool(is_layer_gptq_quantized(p, cfg.modules_in_block_to_quantize, mapping))
            for p in LLAMA_LINEARS}


def import_groups() -> list[str]:
    """Each group's imports in its own interpreter; the names of the modules that failed."""
    failed = []
    for group in GROUPS:
        r = subprocess.run([sys.executable, __file__, "--group", group], capture_output=True, text=True)
        sys.stdout.write(r.stdout)
        failed += [ln.split()[1].rstrip(":") for ln in r.stdout.splitlines() if ln.startswith("FAIL")]
        if r.returncode not in (0, 1):
            failed.append(f"{group} (interpreter exited {r.returncode}: {r.stderr.strip()[-300:]})")
    return failed


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gptq-model", type=Path, help="a GPTQ model directory to check")
    ap.add_argument("--skip-imports", action="store_true")
    ap.add_argument("--group", choices=sorted(GROUPS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.group is not None:
        return 1 if check_imports(GROUPS[args.group]) else 0
    failed = [] if args.skip_imports else import_groups()
    if failed:
        print(f"PREFLIGHT: {len(failed)} module(s) missing or broken: " + "; ".join(failed))
    if failed:
        return 1
    if args.gptq_model is not None:
        try:
            layers = gptq_layers(args.gptq_model)
        except Exception as exc:  # noqa: BLE001
            print(f"PREFLIGHT: GPTQ check of {args.gptq_model} failed: {type(exc).__name__}: {exc}")
            return 2
        print(f"GPTQ layers quantized by this vLLM for {args.gptq_model}: {layers}")
        if not all(layers.values()):
            print("PREFLIGHT: GPTQ would load 16-bit weights for "
                  + ", ".join(k for k, v in layers.items() if not v)
                  + " (the config must list modules_in_block_to_quantize; see benchmarks/h100/README.md)")
            return 2
    print("PREFLIGHT: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
