"""The exact vLLM command line of a variant: one source of truth for launching, --dry-run and Kubernetes.

Order: the program (default `python -m vllm.entrypoints.openai.api_server`; `vllm serve` takes the
model as its first argument; a container command may place it with `{model}`), then the flags the
variant implies (--model, --served-model-name, --host, --port, --dtype, --quantization,
--kv-cache-dtype, --calculate-kv-scales, --load-format), then plan.server.extra_args, then the
variant's own extra_args (vLLM keeps the last value of a repeated flag, so the variant wins).
An API key never goes on a command line (every user of the host can read it there): vLLM reads
it from VLLM_API_KEY, which deploy/servers.py sets.
"""

from __future__ import annotations

from typing import Optional

from core.errors import RidgelineError
from core.hardware.variants import Variant
from core.plan import Plan

DEFAULT_PROGRAM = ["python", "-m", "vllm.entrypoints.openai.api_server"]
API_KEY_ENV = "VLLM_API_KEY"
# flags ridgeline sets from the variant; the same flag again in extra_args overrides it (checks warn)
VARIANT_FLAGS = ("--model", "--served-model-name", "--host", "--port", "--dtype", "--quantization", "-q",
                 "--kv-cache-dtype", "--load-format", "--calculate-kv-scales")
SECRET_FLAGS = ("--api-key",)
PLACEHOLDERS = ("model", "host", "port", "variant", "served_model_name")


class CommandError(RidgelineError, ValueError):
    """A variant whose command line cannot be built as asked."""


def flag_name(token: str) -> Optional[str]:
    """`--max-num-seqs` for '--max-num-seqs' or '--max-num-seqs=8'; None for a value."""
    if not token.startswith("-") or token == "-" or _is_number(token):
        return None
    return token.split("=", 1)[0]


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def flags_in(args: list[str]) -> list[str]:
    return [f for f in (flag_name(a) for a in args) if f]


def checkpoint(plan: Plan, variant: Variant) -> str:
    """The checkpoint vLLM loads: the variant's `model`, else the plan's."""
    return variant.model or plan.model


def served_name(plan: Plan, variant: Variant) -> str:
    return plan.served_model_name or variant.name


def _refuse_secrets(where: str, args: list[str]) -> None:
    bad = [f for f in flags_in(args) if f in SECRET_FLAGS]
    if bad:
        raise CommandError(f"{where}: {bad[0]} puts the key on the command line, where any user of the host "
                           f"can read it; set api_key_env or api_key_file in the plan instead ({API_KEY_ENV} is "
                           f"passed in the server's environment)")


def engine_args(plan: Plan, variant: Variant, host: str, port: int, *, model_flag: bool = True,
                calculate_kv_scales: Optional[bool] = None) -> list[str]:
    """Everything after the program: the variant's flags, then server.extra_args, then the variant's extra_args."""
    _refuse_secrets("server.extra_args", list(plan.server.extra_args))
    _refuse_secrets(f"variant {variant.name}: extra_args", list(variant.extra_args))
    args: list[str] = []
    if model_flag:
        args += ["--model", checkpoint(plan, variant)]
    args += ["--served-model-name", served_name(plan, variant), "--host", host, "--port", str(port)]
    if variant.dtype:
        args += ["--dtype", variant.dtype]
    if variant.quantization:
        args += ["--quantization", variant.quantization]
    if variant.kv_cache_dtype and variant.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", variant.kv_cache_dtype]
        if calculate_kv_scales is None:
            calculate_kv_scales = _asks_kv_scales(plan, variant)
        if calculate_kv_scales and "--calculate-kv-scales" not in flags_in(list(variant.extra_args)):
            args.append("--calculate-kv-scales")
    if plan.server.load_format:
        args += ["--load-format", plan.server.load_format]
    args += list(plan.server.extra_args)
    args += list(variant.extra_args)
    return args


def _asks_kv_scales(plan: Plan, variant: Variant) -> bool:
    """A plan variant's `calculate_kv_scales: true`, where the plan schema has that key."""
    try:
        spec = plan.variant(variant.name)
    except KeyError:
        return False
    return bool(getattr(spec, "calculate_kv_scales", False))


def vllm_argv(plan: Plan, variant: Variant, host: str, port: int,
              calculate_kv_scales: Optional[bool] = None) -> list[str]:
    """The whole argv of the variant's vLLM server (plan.server.program first)."""
    program = list(plan.server.program) or list(DEFAULT_PROGRAM)
    model = checkpoint(plan, variant)
    values = {"model": model, "host": host, "port": str(port), "variant": variant.name,
              "served_model_name": served_name(plan, variant)}
    placed = any("{model}" in p for p in program)
    try:
        program = [p.format(**values) if "{" in p else p for p in program]
    except (KeyError, IndexError, ValueError) as exc:
        raise CommandError(f"server.program: cannot fill {exc} (placeholders: "
                           f"{', '.join('{' + k + '}' for k in PLACEHOLDERS)})") from None
    positional = not placed and program[-1] == "serve"  # `vllm serve MODEL ...`
    args = engine_args(plan, variant, host, port, model_flag=not (placed or positional),
                       calculate_kv_scales=calculate_kv_scales)
    return program + ([model] if positional else []) + args
