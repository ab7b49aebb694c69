"""GPU telemetry as the results directory holds it: the metric vocabulary and the files.

The samplers (NVML, DCGM exporter, the emulator's modelled power) live in ``loadtest.telemetry``;
what they write, and what ``analysis`` reads back, is described here once: the ``gpu:`` metric
names, the NVML clocks-event reason bits, and ``<run>/telemetry/<variant>/step-NNN.parquet`` in
the scraped-series schema (``core.records.METRIC_SCHEMA``) with labels ``{gpu, source}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import RidgelineError
from core.records import METRIC_SCHEMA
from core.results import ResultsError, RunDir, atomic_write_table, safe_child

# --- the vocabulary ----------------------------------------------------------------------------

POWER = "gpu:power_watts"
ENERGY = "gpu:energy_joules_total"  # cumulative; differences give a step's energy
UTIL = "gpu:util_percent"  # share of time a kernel ran (nvidia-smi's GPU-Util), not SM occupancy
MEM_UTIL = "gpu:mem_util_percent"  # share of time device memory was read or written
SM_CLOCK = "gpu:sm_clock_mhz"
MEM_CLOCK = "gpu:mem_clock_mhz"
MEM_USED = "gpu:memory_used_bytes"
TEMP = "gpu:temperature_celsius"
CLOCK_REASONS = "gpu:clock_event_reasons"  # NVML clocks-event (throttle) reason bitmask
POWER_LIMIT = "gpu:power_limit_watts"
SM_ACTIVE = "gpu:sm_active_ratio"  # DCGM profiling field, when the exporter has it enabled
DRAM_ACTIVE = "gpu:dram_active_ratio"
POWER_VIOLATION = "gpu:power_violation_us_total"  # DCGM: time held back by the power limit
THERMAL_VIOLATION = "gpu:thermal_violation_us_total"
GAP = "gpu:sample_gap"  # a failed sample (value 1)

SOURCES = ("nvml", "dcgm", "modelled")

# NVML clocks-event reasons (nvmlClocksEventReason*): bit -> name
REASON_BITS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# Reasons that make a step incomparable: the clocks were pulled down by heat or by the board.
# The software power cap (0x4) is kept apart: a saturated GPU runs at its power limit by design.
THROTTLE_MASK = 0x8 | 0x20 | 0x40 | 0x80
POWER_CAP_MASK = 0x4


class TelemetryError(RidgelineError, RuntimeError):
    """A telemetry source that cannot be used as configured; the message says which and why."""


Reading = tuple[str, dict[str, str], float]  # (metric, labels, value)


def labels_json(labels: dict[str, str]) -> str:
    """Canonical labels, as the scraper writes them."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


# --- the results directory ---------------------------------------------------------------------

TELEMETRY_DIR = "telemetry"


def telemetry_path(run: Union[RunDir, str, Path], variant: str, step: int) -> Path:
    """<run>/telemetry/<variant>/step-NNN.parquet (beside metrics/ and requests/)."""
    root = run.path if isinstance(run, RunDir) else Path(run)
    return safe_child(root, TELEMETRY_DIR, variant, f"step-{step:03d}.parquet")


def write_telemetry(run: Union[RunDir, str, Path], variant: str, step: int, table: pa.Table) -> Path:
    path = telemetry_path(run, variant, step)
    atomic_write_table(path, table.cast(METRIC_SCHEMA))
    return path


def read_telemetry(run: Union[RunDir, str, Path], decode_labels: bool = True) -> pd.DataFrame:
    """Every telemetry sample of a run; with decode_labels, `gpu` and `source` become columns."""
    root = (run.path if isinstance(run, RunDir) else Path(run)) / TELEMETRY_DIR
    files = sorted(p for p in root.glob("*/step-*.parquet") if not p.name.startswith(".")) if root.exists() else []
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, schema=METRIC_SCHEMA))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ResultsError(f"{f}: cannot be read ({exc})") from None
    df = (pa.concat_tables(tables) if tables else METRIC_SCHEMA.empty_table()).to_pandas()
    if decode_labels:
        decoded = [json.loads(x) if x else {} for x in df["labels"]]
        df["gpu"] = [d.get("gpu") for d in decoded]
        df["source"] = [d.get("source") for d in decoded]
    return df


def reasons_text(mask: int) -> list[str]:
    """Names of the NVML clocks-event reasons set in a bitmask."""
    return [name for bit, name in REASON_BITS.items() if mask & bit]
