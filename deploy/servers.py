"""A plan's servers as launchable commands: one `ServerCommand` per variant, for every backend.

- emulator: `python -m deploy.emulator` modelling plan.gpu and plan.model with the variant's weights
  and KV-cache dtype; the engine flags it shares with vLLM (--max-num-seqs...) are passed on.
- vllm: the command line from deploy/vllm_command.py, with the environment vLLM needs: no hub
  access, no usage reports, the GPUs it may use, the plan's and the variant's variables, and the
  API key in VLLM_API_KEY (never on the command line, never written anywhere).
- external: nothing to start (argv is empty); the URL is the variant's.
The runner, `ridgeline deploy` and --dry-run all take their commands from here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from typing import Any, Callable, Optional

from core.backends import backend
from core.errors import RidgelineError
from core.hardware.variants import Variant, resolve
from core.parallel import ParallelSizeError, tensor_parallel_size
from core.plan import Plan
from core.secrets import read_api_key
from deploy.emulator.__main__ import parser
from deploy import cpu_split, prefix_cache
from deploy.launcher import ServerCommand, free_port
from deploy.vllm_command import API_KEY_ENV, flag_name, served_name, vllm_argv
from deploy.vllm_flags import mfu_args

EMULATOR_STARTUP_S = 120.0
# flags servers.py sets on the emulator itself: never taken from extra_args or plan.emulator
EMULATOR_OWN = {"--host", "--port", "--gpu", "--model", "--weights", "--kv-cache-dtype", "--served-model-name",
                "--dtype", "--gpu-overrides"}
VLLM_BASE_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "PYTHONUNBUFFERED": "1"}
_UNSET: Any = object()


class ServersError(RidgelineError, ValueError):
    """A plan whose servers cannot be described (names the key and the variant)."""


def server_commands(plan: Plan, ports: Optional[dict[str, int]] = None, api_key: Optional[str] = _UNSET
                    ) -> list[ServerCommand]:
    """One command per variant, in plan order. Ports come from free_port() unless given.

    api_key: the key for VLLM_API_KEY; by default read from plan.api_key_env / api_key_file
    (core.secrets.SecretError when the plan names one that cannot be read).
    """
    ports = dict(ports or {})
    variants = [resolve(spec) for spec in plan.variants]
    return SERVER_COMMANDS[backend(plan.backend).name](plan, variants, ports, api_key)


def _external_commands(plan: Plan, variants: list[Variant], ports: dict[str, int], api_key: Any
                       ) -> list[ServerCommand]:
    return [_external(v) for v in variants]


def _emulator_commands(plan: Plan, variants: list[Variant], ports: dict[str, int], api_key: Any
                       ) -> list[ServerCommand]:
    host = plan.server.host
    return [_emulator(plan, v, host, ports.get(v.name) or free_port(host)) for v in variants]


def _vllm_commands(plan: Plan, variants: list[Variant], ports: dict[str, int], api_key: Any) -> list[ServerCommand]:
    host = plan.server.host
    key = read_api_key(plan.api_key_env, plan.api_key_file) if api_key is _UNSET else api_key
    gpus = gpu_assignment(plan, variants)
    out = []
    for v in variants:
        port = ports.get(v.name) or free_port(host)
        env = dict(VLLM_BASE_ENV)
        if gpus.get(v.name) is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus[v.name]
        env.update(prefix_cache.server_env(plan.server.prefix_cache))
        split = plan.server.cpus
        if split is not None:
            env.update(cpu_split.engine_env(split.engine))
        env.update(plan.server.env)
        env.update(dict(v.env))
        if key:
            env[API_KEY_ENV] = key
        argv = vllm_argv(plan, v, host, port) + prefix_cache.server_args(plan.server.prefix_cache)
        mfu, note = mfu_args(list(plan.server.program), plan.server.mfu_metrics, argv, env)
        notes: dict[str, Any] = {"mfu_metrics": note}
        prefix: list[str] = []
        if split is not None:
            prefix = cpu_split.frontend_prefix(split.frontend)
        out.append(ServerCommand(v.name, prefix + argv + mfu, env=env, host=host, port=port,
                                 startup_timeout_s=plan.server.startup_timeout_s, notes=notes, cpus=split))
    return out


# how each backend's servers are started (core.backends lists what the rest of ridgeline knows of them)
SERVER_COMMANDS: dict[str, Callable[[Plan, list[Variant], dict[str, int], Any], list[ServerCommand]]] = {
    "emulator": _emulator_commands,
    "vllm": _vllm_commands,
    "external": _external_commands,
}


# --- GPUs -----------------------------------------------------------------------------------------

def tensor_parallel(v: Variant) -> int:
    """The variant's --tensor-parallel-size (or -tp), 1 when not given."""
    try:
        return tensor_parallel_size(list(v.extra_args))
    except ParallelSizeError as exc:
        if exc.value is None:
            raise ServersError(f"variant {v.name}: {exc.flag} {exc.raw!r} is not a whole number") from None
        raise ServersError(f"variant {v.name}: {exc.flag} must be at least 1, got {exc.value}") from None


