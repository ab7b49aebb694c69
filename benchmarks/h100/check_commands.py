"""Check, without a GPU, the vLLM command line each H100 plan would start, variant by variant.

A wrong flag costs a device call; this prints every server's argv (as `ridgeline run --dry-run`
does) and checks what the sweep depends on: the variant's model directory and dtype, the FP8 KV
cache exactly where planned, a --quantization value that agrees with the directory's
quantization_config, the anchors' server flags, and the offline environment.

    python3 benchmarks/h100/check_commands.py                      # the committed plan-*.yaml
    python3 benchmarks/h100/check_commands.py /tmp/plans/plan-all.yaml
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.h100.make_plans import SERVER_ARGS, VARIANTS  # noqa: E402

# the --quantization values vLLM 0.24.0 resolves to the checkpoint's own method
QUANT_OK = {"awq": {None, "awq", "awq_marlin"}, "gptq": {None, "gptq", "gptq_marlin"}, None: {None}}


def flag(argv: list[str], name: str) -> Optional[str]:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def check_plan(path: Path) -> list[str]:
    from core.plan import load_plan
    from deploy.servers import server_commands

    plan = load_plan(path)
    problems = []
    for cmd in server_commands(plan):
        argv = list(cmd.argv)
        print(f"# {path.name} {cmd.variant}\n" + " ".join(shlex.quote(a) for a in argv))
        _, model_dir, dtype = VARIANTS[cmd.variant]
        want_model = f"/tmp/models/{model_dir}"
        got_model = flag(argv, "--model") or next((a for a in argv if a.startswith("/tmp/models/")), None)
        if got_model != want_model:
            problems.append(f"{cmd.variant}: model {got_model}, planned {want_model}")
        if flag(argv, "--dtype") != dtype:
            problems.append(f"{cmd.variant}: --dtype {flag(argv, '--dtype')}, planned {dtype}")
        kv = flag(argv, "--kv-cache-dtype") or "auto"
        if (kv.startswith("fp8")) != ("fp8kv" in cmd.variant):
            problems.append(f"{cmd.variant}: --kv-cache-dtype {kv}")
        local = Path(want_model) / "config.json"
        if local.exists():
            qc = json.loads(local.read_text()).get("quantization_config", {}).get("quant_method")
        else:
            qc = {"fp16": None, "awq": "awq", "gptq": "gptq"}[model_dir]
        q = flag(argv, "--quantization")
        if q not in QUANT_OK[qc]:
            problems.append(f"{cmd.variant}: --quantization {q} for a {qc or 'unquantized'} directory")
        pairs = list(zip(SERVER_ARGS[::2], SERVER_ARGS[1::2]))
        if any(flag(argv, k) != v for k, v in pairs):
            problems.append(f"{cmd.variant}: the anchors' flags {' '.join(SERVER_ARGS)} are not all there")
        env = dict(cmd.env)
        for k in ("HF_HUB_OFFLINE", "VLLM_NO_USAGE_STATS"):
            if env.get(k) != "1":
                problems.append(f"{cmd.variant}: environment {k}={env.get(k)}")
    return problems


def main(argv: Optional[list[str]] = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    plans = [Path(a) for a in args] or sorted(HERE.glob("plan-*.yaml"))
    problems = []
    for p in plans:
        try:
            problems += check_plan(p)
        except Exception as exc:  # noqa: BLE001 - a plan that cannot even be rendered is the finding
            problems.append(f"{p}: {type(exc).__name__}: {exc}")
    for line in problems:
        print("PROBLEM " + line)
    print(f"checked {len(plans)} plan(s): {'ok' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
