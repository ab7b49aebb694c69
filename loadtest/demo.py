"""The demo's plan: four variants of Llama-3-8B on an emulated H100, concurrency 1 to 256.

It is a plan like any other (`ridgeline demo --print-plan > plan.yaml` is a starting point for
one's own); only the step windows are chosen, and the emulated variants swept side by side, so the whole demo
fits in about a minute and a half.
"""

from __future__ import annotations

from core.plan import Plan, parse_plan

DEMO_PLAN = """\
# ridgeline demo: which deployment variant of Llama-3-8B pays on an H100, and until which concurrency?
# Run it with `ridgeline run plan.yaml`. Change backend to vllm (and give each variant a checkpoint
# under `model:`) to measure real servers instead of the built-in emulator.
name: demo
backend: emulator          # emulator | vllm | external
model: llama-3-8b          # catalogue name, or a directory holding config.json
gpu: h100-sxm              # h100-sxm | h200 | a100-80gb | l40s | l4 | rtx-4090
baseline: fp16
variants:
  - name: fp16             # preset fp16: 16-bit weights and KV cache
  - name: awq              # AWQ INT4 weights (awq_marlin)
  - name: gptq             # GPTQ INT4 weights (gptq_marlin)
  - name: fp8kv            # 16-bit weights (bfloat16) with an FP8 KV cache
scenario:
  api: completions
  prompt_tokens: 512
  output_tokens: 256
  ignore_eos: true         # every request generates exactly output_tokens, so runs compare
sweep:
  mode: concurrency
  concurrency: [1, 2, 4, 8, 16, 32, 64, 128, 256]
  # up to 32 a short timed window of steady decoding; from 64 a window by count (two waves of requests,
  # one and a half at 256) from the first request on, prefill bursts included, as vllm bench serve counts
  warmup_s: [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0, 0, 0]      # excluded from the figures
  duration_s: [1.5, 1.5, 1.5, 1.5, 2.5, 2.5, null, null, null]   # tokens that arrive inside it count
  requests: [null, null, null, null, null, null, 128, 256, 384]
  drain_s: [0, 0, 0, 0, 0, 0, 60, 60, 60]   # 0: requests running at the window's end are cancelled and recorded
  variants_at_once: auto   # the emulated variants side by side, measuring the same level at the same
                           # time (docs/demo.md); 1 sweeps one at a time, about twice as long
slo:
  ttft_s: 2.0
  itl_s: 0.1
thresholds: [1.5, 1.2, 1.0]
scrape:
  interval_s: 1.0
output_dir: results
"""


# what the demo prints last: the same experiment on the reader's own GPU and model, in two lines
ON_YOUR_GPU = (
    "On your own GPU and model: `ridgeline demo --print-plan > plan.yaml`, then in it set `backend: vllm`, "
    "`gpu:` and each variant's `model:` (a checkpoint directory or Hugging Face id).",
    "`ridgeline run plan.yaml --dry-run` shows each server's command line; `ridgeline run plan.yaml` measures "
    "them and writes the same report.",
)


def demo_plan() -> Plan:
    return parse_plan(DEMO_PLAN, "<demo plan>")