def gpu_assignment(plan: Plan, variants: Optional[list[Variant]] = None) -> dict[str, Optional[str]]:
    """CUDA_VISIBLE_DEVICES of each variant (None: leave the inherited one).

    A variant's own `gpus` always win. With placement parallel the others get GPUs of their own, side
    by side (tensor-parallel ones a block each); with sequential each runs alone in turn, on the
    inherited GPUs. GPU numbers count the GPUs this process may see: with CUDA_VISIBLE_DEVICES=4,5
    set, GPU 0 of the plan is the host's GPU 4.
    """
    variants = variants if variants is not None else [resolve(s) for s in plan.variants]
    out: dict[str, Optional[str]] = {}
    visible = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]

    def devices(indices: list[int]) -> str:
        return ",".join(visible[i] if i < len(visible) else str(i) for i in indices)

    taken = {g for v in variants if v.gpus for g in v.gpus}
    nxt = 0
    for v in variants:
        if v.gpus:
            out[v.name] = devices(list(v.gpus))
            continue
        if plan.server.placement != "parallel":
            out[v.name] = None
            continue
        mine = []
        while len(mine) < tensor_parallel(v):
            if nxt not in taken:
                mine.append(nxt)
            nxt += 1
        out[v.name] = devices(mine)
    return out


# --- emulator -------------------------------------------------------------------------------------

def _emulator_options() -> dict[str, argparse.Action]:
    return {opt: a for a in parser()._actions for opt in a.option_strings if opt.startswith("--")}


def emulator_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Split vLLM extra_args into those the emulator understands and those it ignores (flag names)."""
    known = _emulator_options()
    keep: list[str] = []
    dropped: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        name = flag_name(tok)
        if name is None:  # a stray value
            i += 1
            continue
        act = known.get(name)
        if act is not None:
            n = 1 if (act.nargs == 0 or "=" in tok) else 2
        else:  # unknown to the emulator: guess whether the next token is its value
            n = 2 if ("=" not in tok and i + 1 < len(args) and flag_name(args[i + 1]) is None) else 1
        if act is not None and name not in EMULATOR_OWN:
            keep += args[i:i + n]
        else:
            dropped.append(name)
        i += n
    return keep, dropped


def _emulator_overrides(plan: Plan) -> list[str]:
    """plan.emulator {key: value} as emulator flags (--key-with-dashes value)."""
    known = _emulator_options()
    out: list[str] = []
    for key, val in plan.emulator.items():
        flag = "--" + str(key).replace("_", "-")
        act = known.get(flag) or known.get("--no-" + flag[2:])
        if act is None or flag in EMULATOR_OWN:
            allowed = sorted(k[2:].replace("-", "_") for k in known if k not in EMULATOR_OWN and k != "--help"
                             and not k.startswith("--no-"))
            raise ServersError(f"emulator.{key}: not an emulator setting (known: {', '.join(allowed)})")
        if act.nargs == 0:  # a switch: included when the value asks for what it does
            if not isinstance(val, bool):
                raise ServersError(f"emulator.{key}: expected true or false, got {val!r}")
            if val == bool(act.const):
                out.append(act.option_strings[0])
            continue
        out += [flag, json.dumps(val) if isinstance(val, (dict, list)) else str(val)]
    return out


def _emulator(plan: Plan, v: Variant, host: str, port: int) -> ServerCommand:
    argv = [sys.executable, "-m", "deploy.emulator", "--host", host, "--port", str(port), "--gpu", plan.gpu,
            "--model", plan.model, "--weights", v.weights, "--kv-cache-dtype", v.kv_cache_dtype,
            "--served-model-name", served_name(plan, v)]
    if v.dtype:
        argv += ["--dtype", v.dtype]
    if plan.gpu_overrides:
        argv += ["--gpu-overrides", json.dumps(plan.gpu_overrides, sort_keys=True)]
    argv += _emulator_overrides(plan)
    keep, _ = emulator_args(list(plan.server.extra_args))
    argv += keep
    keep, _ = emulator_args(list(v.extra_args))
    argv += keep
    env = {"PYTHONUNBUFFERED": "1"}
    env.update(dict(v.env))
    return ServerCommand(v.name, argv, env=env, host=host, port=port, startup_timeout_s=EMULATOR_STARTUP_S)


# --- external -------------------------------------------------------------------------------------

def external_url(url: str, variant: str) -> tuple[str, str, int]:
    """(base URL, host, port) of an external server; a trailing /v1 is dropped (paths add it)."""
    u = urllib.parse.urlsplit(url.strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ServersError(f"variant {variant}: url {url!r} is not an http(s) URL")
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        raise ServersError(f"variant {variant}: url {url!r} has a bad port") from None
    path = u.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    base = urllib.parse.urlunsplit((u.scheme, u.netloc, path, "", ""))
    return base, u.hostname, port


def _external(v: Variant) -> ServerCommand:
    if not v.url:
        raise ServersError(f"variant {v.name}: backend external needs its url")
    base, host, port = external_url(v.url, v.name)
    return ServerCommand(v.name, [], host=host, port=port, base_url=base)
