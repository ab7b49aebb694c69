"""Poll a server's Prometheus /metrics during a step and keep every `vllm:` sample as a long series.

Parsing is prometheus_client's own exposition parser. Nothing a server does to its metrics page is
an error here: a failed scrape (refused, timed out, HTTP error, unparsable page) leaves a gap row,
and a scrape whose cumulative series went down (the server restarted) leaves a reset row, so the
analysis can cut counter deltas at both instead of reading a restart as negative throughput.

Rows written per scrape (all in records.METRIC_SCHEMA, `time` = when the scrape began):
- every sample of the kept families (`vllm:`, `ridgeline_emulator:`), labels as canonical JSON;
- `ridgeline:scrape_up` (1) and `ridgeline:scrape_duration_seconds` on success;
- `ridgeline:scrape_gap` (1, labels {"reason": ...}) on failure, instead of any sample;
- `ridgeline:counter_reset` (number of series that went down, at least 1 when the server's start
  time changed) on the first good scrape after a restart.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import pyarrow as pa
from prometheus_client.parser import text_string_to_metric_families

from core.records import METRIC_SCHEMA

KEEP_PREFIXES = ("vllm:", "ridgeline_emulator:")
GAP = "ridgeline:scrape_gap"  # a failed scrape (value 1, labels {"reason": ...})
UP = "ridgeline:scrape_up"  # a good scrape (value 1)
DURATION = "ridgeline:scrape_duration_seconds"  # how long a good scrape took
RESET = "ridgeline:counter_reset"  # cumulative series went down since the last good scrape
MARKERS = (GAP, UP, DURATION, RESET)

# sample suffixes of the cumulative parts of histograms and summaries
_CUMULATIVE_SUFFIXES = ("_bucket", "_count", "_sum", "_total")
_START_TIME = "process_start_time_seconds"

Row = tuple[str, str, float]  # (sample name, canonical labels JSON, value)


def labels_json(labels: dict[str, str]) -> str:
    """Canonical labels: sorted keys, no spaces, so equal label sets compare equal as strings."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def is_cumulative_name(sample: str) -> bool:
    """By name alone: counters (`_total`) and the bucket/count/sum parts of histograms."""
    return sample.endswith(_CUMULATIVE_SUFFIXES) and not sample.endswith("_created")


@dataclass
class Page:
    """One parsed /metrics page: the kept rows, their cumulative values, and the start time."""

    rows: list[Row] = field(default_factory=list)
    cumulative: dict[tuple[str, str], float] = field(default_factory=dict)
    created: dict[tuple[str, str], float] = field(default_factory=dict)  # `_created` series
    start_time: Optional[float] = None  # process_start_time_seconds, when the page has it


def parse_page(text: str, prefixes: tuple[str, ...] = KEEP_PREFIXES) -> Page:
    """Parse an exposition page; raise ValueError if it is not one."""
    page = Page()
    for fam in text_string_to_metric_families(text):
        if fam.name == _START_TIME:
            for s in fam.samples:
                page.start_time = float(s.value)
            continue
        if not fam.name.startswith(prefixes):
            continue
        cumulative_type = fam.type in ("counter", "histogram", "summary", "gaugehistogram")
        for s in fam.samples:
            # an empty label is no label to Prometheus; drop it so both sources give equal keys
            key = (s.name, labels_json({k: v for k, v in s.labels.items() if v != ""}))
            value = float(s.value)
            page.rows.append((key[0], key[1], value))
            if s.name.endswith("_created"):
                page.created[key] = value
            elif cumulative_type and fam.type != "gaugehistogram" and s.name.endswith(_CUMULATIVE_SUFFIXES):
                page.cumulative[key] = value
            elif fam.type == "unknown" and is_cumulative_name(s.name):
                page.cumulative[key] = value
    return page


def parse_metrics(text: str, prefixes: tuple[str, ...] = KEEP_PREFIXES) -> list[Row]:
    """(sample name, canonical labels JSON, value) of every sample in families we keep."""
    return parse_page(text, prefixes).rows


