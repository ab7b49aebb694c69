"""The row every request leaves behind, and the step it belongs to.

These two records are the whole vocabulary between the load generator and the analysis: the
results directory stores them and nothing downstream needs to know how they were measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import pyarrow as pa

# status of a request
OK = "ok"
ERROR = "error"
CANCELLED = "cancelled"  # still in flight when the step's drain ran out

# phase of a request within its step, by send time
WARMUP = "warmup"
MEASURE = "measure"
DRAIN = "drain"


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it. Times are epoch seconds; durations are seconds."""

    variant: str
    step: int
    concurrency: Optional[int]
    rate: Optional[float]
    request_id: str
    phase: str
    send_time: float
    scheduled_time: Optional[float] = None  # open loop: when the schedule said to send
    ttft_s: Optional[float] = None  # to the first token event, empty text or not
    itl_s: list[float] = field(default_factory=list)  # gaps between token events
    e2e_s: Optional[float] = None
    prompt_tokens: Optional[int] = None  # from the usage event when the server sent one
    output_tokens: Optional[int] = None  # from usage, else the count of token events
    token_events: int = 0
    status: str = OK
    error_kind: Optional[str] = None
    error: Optional[str] = None
    http_status: Optional[int] = None
    worker: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


REQUEST_SCHEMA = pa.schema(
    [
        ("variant", pa.string()),
        ("step", pa.int32()),
        ("concurrency", pa.int32()),
        ("rate", pa.float64()),
        ("request_id", pa.string()),
        ("phase", pa.string()),
        ("send_time", pa.float64()),
        ("scheduled_time", pa.float64()),
        ("ttft_s", pa.float64()),
        ("itl_s", pa.list_(pa.float32())),
        ("e2e_s", pa.float64()),
        ("prompt_tokens", pa.int32()),
        ("output_tokens", pa.int32()),
        ("token_events", pa.int32()),
        ("status", pa.string()),
        ("error_kind", pa.string()),
        ("error", pa.string()),
        ("http_status", pa.int32()),
        ("worker", pa.string()),
    ]
)

# the scraped server metrics, one row per sample per scrape
METRIC_SCHEMA = pa.schema(
    [
        ("time", pa.float64()),
        ("variant", pa.string()),
        ("step", pa.int32()),
        ("metric", pa.string()),  # the sample name, e.g. vllm:time_to_first_token_seconds_bucket
        ("labels", pa.string()),  # canonical JSON of the sample's labels (sorted keys)
        ("value", pa.float64()),
    ]
)


def records_to_table(records: list[RequestRecord]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in REQUEST_SCHEMA.names}
    for r in records:
        for name in REQUEST_SCHEMA.names:
            cols[name].append(getattr(r, name))
    return pa.table(cols, schema=REQUEST_SCHEMA)


# status of a step in the manifest
STEP_COMPLETE = "complete"
STEP_FAILED = "failed"  # the server died or the step could not run; the records kept are partial
STEP_INCOMPLETE = "incomplete"  # the run was interrupted in this step


@dataclass(slots=True)
class StepInfo:
    """One load level of one variant, as written in the manifest."""

    variant: str
    step: int
    concurrency: Optional[int]
    rate: Optional[float]
    status: str
    started: float
    ended: Optional[float] = None
    window_start: Optional[float] = None  # the measured window, epoch seconds
    window_end: Optional[float] = None
    sent: int = 0
    recorded: int = 0
    error: Optional[str] = None
    client_cpu_max: Optional[float] = None  # percent of one core, the busiest client process
    client_saturated: bool = False
    repeat: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StepInfo":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)
