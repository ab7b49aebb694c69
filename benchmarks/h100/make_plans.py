"""Write the plans of ridgeline's real-vLLM sweep on the H100 (benchmarks/h100/plan-*.yaml).

One table here fixes what every plan shares, so the plans cannot drift apart:
- the model: Llama-3-8B shape, dummy weights, directories made by make_models.py under /tmp/models;
- the server: vLLM 0.24.0's OpenAI server with the flags of the anchor runs (dummy load format,
  4096-token context, 90% of GPU memory, at most 256 sequences);
- the traffic: 512 prompt tokens (exact, through the made tokenizer), 256 output tokens, ignore_eos;
- the sweep: concurrency 1 to 256, each step's measured window a request count as in the anchors'
  `vllm bench serve` runs (max(12, 4c), 768 at 256), after a short time warm-up;
- the dtypes: float16 for fp16/awq/gptq and bfloat16 for the FP8-KV variants, as the anchors ran
  them (FP8 KV with float16 fails on Hopper); bf16 isolates the dtype from the KV-cache change.

    python3 benchmarks/h100/make_plans.py                 # write the plans beside this file
    python3 benchmarks/h100/make_plans.py --window time --out /tmp/plans   # time windows instead

A window by count per step needs `sweep.requests` to take one count per level; where the plan
schema does not accept that, --window auto (used on the host) writes time windows and says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODELS = "/tmp/models"

CONCURRENCY = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def anchor_count(c: int) -> int:
    """The anchors' `--num-prompts` for concurrency c (vllm bench serve runs in shared/anchors)."""
    return 768 if c >= 256 else max(12, 4 * c)


# name -> (preset, model directory, dtype); the order is the order of the run
VARIANTS: dict[str, tuple[str, str, str]] = {
    "fp16": ("fp16", "fp16", "float16"),
    "awq": ("awq", "awq", "float16"),
    "gptq": ("gptq", "gptq", "float16"),
    "fp8kv": ("fp8kv", "fp16", "bfloat16"),
    "awq-fp8kv": ("awq-fp8kv", "awq", "bfloat16"),
    "bf16": ("bf16", "fp16", "bfloat16"),
}

# plan file -> (run name, variants, baseline, GPU catalogue name)
PLANS: dict[str, tuple[str, list[str], str, str]] = {
    "plan-all.yaml": ("h100-llama3-8b", ["fp16", "awq", "gptq", "fp8kv", "awq-fp8kv", "bf16"], "fp16", "h100-sxm"),
    "plan-fp16.yaml": ("h100-fp16", ["fp16"], "fp16", "h100-sxm"),
    "plan-int4.yaml": ("h100-int4", ["awq", "gptq"], "awq", "h100-sxm"),
    "plan-fp8kv.yaml": ("h100-fp8kv", ["fp8kv", "awq-fp8kv", "bf16"], "bf16", "h100-sxm"),
    # the lent H200: the four variants of the issue in one run, with vllm bench serve beside each
    "plan-h200.yaml": ("h200-llama3-8b", ["fp16", "awq", "gptq", "fp8kv"], "fp16", "h200"),
    # the shared H100 run's cross-check again with the fixed bench (new prompts at every level, hit
    # rates read around each level), each bench level right after ridgeline's step at that concurrency
    "plan-recheck.yaml": ("h100-recheck", ["fp16", "awq"], "fp16", "h100-sxm"),
}
# plans that sweep only some levels (default: CONCURRENCY)
LEVELS: dict[str, list[int]] = {"plan-recheck.yaml": [1, 64, 256]}
# plans that also run vllm bench serve against the same server (variants, concurrency, prompts)
CROSSCHECK: dict[str, tuple[list[str], list[int]]] = {
    "plan-h200.yaml": (["fp16", "awq", "gptq", "fp8kv"], [1, 16, 256]),
    "plan-recheck.yaml": (["fp16", "awq"], [1, 64, 256]),
}
INTERLEAVED = {"plan-recheck.yaml"}

SERVER_ARGS = ["--load-format", "dummy", "--max-model-len", "4096", "--gpu-memory-utilization", "0.90",
               "--max-num-seqs", "256"]