def count_resets(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> int:
    """How many cumulative series went down between two scrapes (a restarted server)."""
    n = 0
    for key, v in after.items():
        old = before.get(key)
        if old is not None and not math.isnan(v) and not math.isnan(old) and v < old:
            n += 1
    return n


def restarted(before: Page, after: Page) -> bool:
    """True when the server's own start or creation times say it is a new process."""
    if before.start_time is not None and after.start_time is not None and before.start_time != after.start_time:
        return True
    return any(before.created.get(k, v) != v for k, v in after.created.items())


def fetch(url: str, timeout: float = 5.0, headers: Optional[dict[str, str]] = None) -> str:
    """GET a text page; raises urllib/OSError errors as they come."""
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode("utf-8", "replace")


def failure_reason(exc: BaseException) -> str:
    """A short, stable name for why a scrape failed (a label value, so few distinct ones)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"http_{exc.code}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionError, OSError)):
        return "connection"
    if isinstance(exc, (ValueError, UnicodeError)):
        return "parse"
    return type(exc).__name__


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
    resets: int = 0
    last_error: Optional[str] = None

    def add(self, t: float, variant: str, step: int, rows: Iterable[Row]) -> None:
        for name, labels, value in rows:
            self.time.append(t)
            self.variant.append(variant)
            self.step.append(step)
            self.metric.append(name)
            self.labels.append(labels)
            self.value.append(value)

    def __len__(self) -> int:
        return len(self.time)

    def table(self) -> pa.Table:
        return pa.table(
            {"time": self.time, "variant": self.variant, "step": self.step, "metric": self.metric,
             "labels": self.labels, "value": self.value},
            schema=METRIC_SCHEMA,
        )


class Scraper:
    """Scrapes one URL into a per-step buffer, on its own clock (`start`/`stop`) or by `scrape_once`.

    The last good page is kept across steps, so a restart between two steps is still seen.
    """

    def __init__(self, metrics_url: str, variant: str, timeout: float = 5.0,
                 headers: Optional[dict[str, str]] = None,
                 on_sample: Optional[Callable[[float, list[Row]], None]] = None,
                 interval: float = 1.0, prefixes: tuple[str, ...] = KEEP_PREFIXES, max_server_share: float = 0.0):
        if interval <= 0:
            raise ValueError(f"scrape interval must be above 0 s, got {interval}")
        if timeout <= 0:
            raise ValueError(f"scrape timeout must be above 0 s, got {timeout}")
        self.url = metrics_url
        self.variant = variant
        self.timeout = timeout
        self.headers = headers
        self.on_sample = on_sample
        self.interval = interval
        # rendering /metrics holds the server's API process; on a busy CPU host a scrape can take 0.1 s,
        # and every 0.5 s that cost the CPU engine 30% of its throughput. With a share, the loop waits at
        # least (recent scrape time / share) between scrapes, so scraping never takes more than that share
        self.max_server_share = max_server_share
        self.widest_interval = interval
        self._recent: list[float] = []
        self.prefixes = prefixes
        self.buffer = SeriesBuffer()
        self.step = -1
        self._last: Optional[Page] = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def new_step(self, step: int) -> SeriesBuffer:
        """Start a new buffer for the next step; returns the finished one."""
        with self._lock:
            done, self.buffer = self.buffer, SeriesBuffer()
            self.step = step
        return done

    def scrape_once(self) -> bool:
        """One scrape into the buffer; False (and a gap row) when it failed."""
        t = time.time()
        t0 = time.perf_counter()
        try:
            page = parse_page(fetch(self.url, self.timeout, self.headers), self.prefixes)
        except Exception as exc:  # noqa: BLE001 - any failure of the server's page is a gap, not an error
            reason = failure_reason(exc)
            with self._lock:
                self.buffer.scrapes += 1
                self.buffer.failures += 1
                self.buffer.last_error = f"{type(exc).__name__}: {exc}"
                self.buffer.add(t, self.variant, self.step, [(GAP, labels_json({"reason": reason}), 1.0)])
            return False
        took = time.perf_counter() - t0
        self._recent = (self._recent + [took])[-5:]
        rows = page.rows
        rows.append((UP, "{}", 1.0))
        rows.append((DURATION, "{}", took))
        if self._last is not None:
            n = count_resets(self._last.cumulative, page.cumulative)
            if n or restarted(self._last, page):
                rows.append((RESET, "{}", float(max(n, 1))))
        with self._lock:
            self.buffer.scrapes += 1
            if rows[-1][0] == RESET:
                self.buffer.resets += 1
            self.buffer.add(t, self.variant, self.step, rows)
        self._last = page
        if self.on_sample is not None:
            self.on_sample(t, rows)
        return True

    # ------------------------------------------------------------------ its own clock
    def start(self) -> "Scraper":
        """Scrape now and then every `interval` s in the background until `stop`.

        Ticks keep to a fixed grid; a scrape that overruns (up to `timeout`) skips the ticks it
        missed rather than bunching them, so the series stays evenly spaced.
        """
        if self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"scrape-{self.variant}", daemon=True)
        self._thread.start()
        return self

    def current_interval(self) -> float:
        """The plan's interval, or longer where recent scrapes were slow (see max_server_share)."""
        if self.max_server_share <= 0 or not self._recent:
            return self.interval
        typical = sorted(self._recent)[len(self._recent) // 2]
        return max(self.interval, typical / self.max_server_share)

    def _loop(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            self.scrape_once()
            every = self.current_interval()
            self.widest_interval = max(self.widest_interval, every)
            nxt += every
            now = time.monotonic()
            if nxt < now:
                nxt += math.ceil((now - nxt) / every) * every
            self._stop.wait(nxt - now)

    def stop(self, final: bool = True) -> None:
        """Stop the background loop; with `final`, one last scrape so the step's end is covered."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(self.timeout + 1.0)
        if final:
            self.scrape_once()
