"""The load generator's own metrics, served for Prometheus while a run goes on.

Operators watch the server's /metrics; this puts the client's view beside it on the same
dashboard: what was sent, what came back, how long it took as the client measured it, and which
variant, step and load level the run is in. It is fed with every RequestRecord as it is recorded
(StepControl.on_record) and reads in-flight and sent counts from the driver, so it adds nothing
to the request path beyond a few counter increments.

With Locust workers the exporter runs in the master only: workers send their records to the
master, which feeds them here, so Prometheus scrapes one target however many workers there are.

Every metric is prefixed `ridgeline_client_`; request metrics carry the labels
variant, step, concurrency and rate (the one that does not apply to the step is "").
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server

from core.records import OK, RequestRecord

PREFIX = "ridgeline_client_"
STEP_LABELS = ("variant", "step", "concurrency", "rate")

# vLLM's own buckets, with finer ones below where a fast GPU's latencies fall, so client and server
# percentiles of the same request come from comparable bucket edges
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
               1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)

# the names a dashboard may use (sample names as Prometheus stores them)
METRIC_NAMES = (
    "ridgeline_client_requests_sent_total",
    "ridgeline_client_requests_in_flight",
    "ridgeline_client_requests_succeeded_total",
    "ridgeline_client_requests_failed_total",
    "ridgeline_client_output_tokens_total",
    "ridgeline_client_prompt_tokens_total",
    "ridgeline_client_time_to_first_token_seconds",
    "ridgeline_client_inter_token_latency_seconds",
    "ridgeline_client_e2e_request_latency_seconds",
    "ridgeline_client_step_info",
    "ridgeline_client_step",
    "ridgeline_client_target_concurrency",
    "ridgeline_client_target_rate",
)


def step_labels(variant: str, step: int, concurrency: Optional[int], rate: Optional[float]) -> dict[str, str]:
    """The label values of one step, as every request metric carries them."""
    return {"variant": variant, "step": str(step),
            "concurrency": "" if concurrency is None else str(int(concurrency)),
            "rate": "" if rate is None else f"{rate:g}"}


@dataclass
class _Step:
    labels: dict[str, str]
    concurrency: Optional[int]
    rate: Optional[float]
    sent: Callable[[], int]
    in_flight: Callable[[], int]


class _LiveCollector:
    """What is read from the driver at scrape time: sent, in flight, and the current step."""

    def __init__(self, exporter: "ClientExporter"):
        self.x = exporter

    def collect(self) -> Iterator[Metric]:
        x = self.x
        with x._lock:
            x._collects = (x._collects[-1], time.time())
            cur = x._current
            frozen = dict(x._sent_done)
        sent = CounterMetricFamily(PREFIX + "requests_sent", "Requests sent by the load generator.",
                                   labels=STEP_LABELS)
        for key, n in frozen.items():
            sent.add_metric(list(key), n)
        in_flight = GaugeMetricFamily(PREFIX + "requests_in_flight",
                                      "Requests sent and not yet finished, in the current step.",
                                      labels=STEP_LABELS)
        info = GaugeMetricFamily(PREFIX + "step_info", "1 for the step the run is in now (labels say which).",
                                 labels=STEP_LABELS)
        step = GaugeMetricFamily(PREFIX + "step", "Index of the step the run is in now (-1 between steps).")
        conc = GaugeMetricFamily(PREFIX + "target_concurrency",
                                 "Target concurrency of the current step (closed loop).", labels=["variant"])
        rate = GaugeMetricFamily(PREFIX + "target_rate",
                                 "Target request rate of the current step, requests/s (open loop).",
                                 labels=["variant"])
        if cur is not None:
            vals = [cur.labels[k] for k in STEP_LABELS]
            key = tuple(vals)
            if key not in frozen:
                sent.add_metric(vals, _safe(cur.sent))
            in_flight.add_metric(vals, _safe(cur.in_flight))
            info.add_metric(vals, 1.0)
            step.add_metric([], float(cur.labels["step"]))
            if cur.concurrency is not None:
                conc.add_metric([cur.labels["variant"]], float(cur.concurrency))
            if cur.rate is not None:
                rate.add_metric([cur.labels["variant"]], float(cur.rate))
        else:
            step.add_metric([], -1.0)
        yield from (sent, in_flight, info, step, conc, rate)


def _safe(fn: Callable[[], int]) -> float:
    try:
        return float(fn())
    except Exception:  # noqa: BLE001 - a driver that cannot answer now shows 0, never breaks a scrape
        return 0.0


class ClientExporter:
    """The client's metrics on their own registry and HTTP server (127.0.0.1 unless told otherwise)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, registry: Optional[CollectorRegistry] = None):
        if not 0 <= port <= 65535:
            raise ValueError(f"exporter port must be 0 (any free port) to 65535, got {port}")
        self.host = host
        self.requested_port = port
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._current: Optional[_Step] = None
        self._sent_done: dict[tuple[str, ...], float] = {}
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self._collects: tuple[float, float] = (0.0, 0.0)  # times of the last two scrapes
        labels = list(STEP_LABELS)
        r = self.registry
        self.succeeded = Counter(PREFIX + "requests_succeeded", "Requests that ended with their last token.",
                                 labels, registry=r)
        self.failed = Counter(PREFIX + "requests_failed", "Requests that failed or were cancelled, by error kind.",
                              labels + ["error_kind"], registry=r)
        self.output_tokens = Counter(PREFIX + "output_tokens", "Output tokens received by the client.",
                                     labels, registry=r)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens of the requests that finished.",
                                     labels, registry=r)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds",
                              "Time from send to the first token event, as the client saw it.",
                              labels, buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds",
                             "Gaps between token events, as the client saw them.",
                             labels, buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds",
                             "Time from send to the end of the response, as the client saw it.",
                             labels, buckets=E2E_BUCKETS, registry=r)
        r.register(_LiveCollector(self))

    # ------------------------------------------------------------------ the server
    def start(self) -> "ClientExporter":
        """Bind and serve /metrics in a daemon thread; `port` 0 picks a free one (see .port)."""
        if self._server is None:
            self._server, self._thread = start_http_server(self.requested_port, addr=self.host,
                                                           registry=self.registry)
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the exporter is not started")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self, linger_max_s: float = 10.0) -> None:
        """Stop serving and free the port; safe to call twice.

        If something has been scraping it, wait (up to two of its scrape intervals, at most
        `linger_max_s`) for one more scrape, so the last requests of the run are not lost.
        """
        prev, last = self._collects
        if self._server is not None and prev > 0 and linger_max_s > 0:
            t0 = time.time()
            deadline = t0 + min(2 * max(last - prev, 0.05), linger_max_s)
            while self._collects[1] < t0 and time.time() < deadline:
                time.sleep(0.05)
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self) -> "ClientExporter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ feeding it
    def begin_step(self, variant: str, step: int, concurrency: Optional[int], rate: Optional[float],
                   sent: Callable[[], int] = lambda: 0, in_flight: Callable[[], int] = lambda: 0) -> None:
        """The run entered a step; `sent` and `in_flight` are read from the driver at scrape time."""
        self.end_step()
        with self._lock:
            self._current = _Step(step_labels(variant, step, concurrency, rate), concurrency, rate, sent, in_flight)

    def end_step(self) -> None:
        """Freeze the finished step's sent count; in-flight and step info go away until the next one."""
        with self._lock:
            cur, self._current = self._current, None
            if cur is not None:
                key = tuple(cur.labels[k] for k in STEP_LABELS)
                self._sent_done[key] = max(self._sent_done.get(key, 0.0), _safe(cur.sent))

    def observe(self, rec: RequestRecord) -> None:
        """Count one finished request (the StepControl.on_record callback)."""
        lab = step_labels(rec.variant, rec.step, rec.concurrency, rec.rate)
        if rec.status == OK:
            self.succeeded.labels(**lab).inc()
        else:
            self.failed.labels(**lab, error_kind=rec.error_kind or rec.status).inc()
        if rec.output_tokens:
            self.output_tokens.labels(**lab).inc(rec.output_tokens)
        elif rec.token_events:
            self.output_tokens.labels(**lab).inc(rec.token_events)
        if rec.prompt_tokens:
            self.prompt_tokens.labels(**lab).inc(rec.prompt_tokens)
        if rec.ttft_s is not None:
            self.ttft.labels(**lab).observe(rec.ttft_s)
        if rec.itl_s:
            h = self.itl.labels(**lab)
            for g in rec.itl_s:
                h.observe(float(g))
        if rec.e2e_s is not None:
            self.e2e.labels(**lab).observe(rec.e2e_s)

    def attach(self, driver: object, variant: str, step: int, concurrency: Optional[int],
               rate: Optional[float]) -> None:
        """Begin a step fed by a driver: sent and in-flight from it, records through its StepControl.

        Any driver with `sent()`, `in_flight()` and an `on_record` callback slot works: on its
        StepControl (`driver.control.on_record`, the in-process driver) or on the driver itself
        (`driver.on_record`, for a master that receives the workers' records).
        """
        self.begin_step(variant, step, concurrency, rate, sent=getattr(driver, "sent"),
                        in_flight=getattr(driver, "in_flight"))
        ctl = getattr(driver, "control", None)
        if ctl is None or not hasattr(ctl, "on_record"):
            ctl = driver if hasattr(driver, "on_record") else None
        if ctl is None:
            return
        prev = ctl.on_record
        if prev == self.observe or getattr(prev, "_exporter", None) is self:
            return  # already fed by this driver's control
        if prev is None:
            ctl.on_record = self.observe
            return

        def both(rec: RequestRecord) -> None:
            prev(rec)
            self.observe(rec)

        both._exporter = self  # type: ignore[attr-defined]
        ctl.on_record = both


def exporter_for(host: str, port: Optional[int]) -> Optional[ClientExporter]:
    """A started exporter when a port is configured (0: any free one), else None."""
    if port is None:
        return None
    try:
        return ClientExporter(host, port).start()
    except OSError as exc:
        raise ValueError(f"scrape.exporter_port: cannot serve the client's metrics on {host}:{port} ({exc})") from None