def plan_dict(name: str, variants: list[str], baseline: str, window: str, gpu: str = "h100-sxm",
              crosscheck: Optional[tuple[list[str], list[int]]] = None, levels: Optional[list[int]] = None,
              interleave: bool = False) -> dict[str, Any]:
    levels = list(levels or CONCURRENCY)
    sweep: dict[str, Any] = {"mode": "concurrency", "concurrency": levels, "warmup_s": 2.0,
                             "ramp_s": 0.0, "drain_s": 60.0}
    if window == "count":
        # with vllm bench serve beside it, no warm-up either: both measure the same first requests
        sweep.update(duration_s=None, requests=[anchor_count(c) for c in levels],
                     warmup_s=0.0 if crosscheck else 2.0)
    else:
        sweep.update(warmup_s=3.0, duration_s=12.0)
    extra: dict[str, Any] = {}
    if crosscheck:
        cc_variants, cc_levels = crosscheck
        extra["crosscheck"] = {"variants": cc_variants, "concurrency": cc_levels,
                               "num_prompts": [anchor_count(c) for c in cc_levels], "timeout_s": 300.0,
                               **({"interleave": True} if interleave else {})}
    return {
        "name": name,
        "backend": "vllm",
        "model": "llama-3-8b",
        "gpu": gpu,
        "baseline": baseline,
        "variants": [{"name": v, "preset": VARIANTS[v][0], "model": f"{MODELS}/{VARIANTS[v][1]}",
                      "dtype": VARIANTS[v][2]} for v in variants],
        "scenario": {"api": "completions", "prompt_tokens": 512, "output_tokens": 256, "ignore_eos": True,
                     "tokenizer": f"{MODELS}/fp16", "temperature": 0.0},
        "sweep": sweep,
        "slo": {"ttft_s": 2.0, "itl_s": 0.1},
        "thresholds": [1.5, 1.2, 1.0],
        "server": {"program": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
                   "extra_args": list(SERVER_ARGS),
                   "env": {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"},
                   "placement": "sequential", "startup_timeout_s": 600.0, "on_failure": "skip"},
        "scrape": {"interval_s": 1.0},
        **extra,
        "output_dir": "results",
    }


HEADER = """\
# ridgeline on a real {gpu}: vLLM 0.24.0, Llama-3-8B shape with dummy weights ({window} windows).
# Written by benchmarks/h100/make_plans.py (edit the table there, not this file); see
# benchmarks/h100/README.md for the choices and run_calls.md for how it runs on the device.
"""


def render(plan: dict[str, Any], window: str, gpu: str = "h100-sxm") -> str:
    body = yaml.safe_dump(plan, sort_keys=False, default_flow_style=None, width=110)
    label = {"h100-sxm": "H100", "h200": "H200"}.get(gpu, gpu)
    return HEADER.format(window="by request count" if window == "count" else "time", gpu=label) + body


def accepted(text: str, source: str) -> Optional[str]:
    """None when the plan schema takes the plan, else its error."""
    sys.path.insert(0, str(REPO))
    from core.plan import PlanError, parse_plan

    try:
        parse_plan(text, source)
    except PlanError as exc:
        return str(exc)
    return None


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="where the plan files go")
    ap.add_argument("--window", choices=["count", "time", "auto"], default="count",
                    help="count: per-step request counts as the anchors; time: a fixed measured window; "
                         "auto: count where the plan schema takes it, else time")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    status = 0
    for fname, (name, variants, baseline, gpu) in PLANS.items():
        window = "count" if args.window == "auto" else args.window
        cc = CROSSCHECK.get(fname)
        keys = {"levels": LEVELS.get(fname), "interleave": fname in INTERLEAVED}
        text = render(plan_dict(name, variants, baseline, window, gpu, cc, **keys), window, gpu)
        problem = accepted(text, fname)
        if problem and args.window == "auto":
            print(f"{fname}: windows by count not accepted here, writing time windows:\n{problem}")
            window = "time"
            text = render(plan_dict(name, variants, baseline, window, gpu, cc, **keys), window, gpu)
            problem = accepted(text, fname)
        (args.out / fname).write_text(text)
        print(f"wrote {args.out / fname} ({window} windows)" + (f"\n  NOT ACCEPTED: {problem}" if problem else ""))
        status |= 1 if problem else 0
    return status


if __name__ == "__main__":
    sys.exit(main())
