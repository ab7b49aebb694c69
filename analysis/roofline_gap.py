"""Why a step ran slower than its roofline bound, from the server's own FLOP and byte counters.

A decode step's bound is the work the model says a step needs (bytes when memory-bound, FLOPs when
compute-bound) at the GPU's ceiling. The measured step takes longer by a factor, the gap. With
vLLM's counters (`--enable-mfu-metrics`) the gap splits exactly in two:

    gap = measured / bound = (server's work per step / the bound's work) x (ceiling / achieved rate)

where the server's work per step is its achieved rate times the measured step time. The first
factor says the server did more (or less) work than the model counts (prefill mixed into decode
steps, padding, dequantisation reads); the second that it did it below the ceiling (kernels,
launch gaps, idle time between steps). The achieved rate is averaged over the measured window,
prefill included, so on a step with many prefills both factors carry some of it.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import pandas as pd

from analysis.roofline import Roofline
from core.hardware.roofline import compute_dtype

COLUMNS = ["variant", "step", "level", "regime", "gap", "work_ratio", "ceiling_ratio", "explanation"]
MISSING = "no server counters (vLLM fills them with --enable-mfu-metrics)"


def _num(x: Any) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(float(x)) and float(x) > 0 else None


def gap_table(roof: Roofline) -> pd.DataFrame:
    """One row per step with a bound and a measured step time."""
    if roof.unavailable or roof.gpu is None or roof.steps.empty:
        return pd.DataFrame(columns=COLUMNS)

    rows = []
    for r in roof.steps.itertuples(index=False):
        bound_s, measured = _num(r.bound_s), _num(r.measured_s)
        if bound_s is None or measured is None or r.regime not in ("memory", "compute"):
            continue
        gap = measured / bound_s
        if r.regime == "memory":
            ceiling = roof.gpu.bandwidth(True)
            work, rate, unit, what = _num(r.memory_s), _num(r.achieved_read_bytes_per_s), "bytes", "bandwidth"
        else:
            weights = roof.kinds[r.variant][0]
            ceiling = roof.gpu.flops(compute_dtype(weights, roof.gpu), True)
            work, rate, unit, what = _num(r.compute_s), _num(r.achieved_flops_per_s), "FLOPs", "compute"
        row = {"variant": r.variant, "step": r.step, "level": r.level, "regime": r.regime, "gap": gap,
               "work_ratio": math.nan, "ceiling_ratio": math.nan}
        if rate is None or work is None:
            row["explanation"] = f"{r.regime}-bound, {gap:.2f}x its bound; {MISSING}"
        else:
            model_work = work * ceiling
            work_ratio = rate * measured / model_work
            ceiling_ratio = ceiling / rate
            row.update(work_ratio=work_ratio, ceiling_ratio=ceiling_ratio,
                       explanation=(f"{r.regime}-bound, {gap:.2f}x its bound = {work_ratio:.2f}x the {unit} the "
                                    f"bound counts per step x {ceiling_ratio:.2f}x below the {what} ceiling "
                                    f"(the server reached {1 / ceiling_ratio:.0%} of it)"))
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)
