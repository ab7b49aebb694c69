"""Calibration check: the emulated GPU (simulated time) against vLLM 0.24.0 measured on a real one.

Runs the emulator's scheduler and perf model in a discrete-event loop driven like ridgeline's GPU
sweeps (closed loop, 512 prompt / 256 output tokens, ignore_eos, max(12, 4 x C) requests, 768 at
C=256) and prints predicted vs measured output tokens/s, median TTFT, ITL and TPOT with the error,
then the speedups over fp16. Also prints a few other GPUs and models.

    python benchmarks/emulator_calibration.py [--calibration '{"step_overhead_s": 0.001}']   # the H100 sweep
    python benchmarks/emulator_calibration.py --gpu h200    # against ridgeline's own H200 sweep
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.emulator.calibration import H200_BENCH, check, format_speedups, format_table  # noqa: E402
from deploy.emulator.perf_model import calibration_for  # noqa: E402
from deploy.emulator.sim import run_point  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibration", default=None, help="JSON object overriding perf-model constants")
    ap.add_argument("--tolerance", type=float, default=0.15)
    ap.add_argument("--gpu", default="h100-sxm", choices=["h100-sxm", "h200"], help="whose measurements to check")
    a = ap.parse_args()
    overrides = json.loads(a.calibration) if a.calibration else None
    cal = calibration_for(a.gpu, overrides)
    t0 = time.perf_counter()
    if a.gpu == "h200":
        rows = check(cal, gpu="h200", concurrencies=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        print(format_table(rows))
        print()
        print("vllm bench serve on the same fp16 server:",
              ", ".join(f"C={c} {m['tok_s']:.0f} tok/s (emulated {r.predicted.output_throughput:.0f}, "
                        f"{100 * (r.predicted.output_throughput / m['tok_s'] - 1):+.0f}%)"
                        for (v, c), m in H200_BENCH.items() for r in rows if (r.variant, r.concurrency) == (v, c)))
    else:
        rows = check(cal, variants=("fp16", "awq", "gptq", "fp8kv"), concurrencies=(1, 4, 16, 64, 128, 256))
        print(format_table(rows))
    print()
    print(format_speedups(rows, gpu=a.gpu))
    errs = [(r.variant, r.concurrency, k, r.error(k)) for r in rows for k in ("tok_s", "ttft_ms", "itl_ms")
            if r.error(k) is not None]
    worst = max(errs, key=lambda e: abs(e[3]))
    over = [e for e in errs if abs(e[3]) > a.tolerance]
    print()
    print(f"{len(errs)} measured figures (tok/s, median TTFT, median ITL); worst {worst[0]} C={worst[1]} {worst[2]} "
          f"{100 * worst[3]:+.1f}%; {len(over)} beyond {100 * a.tolerance:.0f}%: "
          + (", ".join(f"{v} C={c} {k} {100 * e:+.0f}%" for v, c, k, e in over) or "none"))
    print()
    print("Other GPUs and models (fp16 unless named, 512/256 tokens, output tok/s at C=1 / 64 / 256):")
    for gpu, model, w in [("h100-sxm", "llama-3-8b", "fp16"), ("h200", "llama-3-8b", "fp16"),
                          ("a100-80gb", "llama-3-8b", "fp16"), ("l40s", "llama-3-8b", "fp16"),
                          ("l4", "llama-3-8b", "awq"), ("rtx-4090", "llama-3-8b", "awq"),
                          ("h100-sxm", "qwen2.5-7b", "fp16"), ("h100-sxm", "llama-3-70b", "awq"),
                          ("h200", "llama-3-70b", "awq"), ("a100-80gb", "llama-3-8b", "awq")]:
        cells = []
        for c in (1, 64, 256):
            r = run_point(w, "auto", c, gpu=gpu, model=model, calibration=calibration_for(gpu, overrides),
                          num_prompts=max(12, 2 * c),
                          max_model_len=4096)
            cells.append(f"{r.output_throughput:.0f}")
        print(f"  {gpu:10s} {model:12s} {w:5s} " + " / ".join(cells))
    print(f"\n({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
