"""Poll a server's Prometheus /metrics during a step and keep every `vllm:` sample as a long series.

Parsing is prometheus_client's own exposition parser. A failed scrape is a gap (recorded, never an
error), so a server that stalls under load still leaves a readable series around the stall.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Optional

import pyarrow as pa
from prometheus_client.parser import text_string_to_metric_families

from loadtest.records import METRIC_SCHEMA

KEEP_PREFIXES = ("vllm:", "ridgeline_emulator:")
GAP = "ridgeline:scrape_gap"  # a row with this metric name marks a failed scrape (value: 1)
UP = "ridgeline:scrape_up"


def parse_metrics(text: str, prefixes: tuple[str, ...] = KEEP_PREFIXES) -> list[tuple[str, str, float]]:
    """(sample name, canonical labels JSON, value) of every sample in families we keep."""
    out: list[tuple[str, str, float]] = []
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith(prefixes):
            continue
        for s in fam.samples:
            out.append((s.name, json.dumps(s.labels, sort_keys=True, separators=(",", ":")), float(s.value)))
    return out


def fetch(url: str, timeout: float = 5.0, headers: Optional[dict[str, str]] = None) -> str:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode("utf-8", "replace")


@dataclass
class SeriesBuffer:
    """Columns of scraped samples for one step, turned into an Arrow table at the end."""

    time: list[float] = field(default_factory=list)
    variant: list[str] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    failures: int = 0
    scrapes: int = 0
    last_error: Optional[str] = None

    def add(self, t: float, variant: str, step: int, rows: list[tuple[str, str, float]]) -> None:
        n = len(rows)
        self.time.extend([t] * n)
        self.variant.extend([variant] * n)
        self.step.extend([step] * n)
        for name, labels, value in rows:
            self.metric.append(name)
            self.labels.append(labels)
            self.value.append(value)

    def table(self) -> pa.Table:
        return pa.table(
            {"time": self.time, "variant": self.variant, "step": self.step, "metric": self.metric,
             "labels": self.labels, "value": self.value},
            schema=METRIC_SCHEMA,
        )


class Scraper:
    """Scrapes one URL into a buffer; `scrape_once` is called by whatever loop owns the clock."""

    def __init__(self, metrics_url: str, variant: str, timeout: float = 5.0,
                 headers: Optional[dict[str, str]] = None,
                 on_sample: Optional[Callable[[float, list[tuple[str, str, float]]], None]] = None):
        self.url = metrics_url
        self.variant = variant
        self.timeout = timeout
        self.headers = headers
        self.on_sample = on_sample
        self.buffer = SeriesBuffer()
        self.step = -1

    def new_step(self, step: int) -> SeriesBuffer:
        """Start a new buffer for the next step; returns the finished one."""
        done, self.buffer = self.buffer, SeriesBuffer()
        self.step = step
        return done

    def scrape_once(self) -> bool:
        t = time.time()
        self.buffer.scrapes += 1
        try:
            rows = parse_metrics(fetch(self.url, self.timeout, self.headers))
        except (urllib.error.URLError, OSError, ValueError, UnicodeError) as exc:
            self.buffer.failures += 1
            self.buffer.last_error = f"{type(exc).__name__}: {exc}"
            self.buffer.add(t, self.variant, self.step, [(GAP, "{}", 1.0)])
            return False
        rows.append((UP, "{}", 1.0))
        self.buffer.add(t, self.variant, self.step, rows)
        if self.on_sample is not None:
            self.on_sample(t, rows)
        return True
