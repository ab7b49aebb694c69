"""Defaults a plan gets when it leaves a key out, in one place.

The plan schema (core.plan) fills them in when a plan is read; the analysis (analysis.data) falls
back to the same values for a results directory whose manifest predates a key, so an old run and a
new one are judged by the same service levels and thresholds.
"""

from __future__ import annotations

DEFAULT_MODEL = "llama-3-8b"  # catalogue name (roofline and emulator)
DEFAULT_GPU = "h100-sxm"  # GPU catalogue name (roofline and emulator)
DEFAULT_THRESHOLDS = (1.5, 1.2, 1.0)  # speedups whose crossover levels the report names

# per-request service levels (None: not checked)
DEFAULT_TTFT_S = 2.0
DEFAULT_ITL_S = 0.1  # per-request p99 inter-token gap
DEFAULT_TPOT_S = None
DEFAULT_E2E_S = None
